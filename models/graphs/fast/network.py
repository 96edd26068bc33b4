"""The shrunk network that ``fast_eval`` returns: stem, one backend module per Block, head.

    fast = fast_eval(model, backend="sparse")  # a new module in eval mode; model is untouched
    fast.kept_channels()  # {"stem": 29, "blocks": [[29, 52], ...], "features": 1024, ...}

Supported: MobileNetV1Like (any graph type, ``small`` or not) and StaticNeuralGraph (which the
original could not shrink). Outputs equal the full model's up to float rounding (SPEC section 8).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from models.graphs.fast.backends import make_block
from models.graphs.fast.plan import HeadPlan, NetPlan
from models.graphs.fast.removal import plan_mobilenet, plan_static

__all__ = ["FastHead", "FastGraphNet", "fast_eval", "make_plan"]


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
        self._full = {
            "stem": plan.stem_full,
            "blocks": [b.full_sizes for b in plan.blocks],
            "features": plan.head.full_features,
        }
        self._edges = [int(b.weight.numel()) for b in plan.blocks]
        self.requires_grad_(False)  # an inference model: no parameter needs a gradient
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        per_image = self.floats_per_pixel * x.shape[2] * x.shape[3]
        if x.is_cuda or self.chunk_floats <= 0 or x.shape[0] * per_image <= self.chunk_floats:
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
        kept, full = self._kept, self._full
        lines = [
            f"fast_eval ({self.backend}): stem keeps {kept['stem']}/{full['stem']} channels,"
            f" classifier reads {kept['features']}/{full['features']} features"
            + (
                f" ({kept['constants']} constant outputs folded into its bias)"
                if kept["constants"]
                else ""
            )
        ]
        for i, (k, f, e) in enumerate(zip(kept["blocks"], full["blocks"], self._edges)):
            lines.append(f"  Block {i}: kept {k} of {f} nodes, {e} edges")
        return lines


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


def make_plan(model: nn.Module, rule: str = "original") -> NetPlan:
    """The removal plan of a MobileNetV1Like or StaticNeuralGraph (see removal.py)."""
    model = getattr(model, "module", model)
    kind = type(model).__name__
    if kind == "MobileNetV1Like":
        return plan_mobilenet(model, rule=rule)
    if kind == "StaticNeuralGraph":
        return plan_static(model)
    raise ValueError(f"fast_eval supports MobileNetV1Like and StaticNeuralGraph, not {kind}")


def fast_eval(model: nn.Module, backend: str = "dense", rule: str = "original") -> FastGraphNet:
    """A NEW shrunk copy of ``model`` in eval mode, on the model's device; the model is unchanged.

    ``backend``: "dense", "sparse" or "dgl" (backends.py). ``rule``: which nodes MobileNetV1Like
    keeps ("original", whose counts equal the original's, or "transitive"; removal.py).
    """
    model = getattr(model, "module", model)
    device = next(model.parameters()).device
    source = model if device.type == "cpu" else copy.deepcopy(model).cpu()
    was_training = source.training
    if was_training:  # (eval() also drops the graphs' cached weights: only when needed)
        source.eval()  # BatchNorm running statistics and the evaluation edge sets
    try:
        with torch.no_grad():
            fast = FastGraphNet(make_plan(source, rule), backend)
    finally:
        if was_training:
            source.train()
    return fast.to(device).eval()
