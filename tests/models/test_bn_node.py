"""The MobileNet Block's native node kernel (BatchNorm with batch statistics, ReLU, strided 3x3
depthwise conv; node_ops.c ``bn_node_*``) against the torch ops, in float64: outputs, every
gradient and the running statistics; and the Block's fast path with it against the reference
path in a training step."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.graphs import fastpath, native
from models.graphs.mobilenetv1like import Block
from models.graphs.ops import bn_node_update

pytestmark = pytest.mark.skipif(
    native.library() is None, reason=f"native kernels not built: {native.build_error()}"
)


def _norm(c: int, seed: int) -> nn.BatchNorm2d:
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.bias.copy_(torch.rand(c, generator=gen) - 0.5)
        bn.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
        bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return bn.train()


@pytest.mark.parametrize(
    "b,c,h,stride,sliced",
    [(4, 5, 8, 1, False), (3, 6, 16, 2, True), (2, 4, 7, 2, False), (5, 3, 5, 1, True)],
)
def test_equals_the_torch_ops_in_float64(b, c, h, stride, sliced):
    gen = torch.Generator().manual_seed(b * c + h)
    wide = torch.randn(b, c + 3, h, h, generator=gen) * 2 + 0.3
    x = wide[:, 1 : 1 + c] if sliced else wide[:, :c].contiguous()  # a channel slice, or not
    k = torch.randn(c, 1, 3, 3, generator=gen)
    gy = torch.randn(b, c, (h - 1) // stride + 1, (h - 1) // stride + 1, generator=gen)
    norm = _norm(c, 0)
    ref_norm = copy.deepcopy(norm).double()
    xs, ks = x.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    xd, kd = x.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    y = bn_node_update(xs, ks, norm, stride)
    want = F.conv2d(F.relu(ref_norm(xd)), kd, stride=stride, padding=1, groups=c)
    y.backward(gy)
    want.backward(gy.double())

    def close(a, b):
        assert ((a.double() - b).abs().max() / b.abs().max()).item() < 1e-5

    close(y, want)
    close(xs.grad, xd.grad)
    close(ks.grad, kd.grad)
    close(norm.weight.grad, ref_norm.weight.grad)
    close(norm.bias.grad, ref_norm.bias.grad)
    close(norm.running_mean, ref_norm.running_mean)
    close(norm.running_var, ref_norm.running_var)
    assert int(norm.num_batches_tracked) == int(ref_norm.num_batches_tracked) == 1


def test_eval_and_switched_off_take_the_torch_ops():
    norm = _norm(3, 1)
    x, k = torch.randn(2, 3, 6, 6), torch.randn(3, 1, 3, 3)
    eval_norm = copy.deepcopy(norm).eval()
    want = F.conv2d(F.relu(eval_norm(x)), k, stride=2, padding=1, groups=3)
    assert torch.equal(bn_node_update(x, k, eval_norm, 2), want)
    assert torch.equal(eval_norm.running_mean, norm.running_mean)  # eval: no update
    with fastpath.use(native=False):
        off = copy.deepcopy(norm)
        y = bn_node_update(x, k, off, 1)
    ref = copy.deepcopy(norm)
    torch.testing.assert_close(y, F.conv2d(F.relu(ref(x)), k, padding=1, groups=3))
    torch.testing.assert_close(off.running_var, ref.running_var)


@pytest.mark.parametrize("stride", [1, 2])
def test_block_training_step_fast_equals_reference_with_running_stats(stride):
    torch.manual_seed(5)
    block = Block(inp=8, oup=6, stride=stride, blocks=3, net_prune_rate=0.5, graph="dnw").train()
    x = torch.randn(4, 8, 8, 8)
    results = []
    for on in (True, False):
        b = copy.deepcopy(block)
        with fastpath.use(enabled=on):
            out = b(x)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        stats = [t.clone() for n in b.norm for t in (n.running_mean, n.running_var)]
        grads = {n: p.grad for n, p in b.named_parameters()}
        results.append((out.detach(), grads, stats, [int(n.num_batches_tracked) for n in b.norm]))
    (o1, g1, s1, n1), (o2, g2, s2, n2) = results
    torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-5)
    for name, g in g2.items():
        torch.testing.assert_close(g1[name], g, rtol=1e-4, atol=1e-5)
    for a, b in zip(s1, s2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert n1 == n2 == [1, 1, 1]
