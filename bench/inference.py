"""Inference speed and executed work of the full model and of each fast_eval backend.

    python bench/inference.py                                   # medium DNW x0.225, fixture
    python bench/inference.py --app apps/large_scale/mobilenetv1_dnw_x225.yml --batches 1 32
    python bench/inference.py --device cuda
    .venv-dgl/bin/python bench/inference.py                     # adds the dgl backend

Per row: images/second at each batch size (synthetic ``torch.randn`` input at the experiment's
image size, ``torch.set_num_threads(threads)`` on CPU, ``warmup`` untimed forwards then
``repeats`` timed ones under ``no_grad``, at least 256 images' worth at small batches,
images / median forward time); the multiply-adds per
image that the forward actually executes (``models.graphs.fast.counting.executed_macs``:
FlopCounterMode for every conv and dense product, ``nnz x N*H*W`` for each sparse CSR product,
a hook counting ``edges x N*H*W`` for each DGL message pass; norms, ReLU, additions and the
global pool are not counted); the paper's count from ``genutil.profiling.profile`` at the real
input size (its edges are each Block's budget); their ratio; and max |logits - full model's|.

The models are called through ``genutil.api`` as a notebook or a server would: no process-wide
setting of main.py's (``--keep_freed_memory`` adds its allocator setting). The first
``fast_eval`` row is the backend ``fast_eval`` picks by default (``auto``); the issue's goals
for it on the medium fixture (issue 17: at least 500 images/s at batch 1 and 930 at batch 256,
on 2 CPU threads) are printed as met or not at the end.

Checkpoint: ``--ckpt``; by default the public fixture for the medium DNW x0.225 experiment, else
a trained-looking model: the experiment's own initialisation (``seed``) with every graph
weight pruned to its top-k at the graph's prune rate (so every edge type, not only DNW, has the
budget's edges) and random BatchNorm/InstanceNorm statistics (so that norms are not identities).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from genutil import api  # noqa: E402
from genutil.allocator import keep_freed_memory  # noqa: E402
from genutil.config import load_config  # noqa: E402
from models.graphs.edges import Graph, topk_mask  # noqa: E402
from models.graphs.fast import BACKENDS, dgl_available  # noqa: E402
from models.graphs.fast.counting import executed_macs  # noqa: E402

DEFAULT_APP = "apps/medium_scale/mobilenetv1_dnw_x225.yml"
GOALS = {1: 500.0, 256: 930.0}  # images/s of fast_eval's default backend (issue 17), CPU
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "ckpt", "medium_mobilenetv1_dnw_x225.ckpt.pt")


def trained_looking(model: nn.Module, seed: int = 0) -> str:
    """Prune every graph weight to its budget and randomize the norms (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Graph):
                m.weight.mul_(topk_mask(m.weight.abs(), m.num_kept).to(m.weight.dtype))
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.4 - 0.2)
                if m.running_mean is not None:
                    m.running_mean.copy_(
                        torch.rand(m.running_mean.shape, generator=gen) * 0.4 - 0.2
                    )
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)
    return "random weights pruned at the config's prune rate, random norm statistics"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(module: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
    """Batch size / median forward time (at least 256 images' worth of timed forwards)."""
    repeats = max(repeats, 256 // x.shape[0])
    warmup = max(warmup, repeats // 10)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            _sync(x.device)
            t0 = time.perf_counter()
            module(x)
            _sync(x.device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return x.shape[0] / statistics.median(times)


def _theory(model: nn.Module, size: int) -> int | None:
    if type(model).__name__ != "MobileNetV1Like":
        return None  # the paper's formula is for MobileNetV1Like only
    return api.profile(model, input_size=size)[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--app", default=DEFAULT_APP)
    p.add_argument("--ckpt", default="", help="checkpoint (default: see the module docstring)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--backends", nargs="+", default=["auto"] + list(BACKENDS), choices=["auto", *BACKENDS]
    )
    p.add_argument(
        "--keep_freed_memory",
        action="store_true",
        help="main.py's allocator setting (genutil/allocator.py); off: as a notebook would run",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    device = torch.device(args.device)
    cfg = load_config(args.app, {})
    torch.manual_seed(cfg.seed)
    model = api.model_from_config(cfg).eval()
    ckpt = args.ckpt or (
        FIXTURE
        if os.path.normpath(args.app) == os.path.normpath(DEFAULT_APP) and os.path.exists(FIXTURE)
        else ""
    )
    if ckpt:
        api.load_checkpoint(model, ckpt)
        source = ckpt
    else:
        source = trained_looking(model)
    size = cfg.image_size
    print(f"app {args.app}; weights: {source}")
    print(
        f"device {device} ({torch.__version__}, {args.threads} CPU threads); input "
        f"{cfg.in_channels}x{size}x{size}; warm-up {args.warmup}, median of {args.repeats} "
        f"(at least 256 images' worth); allocator: "
        + ("freed memory kept (main.py's)" if args.keep_freed_memory else "glibc's defaults")
    )
    theory = _theory(model, size)
    model.to(device)
    gen = torch.Generator().manual_seed(0)
    inputs = {
        b: torch.randn(b, cfg.in_channels, size, size, generator=gen).to(device)
        for b in args.batches
    }
    check = inputs[min(args.batches)][:2]
    with torch.no_grad():
        reference = model(check)
    rows, fast = [("full model", model, "")], None
    auto = api.resolve_backend("auto", device)
    for backend in args.backends:
        name = f"fast_eval {backend}" + (f" ({auto})" if backend == "auto" else "")
        if backend == "dgl" and not dgl_available():
            rows.append(
                (
                    name,
                    None,
                    "skipped: dgl is not importable here "
                    "(make dgl-env; run with .venv-dgl/bin/python)",
                )
            )
            continue
        try:
            shrunk = api.fast_eval(model, backend=backend)  # the default: backend="auto"
            fast = fast or shrunk  # the report below: the first backend's
            rows.append((name, shrunk, ""))
        except Exception as e:  # noqa: BLE001 - a row says why, the others still run
            rows.append((name, None, f"failed: {e}"))
    head = f"{'':24}" + "".join(f"{'img/s @' + str(b):>13}" for b in args.batches)
    head += f"{'MACs/img exec':>16}{'theory':>12}{'exec/theory':>12}{'max|diff|':>11}"
    print(head)
    measured: dict[str, dict[int, float]] = {}
    for name, module, note in rows:
        if module is None:
            print(f"{name:24}{note}")
            continue
        measured[name] = {
            b: images_per_second(module, inputs[b], args.warmup, args.repeats) for b in args.batches
        }
        speeds = "".join(f"{measured[name][b]:>13.1f}" for b in args.batches)
        macs = executed_macs(module, check[:1])
        with torch.no_grad():
            diff = (module(check) - reference).abs().max().item()
        ratio = f"{macs / theory:.3f}" if theory else "n/a"
        paper = f"{theory:,}" if theory else "n/a"
        print(f"{name:24}{speeds}{macs:>16,}{paper:>12}{ratio:>12}{diff:>11.1e}")
    _goals(args, device, measured, auto)
    if fast is not None:
        print("kept nodes per Block [inputs, intermediate layers..., outputs]:")
        for line in fast.report():
            print("  " + line)
    return 0


def _goals(args, device: torch.device, measured: dict, auto: str) -> None:
    """Issue 17's inference goals: fast_eval's default backend on the medium fixture, CPU."""
    name = f"fast_eval auto ({auto})"
    if name not in measured:
        print("goals (issue 17): not measured (run with the default backend 'auto')")
        return
    where = (
        os.path.normpath(args.app) == os.path.normpath(DEFAULT_APP)
        and not args.ckpt
        and device.type == "cpu"
        and args.threads == 2
    )
    for batch, goal in GOALS.items():
        got = measured[name].get(batch)
        if got is None:
            continue
        verdict = "MET" if got >= goal else f"NOT MET (short by {goal - got:.0f} images/s)"
        scope = "" if where else " (the goal is for the medium fixture, CPU, 2 threads)"
        print(
            f"goal (issue 17): fast_eval default backend at batch {batch}: at least {goal:.0f} "
            f"images/s; measured {got:.0f}: {verdict}{scope}"
        )


if __name__ == "__main__":
    sys.exit(main())
