"""The native node kernels (models/graphs/native): the math of the torch ops, every gradient,
independent of the thread count; placement into wider buffers; the build and its fallback."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from models.graphs import fastpath, native
from models.graphs.ops import node_update

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

needs_native = pytest.mark.skipif(
    native.library() is None, reason=f"native kernels not built: {native.build_error()}"
)


def _torch_node(x, k, norm):
    h = x if norm is None else F.group_norm(x, x.shape[1], norm.weight, norm.bias, norm.eps)
    return F.conv2d(torch.relu(h), k, padding=1, groups=x.shape[1])


def _norm(c, seed):
    g = torch.Generator().manual_seed(seed)
    norm = torch.nn.InstanceNorm2d(c, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(c, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(c, generator=g) * 0.3)
    return norm


def _close(a, b, rel):
    assert (a - b).abs().max().item() <= rel * b.abs().max().item()


@needs_native
@pytest.mark.parametrize(
    "b,c,h,w", [(5, 40, 8, 8), (3, 17, 4, 4), (2, 33, 5, 7), (1, 16, 8, 8), (4, 8, 2, 3)]
)
@pytest.mark.parametrize("with_norm", [True, False])
def test_node_update_equals_the_torch_ops_with_gradients(b, c, h, w, with_norm):
    g = torch.Generator().manual_seed(b * c + h)
    x0 = torch.randn(b, c, h, w, generator=g) * 2 + 0.3
    k0 = torch.randn(c, 1, 3, 3, generator=g)
    gy = torch.randn(b, c, h, w, generator=g)
    results = []
    for fn in (lambda x, k, n: node_update(x, k, n), _torch_node):
        norm = _norm(c, seed=c) if with_norm else None
        x, k = x0.clone().requires_grad_(), k0.clone().requires_grad_()
        y = fn(x, k, norm)
        y.backward(gy)
        grads = [x.grad, k.grad] + ([norm.weight.grad, norm.bias.grad] if norm else [])
        results.append([y.detach(), *grads])
    for got, want in zip(*results):
        _close(got, want, rel=2e-5)
    assert torch.equal(x0, x0.clone())  # the input is left as it was


@needs_native
def test_node_update_takes_the_native_path_and_leaves_its_input():
    x = torch.randn(2, 6, 8, 8)
    before = x.clone()
    k, norm = torch.randn(6, 1, 3, 3), _norm(6, 0)
    with torch.no_grad():
        y = node_update(x, k, norm)
        _close(y, _torch_node(x, k, norm), rel=2e-5)
    assert torch.equal(x, before)
    x.requires_grad_()
    assert type(node_update(x, torch.randn(6, 1, 3, 3)).grad_fn).__name__ == "_NodeUpdateBackward"


@needs_native
def test_results_do_not_depend_on_the_thread_count():
    x = torch.randn(6, 37, 8, 8)
    k = torch.randn(37, 1, 3, 3)
    norm = _norm(37, 1)
    gy = torch.randn_like(x)
    runs = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y, mean, rstd = native.node_forward(
                x, k, norm.weight.detach(), norm.bias.detach(), 1e-5
            )
            grads = native.node_backward(
                x, gy, k, norm.weight.detach(), norm.bias.detach(), mean, rstd
            )
            runs.append([y, *grads])
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@needs_native
def test_outputs_are_placed_in_wider_buffers():
    x = torch.randn(3, 5, 4, 4)
    k = torch.randn(5, 1, 3, 3)
    want, _, _ = native.node_forward(x, k, None, None, 0.0)
    wide = torch.full((3, 12, 4, 4), 7.0)
    cm = torch.full((9, 3, 4, 4), 7.0)
    native.node_forward(x, k, None, None, 0.0, out=wide, out_c0=4, out_cm=cm, out_cm0=2)
    assert torch.equal(wide[:, 4:9], want) and torch.equal(cm[2:7], want.transpose(0, 1))
    assert (wide[:, :4] == 7).all() and (wide[:, 9:] == 7).all()  # nothing else touched
    assert (cm[:2] == 7).all() and (cm[7:] == 7).all()
    gy = torch.randn_like(x)
    gx, _, _, _ = native.node_backward(x, gy, k, None, None, x.new_empty(0), x.new_empty(0))
    native.node_backward(
        x, gy, k, None, None, x.new_empty(0), x.new_empty(0), out=wide, out_c0=7, out_cm=cm
    )
    assert torch.equal(wide[:, 7:12], gx) and torch.equal(cm[:5], gx.transpose(0, 1))


@needs_native
@pytest.mark.parametrize(
    "out,c0,cm,cm0",
    [
        (torch.empty(3, 8, 4, 4), 4, None, 0),  # channels 4..9 of 8
        (torch.empty(3, 8, 4, 5), 0, None, 0),  # another plane size
        (torch.empty(2, 8, 4, 4), 0, None, 0),  # another batch
        (torch.empty(3, 8, 4, 4, dtype=torch.float64), 0, None, 0),
        (torch.empty(3, 8, 4, 4)[:, ::2], 0, None, 0),  # not contiguous
        (torch.empty(3 * 8 * 16), 0, None, 0),  # not 4-D
        (None, 0, torch.empty(6, 3 * 16), 0),  # channel-major, not 4-D
        (None, 0, torch.empty(5, 2, 4, 4), 0),  # channel-major buffer of another batch
        (None, 0, torch.empty(6, 3, 4, 4), 2),  # channels 2..7 of 6
    ],
)
def test_wrong_output_buffers_are_refused(out, c0, cm, cm0):
    x, k = torch.randn(3, 5, 4, 4), torch.randn(5, 1, 3, 3)
    with pytest.raises(ValueError, match="cannot hold"):
        native.node_forward(x, k, None, None, 0.0, out=out, out_c0=c0, out_cm=cm, out_cm0=cm0)


def _fresh_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


_PROBE = (
    "import torch\n"
    "from models.graphs import fastpath, native\n"
    "from models.graphs.ops import node_update\n"
    "lib = native.library()\n"
    "print('built' if lib is not None else 'none:' + native.build_error())\n"
    "x = torch.randn(2, 3, 4, 4)\n"
    "y = node_update(x, torch.ones(3, 1, 3, 3))\n"
    "ref = torch.nn.functional.conv2d(torch.relu(x), torch.ones(3, 1, 3, 3), padding=1, groups=3)\n"
    "print('equal' if torch.allclose(y, ref, atol=1e-6) else 'differ')\n"
)


@needs_native
@pytest.mark.slow
def test_build_is_cached_and_a_missing_compiler_falls_back(tmp_path):
    cache = tmp_path / "cache"
    first = _fresh_python(_PROBE, {"DNW_NATIVE_CACHE": str(cache)})
    assert first.stdout.split() == ["built", "equal"], first.stderr
    built = list(cache.glob("node_ops-*.so"))
    assert len(built) == 1 and not list(cache.glob("*.tmp*"))
    stamp = built[0].stat().st_mtime_ns
    # the second process loads the cached library, even with no compiler on PATH
    again = _fresh_python(_PROBE, {"DNW_NATIVE_CACHE": str(cache), "CC": "/nonexistent/cc"})
    assert again.stdout.split() == ["built", "equal"], again.stderr
    assert built[0].stat().st_mtime_ns == stamp
    # an empty cache and no compiler: torch ops, one warning, same numbers
    none = _fresh_python(
        _PROBE, {"DNW_NATIVE_CACHE": str(tmp_path / "empty"), "CC": "/nonexistent/cc"}
    )
    out = none.stdout.split()
    assert out[0].startswith("none:") and out[-1] == "equal", none.stderr
    assert "native CPU kernels unavailable" in none.stderr


def test_switched_off_means_the_torch_ops():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert type(node_update(x, torch.randn(4, 1, 3, 3)).grad_fn).__name__ == "_NodeUpdateBackward"
    with fastpath.use(native=False):
        assert not fastpath.native_on(x) and fastpath.active()["native"] == "off (switched off)"
        y = node_update(x, torch.randn(4, 1, 3, 3))
        assert type(y.grad_fn).__name__ != "_NodeUpdateBackward"
    assert fastpath.native_on(x)  # the block put the switch back
