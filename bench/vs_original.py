"""Training step of our tiny models against the original's way of computing the same step,
interleaved in one process so that the machine's drift cancels out.

    python bench/vs_original.py     # the four DNW models the paper trains on CIFAR-10

The original's formulation, re-implemented here from its description (docs/faithfulness.md), not
its code: one [B, dim] node state sliced by every step, dense 1x1 convolutions, the InstanceNorm
module, and a full sort of |w| for the top-k (once per forward in
the static model, once per time step in the discrete-time one). It gives the same logits and
gradients as ours (tests/models/test_ops.py checks both formulations against each other).

Each round runs one step of each, alternating; the table gives the median step of each and
their ratio. Same method otherwise as train_throughput.py: synthetic input, batch 128, SGD
(lr 0.1, momentum 0.9, weight decay 1e-4), ``torch.set_num_threads(2)``, fresh weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torchdiffeq import odeint  # noqa: E402

from genutil import api  # noqa: E402
from genutil.allocator import keep_freed_memory  # noqa: E402
from models.graphs.edges import DNW, ChooseTopEdges, Graph  # noqa: E402

__all__ = [
    "sorted_topk_weight",
    "original_static",
    "original_discrete",
    "original_continuous",
    "original_block",
    "original_mobilenet",
    "main",
]


def sorted_topk_weight(graph: Graph) -> torch.Tensor:
    """The DNW effective weight by a full sort of |w| (the original's top-k); other edge types'
    weight as they give it."""
    if not isinstance(graph, DNW):
        return graph.get_weight()
    w = graph.weight
    flat = w.detach().abs().flatten()
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[flat.sort().indices[: int(graph.prune_rate * flat.numel())]] = False
    return ChooseTopEdges.apply(w, keep.view_as(w))


def original_static(m, x: torch.Tensor) -> torch.Tensor:
    """StaticNeuralGraph's forward as the original computes it."""
    state = m._nodes(x)
    w = sorted_topk_weight(m.graph)
    for i in range(m.layers):
        lo, hi = m.block_rng[i], m.block_rng[i + 1]
        h = F.relu(m.norm[i](state[:, : m.block_sz[i]]))
        h = F.conv2d(h, m.conv.weight[lo:hi], padding=1, groups=m.block_sz[i])
        h = F.conv2d(h, w[m.targets[i] :, lo:hi])
        rest = state[:, m.block_sz[i] :] if i < m.layers - 1 else state[:, -m.feature_dim :]
        state = rest + h
    return m._readout(state)


def original_discrete(m, x: torch.Tensor) -> torch.Tensor:
    """DiscreteTimeNeuralGraph's forward as the original computes it."""
    out = m._nodes(x)
    for _ in range(m.layers):
        w = sorted_topk_weight(m.graph)
        out = m.norm(F.conv2d(m.conv(F.relu(out)), w))
    return m._readout(out[:, -m.feature_dim :])


def original_continuous(m, x: torch.Tensor) -> torch.Tensor:
    """ContinuousTimeNeuralGraph's forward as the original computes it: dopri5 over an ODE
    function whose ReLU clamps the solver's state in place, whose graph layer takes its top-k by
    a full sort at every function evaluation, and whose products are dense."""
    func = m.odesolve.odefunc

    def f(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        out = torch.relu_(state) if func.inplace_relu else torch.relu(state)
        out = F.conv2d(func.conv(out), sorted_topk_weight(func.graph))
        return func.norm(out)

    t = torch.tensor([0.0, 1.0], dtype=x.dtype)
    tol = m.odesolve.tol
    out = odeint(f, m._nodes(x), t, rtol=tol, atol=tol, method="dopri5")[1]
    return m._readout(out[:, -m.feature_dim :])


def original_block(block, x: torch.Tensor) -> torch.Tensor:
    """A MobileNetV1Like Block as the original computes it: one state of every target not yet
    read, sliced by each layer, dense products, the top-k by a full sort."""
    w = sorted_topk_weight(block.graph)
    inp, oup = block.inp, block.oup
    x = block.downsample(F.relu(block.norm[0](x)))
    state = F.conv2d(x, w[:, :inp])
    for i in range(block.blocks - 1):
        h = F.relu(block.norm[i + 1](state[:, :oup]))
        h = F.conv2d(h, block.conv.weight[i * oup : (i + 1) * oup], padding=1, groups=oup)
        cols = slice(inp + i * oup, inp + (i + 1) * oup)
        state = state[:, oup:] + F.conv2d(h, w[(i + 1) * oup :, cols])
    return state


def original_mobilenet(m, x: torch.Tensor) -> torch.Tensor:
    """MobileNetV1Like's forward as the original computes it (its Blocks: ``original_block``)."""
    out = m.conv1(x)
    for block in m.layers:
        out = original_block(block, out)
    out = F.adaptive_avg_pool2d(F.relu(m.bn(out)), 1).flatten(1)
    return m.linear(out)


FORMULATIONS = {
    "apps/small_scale/static_dnw.yml": original_static,
    "apps/small_scale/discrete_time_dnw.yml": original_discrete,
    "apps/small_scale/continuous_time_dnw.yml": original_continuous,
    "apps/medium_scale/mobilenetv1_dnw_x225.yml": original_mobilenet,
}


# trained weights where the repository has them (the baseline's method), else the initialisation
FIXTURES = {
    "apps/small_scale/static_dnw.yml": "small_static_dnw.ckpt.pt",
    "apps/medium_scale/mobilenetv1_dnw_x225.yml": "medium_mobilenetv1_dnw_x225.ckpt.pt",
}


def compare(app: str, rounds: int, batch: int = 128) -> dict:
    """Median training step (s) of ours and of the original's formulation, interleaved."""
    torch.manual_seed(0)
    model = api.build_model(app).train()
    if app in FIXTURES:
        api.load_checkpoint(model, os.path.join(ROOT, "tests", "fixtures", "ckpt", FIXTURES[app]))
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    forwards = {"ours": model, "original's formulation": lambda t: FORMULATIONS[app](model, t)}

    def step(forward) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        opt.step()
        return time.perf_counter() - t0

    for forward in forwards.values():  # warm-up
        for _ in range(3):
            step(forward)
    times: dict = {name: [] for name in forwards}
    for _ in range(rounds):
        for name, forward in forwards.items():
            times[name].append(step(forward))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--apps", nargs="+", default=list(FORMULATIONS), choices=list(FORMULATIONS))
    p.add_argument(
        "--rounds",
        type=int,
        nargs="+",
        default=[20, 6, 3, 5],
        help="rounds per experiment (one number for all, or one each)",
    )
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as main.py does (genutil/allocator.py)
    rounds = args.rounds * len(args.apps) if len(args.rounds) == 1 else args.rounds
    print(f"# torch {torch.__version__}, cpu, threads {torch.get_num_threads()}, batch 128, train")
    print("| experiment | ours: median step (s) | original's formulation (s) | speed-up |")
    print("| --- | --- | --- | --- |")
    for app, n in zip(args.apps, rounds):
        r = compare(app, n)
        ours, orig = r["ours"], r["original's formulation"]
        print(
            f"| {os.path.basename(app)[:-4]} | {ours:.3f} | {orig:.3f} | {orig / ours:.2f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
