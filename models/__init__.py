"""The networks. Each implements the contract of ``models/contract.py``; docs/architecture.md
says how to add one."""

from __future__ import annotations

from typing import Mapping, Optional

from torch import Tensor

__all__ = ["from_state_dict"]


def from_state_dict(state: Mapping[str, Tensor], prune_rate: Optional[float] = None):
    """The network of the project that ``state`` (a state dict without ``module.``, e.g. from a
    checkpoint of the original release, which carries no config) belongs to, shaped for it; None
    if no network recognises it. Each network decides for itself (``from_state_dict``)."""
    from models.basic.mobilenetv1cifar import MobileNetV1CIFAR  # noqa: PLC0415
    from models.graphs.mobilenetv1like import MobileNetV1Like  # noqa: PLC0415
    from models.graphs.neuralgraph import (  # noqa: PLC0415
        ContinuousTimeNeuralGraph,
        DiscreteTimeNeuralGraph,
        StaticNeuralGraph,
    )

    for cls in (
        StaticNeuralGraph,
        DiscreteTimeNeuralGraph,
        ContinuousTimeNeuralGraph,
        MobileNetV1Like,
        MobileNetV1CIFAR,
    ):
        model = cls.from_state_dict(state, prune_rate)
        if model is not None:
            return model
    return None
