"""Parameters and multiply-adds of a network as the paper counts them, through the contract.

Every network answers ``profile(input_size)`` itself (``models/contract.py``): the paper's
MobileNetV1-like formula, the tiny classifiers' count, or the generic count of kept edges plus
the other parameters (``models/counting.py`` says how each is counted). This module only asks
and says it in lines for the console and TensorBoard.
"""

from __future__ import annotations

from typing import Optional

import torch.nn as nn

from models.contract import Profile, WiredNetwork, unwrap

__all__ = ["Profile", "profile", "describe"]


def profile(model: nn.Module, input_size: Optional[int] = None) -> Profile:
    """The network's own count (see ``models/counting.py``); wrappers are looked through.

    ``input_size``: the input side for the multiply-adds (None: the network's default, which for
    MobileNetV1Like is the original's 224 x 224 ImageNet assumption of the paper's tables).
    """
    net = unwrap(model)
    if not isinstance(net, WiredNetwork):
        raise TypeError(
            f"{type(net).__name__} does not implement models.contract.WiredNetwork: "
            "subclass it to be profiled"
        )
    return net.profile(input_size)


def describe(result: Profile) -> list[str]:
    """Lines for the console: the paper's count beside the dense one, then the details."""
    return [
        f"params {result.params:,} as the paper counts them (dense: {result.dense_params:,}), "
        f"MACs {result.macs / 1e6:.2f}M ({result.method})",
        *result.lines,
    ]
