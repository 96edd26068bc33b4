"""The shrunk network that a ``NetPlan`` builds: stem, one backend module per Block, head.

    fast = model.fast_plan().build("sparse")  # a new module in eval mode; model is untouched
    fast.kept_channels()  # {"stem": 29, "blocks": [[29, 52], ...], "features": 1024, ...}

Planned by MobileNetV1Like (any graph type, ``small`` or not) and StaticNeuralGraph (which the
original could not shrink). Outputs equal the full model's up to float rounding
(docs/faithfulness.md, "Fast evaluation").
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from models.graphs.fast.backends import make_block
from models.graphs.fast.plan import HeadPlan, NetPlan
from models.graphs.fastpath import traced

__all__ = ["FastHead", "FastGraphNet"]


class FastHead(nn.Module):
    """Kind "pool": folded BatchNorm, ReLU, global mean; "window": mean of the read-out window;
    then the classifier on the kept features (constants of dropped nodes are in the bias)."""

    def __init__(self, plan: HeadPlan) -> None:
        super().__init__()
        self.pool = plan.kind == "pool"
        n = plan.weight.shape[1]
        scale = plan.scale if plan.scale is not None else torch.ones(n)
        shift = plan.shift if plan.shift is not None else torch.zeros(n)
        self.register_buffer("scale", scale.detach().clone().float().view(1, n, 1, 1))
        self.register_buffer("shift", shift.detach().clone().float().view(1, n, 1, 1))
        self.register_buffer("weight", plan.weight.detach().clone().float())  # [classes, n]
        self.register_buffer("bias", plan.bias.detach().clone().float())  # [classes]
        self.r0, self.side = plan.window

    def forward(self, x: Tensor) -> Tensor:
        if self.pool:
            x = torch.relu(torch.addcmul(self.shift, x, self.scale))
            features = x.mean([2, 3])
        else:
            r0, r1 = self.r0, self.r0 + self.side
            features = x[:, :, r0:r1, r0:r1].mean([2, 3])
        return F.linear(features, self.weight, self.bias)


class FastGraphNet(nn.Module):
    """A shrunk wired network for evaluation; ``backend`` runs the Blocks' edges."""

    def __init__(
        self, plan: NetPlan, backend: str = "dense", chunk_floats: int = 2_000_000
    ) -> None:
        """``chunk_floats``: on CPU the batch runs in chunks whose largest Block buffer holds
        about this many floats (8 MB): tensors of 32 MB and more are fresh mmap'd pages on every
        forward (glibc), which costs more than the work here. 0: never split."""
        super().__init__()
        self.backend = backend
        self.chunk_floats = chunk_floats
        self.floats_per_pixel = _floats_per_input_pixel(plan)
        self.stem = plan.stem
        self.blocks = nn.ModuleList([make_block(b, backend) for b in plan.blocks])
        self.head = FastHead(plan.head)
        self._kept = plan.kept_channels()
        self._report = plan.report(backend)
        _buffers_only(self)  # an inference model: every weight a buffer, none a parameter
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript: one pass (the chunking is for eager CPU)
            return self._forward(x)
        return self._chunked(x)

    @torch.jit.unused
    def _chunked(self, x: Tensor) -> Tensor:
        per_image = self.floats_per_pixel * x.shape[2] * x.shape[3]
        if (
            x.is_cuda
            or self.chunk_floats <= 0
            or traced()
            or x.shape[0] * per_image <= self.chunk_floats
        ):
            return self._forward(x)
        size = max(1, int(self.chunk_floats / per_image))  # images are independent in eval
        return torch.cat([self._forward(part) for part in x.split(size)])

    def _forward(self, x: Tensor) -> Tensor:
        x = self.stem(x.contiguous(memory_format=torch.channels_last))  # faster convs on CPU
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    @torch.jit.unused
    def kept_channels(self) -> dict:
        """Kept nodes: "stem", per Block [inputs, each intermediate layer, outputs] (the
        original's ``block_sz``), "features" read by the classifier, and "constants" (outputs
        folded into the classifier's bias)."""
        return {k: (list(map(list, v)) if k == "blocks" else v) for k, v in self._kept.items()}

    @torch.jit.unused
    def report(self) -> list[str]:
        """One line per Block and one for the stem/head: kept of total nodes, edges executed."""
        return list(self._report)


def _buffers_only(module: nn.Module) -> None:
    """Turn every parameter into a buffer of the same name: nothing here trains, and a count of
    ``parameters()`` would otherwise see the stem's and miss the edges (buffers, CSR included).
    The network's parameters as the paper counts them: ``genutil.api.profile`` of the full
    model, or the ``metadata.json`` of an exported file."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                del sub._parameters[name]
                sub.register_buffer(name, param.detach())


def _floats_per_input_pixel(plan: NetPlan) -> float:
    """Largest Block buffer (sources + targets) per input pixel, from the strides."""
    stride = 1
    for m in plan.stem.modules():
        if isinstance(m, nn.Conv2d):
            stride *= m.stride[0]
    most = 0.0
    for block in plan.blocks:
        stride *= block.layers[0].stride
        nodes = block.source_offsets()[-1] + block.target_offsets()[-1]
        most = max(most, nodes / (stride * stride))
    return most
