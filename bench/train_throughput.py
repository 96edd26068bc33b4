"""Training and evaluation images/second, by the method of the original's baseline.

Method (the original's baseline, bench/README.md "The original's baseline"): synthetic
``torch.randn`` images at the experiment's input shape, random targets;
``torch.set_num_threads(threads)``; train step = ``model.train()``, zero_grad, forward,
cross-entropy, backward, SGD step (lr 0.1, momentum 0.9, wd 1e-4), batch 128, the same batch every
step; eval = ``model.eval()`` + ``no_grad`` forward at batch 256; ``warmup`` untimed steps then
``steps`` timed ones; images/s = batch / median step.

    python bench/train_throughput.py                       # all small-scale models + medium DNW
    python bench/train_throughput.py --apps apps/small_scale/static_dnw.yml --weights fixture
    python bench/train_throughput.py --device cuda --amp bf16 --compile

``--weights fixture`` loads the reference checkpoint of that experiment where one exists (the
original's figures were taken with them; on a CPU the original's cost depended on the weights,
see bench/README.md), ``fresh`` keeps the initialisation, ``both`` runs each. Freed memory is
kept in the process as main.py does (genutil/allocator.py); ``--system_malloc`` leaves glibc's
defaults; ``--no_native`` runs the torch ops instead of the native CPU kernels.
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
import torch.nn.functional as F  # noqa: E402

from genutil import api  # noqa: E402
from genutil.allocator import keep_freed_memory  # noqa: E402
from models.graphs import fastpath  # noqa: E402

DEFAULT_APPS = [
    "apps/small_scale/static_dnw.yml",
    "apps/small_scale/discrete_time_dnw.yml",
    "apps/small_scale/continuous_time_dnw.yml",
    "apps/medium_scale/mobilenetv1_dnw_x225.yml",
]
FIXTURES = {
    "apps/small_scale/static_dnw.yml": "small_static_dnw.ckpt.pt",
    "apps/medium_scale/mobilenetv1_dnw_x225.yml": "medium_mobilenetv1_dnw_x225.ckpt.pt",
}
REFERENCE = os.path.join(ROOT, "tests", "fixtures", "ckpt")
# The original's figures (images/s, same method, an AMD EPYC of this project's machine kind;
# bench/README.md "The original's baseline").
ORIGINAL = {
    ("apps/small_scale/static_dnw.yml", "train"): 865,
    ("apps/small_scale/static_dnw.yml", "eval"): 1207,
    ("apps/small_scale/discrete_time_dnw.yml", "train"): 158,
    ("apps/small_scale/discrete_time_dnw.yml", "eval"): 238,
    ("apps/medium_scale/mobilenetv1_dnw_x225.yml", "train"): 98,
    ("apps/medium_scale/mobilenetv1_dnw_x225.yml", "eval"): 291,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_step(step, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(
    app: str,
    weights: str,
    mode: str,
    *,
    device: torch.device,
    batch: int,
    warmup: int,
    steps: int,
    amp: str = "",
    compile_: bool = False,
    channels_last: bool = False,
) -> dict:
    """Median-step throughput of one experiment in ``mode`` train | eval."""
    torch.manual_seed(0)
    model = api.build_model(app)
    if weights == "fixture":
        api.load_checkpoint(model, os.path.join(REFERENCE, FIXTURES[app]))
    model.to(device)
    cfg_size = getattr(model, "image_size", 32)
    x = torch.randn(batch, 3, cfg_size, cfg_size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_ else model
    ctx = (
        torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
        if amp
        else torch.autocast(device.type, enabled=False)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with ctx:
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        opt.step()

    def eval_step() -> None:
        with torch.no_grad(), ctx:
            net(x)

    if mode == "train":
        model.train()
        median = _median_step(train_step, device, warmup, steps)
    else:
        model.eval()
        median = _median_step(eval_step, device, warmup, steps)
    extra = {}
    if hasattr(model, "nfe"):
        extra["nfe"] = model.nfe  # ODE function evaluations of the last forward
    return {
        "app": app,
        "weights": weights,
        "mode": mode,
        "batch": batch,
        "median_s": median,
        "images_per_s": batch / median,
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--apps", nargs="+", default=DEFAULT_APPS)
    p.add_argument("--modes", nargs="+", default=["train", "eval"])
    p.add_argument("--weights", choices=["fixture", "fresh", "both"], default="both")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train_batch", type=int, default=128)
    p.add_argument("--eval_batch", type=int, default=256)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--amp", choices=["", "bf16", "fp16"], default="")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument(
        "--system_malloc",
        action="store_true",
        help="leave glibc's malloc thresholds as they are (main.py raises them: "
        "keep_freed_memory, genutil/allocator.py)",
    )
    p.add_argument(
        "--no_native",
        action="store_true",
        help="torch ops instead of the native CPU kernels (config key native_kernels: false)",
    )
    args = p.parse_args(argv)
    kept = False if args.system_malloc else keep_freed_memory()
    fastpath.configure(native=not args.no_native)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"# torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", threads {torch.get_num_threads()}, amp {args.amp or 'off'}, "
        f"compile {args.compile}, channels_last {args.channels_last}, "
        f"malloc keeps freed memory {kept}; {fastpath.summary(device)}"
    )
    print("| experiment | weights | mode | batch | median step (s) | images/s | original | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for app in args.apps:
        kinds = ["fixture", "fresh"] if args.weights == "both" else [args.weights]
        for weights in kinds:
            if weights == "fixture" and app not in FIXTURES:
                continue
            for mode in args.modes:
                batch = args.train_batch if mode == "train" else args.eval_batch
                try:
                    r = measure(
                        app,
                        weights,
                        mode,
                        device=device,
                        batch=batch,
                        warmup=args.warmup,
                        steps=args.steps,
                        amp=args.amp,
                        compile_=args.compile,
                        channels_last=args.channels_last,
                    )
                except Exception as e:  # one row's failure (say, compile) is a row of the table
                    print(
                        f"| {os.path.basename(app)[:-4]} | {weights} | {mode} | {batch} | "
                        f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} |||",
                        flush=True,
                    )
                    continue
                orig = ORIGINAL.get((app, mode)) if device.type == "cpu" else None
                ratio = f"{r['images_per_s'] / orig:.2f}x" if orig else "-"
                nfe = f" (nfe {r['nfe']})" if "nfe" in r else ""
                print(
                    f"| {os.path.basename(app)[:-4]} | {weights} | {mode}{nfe} | {batch} | "
                    f"{r['median_s']:.3f} | {r['images_per_s']:.0f} | {orig or '-'} | {ratio} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
