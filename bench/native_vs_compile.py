"""The hand-written native node kernels against torch.compile (inductor, CPU) of the same op.

    python bench/native_vs_compile.py                       # the static and discrete-time shapes
    python bench/native_vs_compile.py --shapes 128x192x8x8 --rounds 30 --no_cold

The op is a tiny model's node update as training runs it: affine InstanceNorm, ReLU, 3x3
depthwise convolution (padding 1) on x [B, C, H, W] (``models.graphs.ops.node_update``). Three
forms of it, each timed forward alone (``no_grad``) and forward + backward (gradients of x, the
filters, gamma and beta for a fixed output gradient):

* ``native``: ``node_update`` on the C/OpenMP kernels (``models/graphs/native/node_ops.c``), the
  project's CPU path;
* ``compiled``: ``torch.compile`` (inductor, default mode, static shapes) of the plain torch
  ops ``conv2d(relu(instance_norm(x)))``, which is what the project would keep instead;
* ``eager``: those plain torch ops uncompiled, for scale.

The last column: the largest difference from the eager form's output and gradients, each
relative to that tensor's largest magnitude. The forms alternate within each round (the
machine's drift cancels out); figures are medians over ``rounds``. Compile time: the first
forward + backward and the first ``no_grad`` forward (two graphs for inductor) of each form in
this process (inductor's caches in a fresh folder, so nothing is reused) minus a steady pair.
Cold start: a fresh Python process that imports torch and the project, makes the form and runs
one forward + backward, timed from the process's start: ``cold`` with empty caches (native: a
new ``DNW_NATIVE_CACHE`` so gcc builds the library; compiled: a new
``TORCHINDUCTOR_CACHE_DIR``), ``warm`` with the caches the cold process left. The decision
rule (issue 17): keep whichever is faster, or the compiled form if it is within 10 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

START = time.perf_counter()  # a child process's cold start is timed from here
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

EPS = 1e-5
SHAPES = ["128x192x8x8", "128x800x8x8"]  # static_dnw's node groups, discrete_time_dnw's nodes


def plain(x, k, gamma, beta):
    """The node update in plain torch ops (the reference form)."""
    h = torch.relu(F.instance_norm(x, weight=gamma, bias=beta, eps=EPS))
    return F.conv2d(h, k, padding=1, groups=x.shape[1])


def native_form():
    from models.graphs import fastpath, native  # noqa: PLC0415
    from models.graphs.ops import _NodeUpdate  # noqa: PLC0415

    if native.library() is None or not fastpath.switches().native:
        raise SystemExit(f"native kernels unavailable: {native.build_error()}")
    return lambda x, k, gamma, beta: _NodeUpdate.apply(x, k, gamma, beta, EPS)


def compiled_form():
    return torch.compile(plain, backend="inductor", dynamic=False)


def make(form: str):
    return {"native": native_form, "compiled": compiled_form, "eager": lambda: plain}[form]()


def inputs(shape: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    x = torch.randn(b, c, h, w, generator=gen)
    k = torch.randn(c, 1, 3, 3, generator=gen) / 3
    gamma = torch.rand(c, generator=gen) + 0.5
    beta = torch.rand(c, generator=gen) - 0.5
    gy = torch.randn(b, c, h, w, generator=gen)
    return x, k, gamma, beta, gy


def forward(fn, args) -> float:
    x, k, gamma, beta, _ = args
    t0 = time.perf_counter()
    with torch.no_grad():
        fn(x, k, gamma, beta)
    return time.perf_counter() - t0


def train_step(fn, args) -> tuple[float, list]:
    """One forward + backward; (seconds, [y, grads...])."""
    x, k, gamma, beta, gy = args
    leaves = [t.detach().requires_grad_() for t in (x, k, gamma, beta)]
    t0 = time.perf_counter()
    y = fn(*leaves)
    y.backward(gy)
    took = time.perf_counter() - t0
    return took, [y.detach()] + [t.grad for t in leaves]


def child(form: str, shape: list[int]) -> None:
    """A fresh process: make the form, run one forward + backward, print the times."""
    torch.set_num_threads(2)
    fn = make(form)
    took, _ = train_step(fn, inputs(shape))
    print(f"first_step {took:.3f} since_start {time.perf_counter() - START:.3f}")


def cold_start(form: str, shape: str, folder: str) -> tuple[float, float]:
    """(seconds from process start to the end of the first step, of which the first step)."""
    env = dict(os.environ)
    env["DNW_NATIVE_CACHE"] = os.path.join(folder, "native")
    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(folder, "inductor")
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", form, "--shapes", shape],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{form} child failed: {done.stderr.strip()[-2000:]}")
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("first_step")][-1].split()
    return wall, float(line[1])


def measure(shape: list[int], rounds: int, forms: list[str]) -> dict:
    args = inputs(shape)
    fns, compile_s, outs = {}, {}, {}
    for form in forms:
        fns[form] = make(form)
        first, outs[form] = train_step(fns[form], args)
        first += forward(fns[form], args)  # a no_grad forward is another graph for inductor
        steady = train_step(fns[form], args)[0] + forward(fns[form], args)
        compile_s[form] = first - steady
    fwd: dict = {f: [] for f in forms}
    step: dict = {f: [] for f in forms}
    for _ in range(3):  # warm-up
        for form in forms:
            forward(fns[form], args)
            train_step(fns[form], args)
    for _ in range(rounds):
        for form in forms:
            fwd[form].append(forward(fns[form], args))
            step[form].append(train_step(fns[form], args)[0])
    ref = outs["eager"] if "eager" in outs else outs[forms[0]]
    return {
        form: dict(
            forward=statistics.median(fwd[form]),
            step=statistics.median(step[form]),
            first=compile_s[form],
            diff=max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(outs[form], ref)),
        )
        for form in forms
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=SHAPES, help="BxCxHxW")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no_cold", action="store_true", help="skip the fresh-process cold starts")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    shapes = [[int(v) for v in s.split("x")] for s in args.shapes]
    if args.child:
        child(args.child, shapes[0])
        return 0
    torch.set_num_threads(args.threads)
    cache = tempfile.mkdtemp(prefix="native_vs_compile-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache, "inductor-in-process")
    forms = ["native", "compiled", "eager"]
    print(
        f"torch {torch.__version__}, {args.threads} CPU threads; {args.rounds} interleaved "
        "rounds, medians; times in ms"
    )
    head = f"{'shape':>14} {'form':>9} {'forward':>9} {'fwd+bwd':>9} {'first-steady':>13}"
    print(head + f" {'rel. diff vs eager':>19}")
    verdicts = []
    for shape, text in zip(shapes, args.shapes):
        res = measure(shape, args.rounds, forms)
        for form in forms:
            r = res[form]
            print(
                f"{text:>14} {form:>9} {1e3 * r['forward']:>9.2f} {1e3 * r['step']:>9.2f} "
                f"{1e3 * r['first']:>13.1f} {r['diff']:>19.1e}"
            )
        nat, com = res["native"], res["compiled"]
        for what in ("forward", "step"):
            ratio = com[what] / nat[what]
            verdicts.append((text, what, ratio))
    print("compiled / native time (above 1: native faster):")
    for text, what, ratio in verdicts:
        print(f"  {text} {'forward' if what == 'forward' else 'fwd+bwd'}: {ratio:.2f}")
    if not args.no_cold:
        print("fresh process, first forward + backward (s): total since start / first step")
        for form in ("native", "compiled"):
            folder = tempfile.mkdtemp(prefix=f"{form}-", dir=cache)
            cold = cold_start(form, args.shapes[0], folder)
            warm = cold_start(form, args.shapes[0], folder)
            print(
                f"  {form:>9} cold {cold[0]:7.2f} / {cold[1]:7.2f}   "
                f"warm {warm[0]:7.2f} / {warm[1]:7.2f}"
            )
    worst = min(r for _, what, r in verdicts if what == "step")
    if worst >= 1.1:
        decision = "keep native: it is more than 10 % faster forward + backward at every shape"
    elif all(r <= 1.1 for _, what, r in verdicts if what == "step"):
        decision = "switch to torch.compile: within 10 % of native (or faster) at every shape"
    else:
        decision = "mixed: within 10 % at some shapes only (see the ratios)"
    print(f"decision (issue 17 rule): {decision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
