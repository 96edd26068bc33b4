"""The sparse backend's native Block kernel (models/graphs/native/block_eval.c) against the same
Blocks run as torch ops: equal up to float rounding, independent of the thread count, taken
only where it applies, and refusing arrays it cannot read safely."""

import os

import pytest
import torch
import torch.nn.functional as F

from genutil import api
from models.graphs import fastpath, native
from models.graphs.fast import FastGraphNet
from models.graphs.fast.backends import SparseBlock
from models.graphs.mobilenetv1like import MobileNetV1Like
from models.graphs.neuralgraph import StaticNeuralGraph

pytestmark = pytest.mark.skipif(
    native.eval_library() is None, reason=f"native kernels not built: {native.build_error()}"
)


@pytest.fixture(scope="module")
def medium(reference_dir):
    model = MobileNetV1Like(prune_rate=0.775, graph="dnw")
    api.load_checkpoint(
        model, os.path.join(reference_dir, "ckpt", "medium_mobilenetv1_dnw_x225.ckpt.pt")
    )
    model.eval()
    return model, FastGraphNet(model.fast_plan(), "sparse")


def _blocks(fast):
    return [m for m in fast.modules() if isinstance(m, SparseBlock)]


@pytest.mark.parametrize("batch", [1, 3])
def test_native_blocks_equal_the_torch_ops(medium, batch):
    model, fast = medium
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        got = fast(x)
        with fastpath.use(native=False):
            want = fast(x)
        full = model(x)
    assert (got - want).abs().max().item() <= 1e-5
    assert (got - full).abs().max().item() <= 1e-5


def test_every_block_runs_natively_on_cpu_float32_without_autograd(medium):
    _, fast = medium
    seen = []
    hooks = [
        b.register_forward_pre_hook(lambda m, i: seen.append(m.native_form(i[0]) is not None))
        for b in _blocks(fast)
    ]
    try:
        with torch.no_grad():
            fast(torch.randn(2, 3, 32, 32))
        assert seen == [True] * 5
        seen.clear()
        with torch.no_grad(), fastpath.use(native=False):
            fast(torch.randn(2, 3, 32, 32))
        assert seen == [False] * 5
        seen.clear()
        fast(torch.randn(2, 3, 32, 32, requires_grad=True))  # autograd: the torch ops
        assert seen == [False] * 5
    finally:
        for h in hooks:
            h.remove()


def test_results_do_not_depend_on_the_thread_count(medium):
    _, fast = medium
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    block = _blocks(fast)[3]
    h = torch.randn(4, block.first.size, 8, 8, generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.no_grad():
                outs.append((fast(x), block(h)))
    finally:
        torch.set_num_threads(before)
    for logits, y in outs[1:]:
        assert torch.equal(logits, outs[0][0]) and torch.equal(y, outs[0][1])


def test_any_input_layout(medium):
    _, fast = medium
    block = _blocks(fast)[1]  # stride 2
    h = torch.randn(3, block.first.size, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = block(h)
        assert torch.equal(block(h.contiguous(memory_format=torch.channels_last)), want)
        wide = torch.randn(3, block.first.size + 5, 16, 16)
        wide[:, 2 : 2 + block.first.size] = h
        assert torch.equal(block(wide[:, 2 : 2 + block.first.size]), want)
        with fastpath.use(native=False):
            assert (block(h) - want).abs().max().item() <= 1e-5


def test_instance_norm_blocks_keep_the_torch_ops():
    torch.manual_seed(0)
    model = StaticNeuralGraph(prune_rate=0.8).eval()
    fast = api.fast_eval(model, backend="sparse")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max().item() <= 1e-5
    assert all(b.native_form(torch.zeros(1, b.first.size, 8, 8)) is None for b in _blocks(fast))


def test_the_native_form_is_remade_after_to_and_load_state_dict(medium):
    _, fast = medium
    block = _blocks(fast)[0]
    h = torch.randn(1, block.first.size, 32, 32)
    with torch.no_grad():
        block(h)
        assert block._native is not None
        block.to(torch.float32)
        assert block._native is None
        block.load_state_dict(block.state_dict())
        assert block._native is None


def _small_args():
    """A Block of 2 inputs, a layer of 2 nodes and 1 output, as BlockEval arrays."""
    sizes = [2, 2]
    scale, shift, kernel = torch.ones(4), torch.zeros(4), torch.ones(4, 1, 3, 3)
    crow = torch.tensor([0, 1, 2, 4])  # layer 1 reads inputs 0 and 1; the output reads 2, 3
    col = torch.tensor([0, 1, 2, 3])
    return dict(
        stride=1, sizes=sizes, scale=scale, shift=shift, kernel=kernel, crow=crow, col=col,
        val=torch.ones(4), n_out=1,
    )  # fmt: skip


def test_block_eval_refuses_arrays_it_cannot_read_safely():
    native.BlockEval(**_small_args())
    bad = [
        dict(col=torch.tensor([0, 1, 2, 4])),  # a column past the sources
        dict(col=torch.tensor([2, 1, 2, 3])),  # layer 1 reading itself
        dict(crow=torch.tensor([0, 1, 2, 5])),  # more entries than stored
        dict(kernel=torch.ones(3, 1, 3, 3)),
        dict(n_out=2),
    ]
    for change in bad:
        with pytest.raises(ValueError):
            native.BlockEval(**{**_small_args(), **change})
    block = native.BlockEval(**_small_args())
    with pytest.raises(ValueError):
        block(torch.zeros(1, 3, 4, 4))  # wrong number of input nodes
    with pytest.raises(ValueError):
        block(torch.zeros(1, 2, 4, 4, dtype=torch.float64))
    x = torch.randn(1, 2, 5, 4, generator=torch.Generator().manual_seed(3))
    ones = torch.ones(2, 1, 3, 3)
    a = F.conv2d(x.relu(), ones, padding=1, groups=2)  # the inputs' node ops
    b = F.conv2d(a.relu(), ones, padding=1, groups=2)  # layer 1: node i reads input i
    assert torch.allclose(block(x), b.sum(1, keepdim=True), atol=1e-5)
