"""The CPU fast paths give the math of the plain ops: outputs and every gradient."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bench.vs_original import original_discrete, original_static
from genutil import api
from models.graphs import fastpath, products, selection
from models.graphs.mobilenetv1like import Block
from models.graphs.ops import graph_conv, instance_norm, weight_slices
from models.graphs.products import sparse_weight
from models.graphs.selection import BRACKET_MIN, kth_smallest, sample_stride, topk_mask


def _sparse(o, i, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(o, i, 1, 1, generator=g)
    return w * (torch.rand(o, i, 1, 1, generator=g) < density)


def _close(a, b, rel=1e-5, atol=0.0):
    assert (a - b).abs().max().item() <= rel * b.abs().max().item() + atol


@pytest.mark.parametrize("o,i,hw", [(48, 40, 8), (100, 192, 4), (30, 64, 1)])
def test_graph_conv_equals_conv2d_with_gradients(o, i, hw):
    w0 = _sparse(o, i, 0.05)
    x0 = torch.randn(5, i, hw, hw)
    sw = sparse_weight(w0)
    assert sw is not None  # 5 % of the edges: the sparse path is taken
    got, ref = [], []
    for out, fn in ((got, lambda x, w: graph_conv(x, w)), (ref, F.conv2d)):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = fn(x, w)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        out += [y.detach(), x.grad, w.grad]
    for a, b in zip(got, ref):
        _close(a, b)
    # the weight gradient is dense: pruned edges get theirs too (straight-through)
    assert (got[2][w0 == 0] != 0).any()
    with torch.no_grad():
        _close(graph_conv(x0, w0), F.conv2d(x0, w0))


@pytest.mark.parametrize("batch,max_nnz", [(40, None), (37, None), (16, None), (9, 300)])
def test_block_products_equal_one_product_per_sample(batch, max_nnz, monkeypatch):
    """Without the native kernels, 16 samples a call through a block-diagonal CSR (a remainder
    chunk of its own; one sample a call where the block would exceed BLOCK_MAX_NNZ): bitwise
    the per-sample products."""
    monkeypatch.setattr(fastpath, "_STATE", fastpath.Switches(native=False))
    if max_nnz is not None:
        monkeypatch.setattr(products, "BLOCK_MAX_NNZ", max_nnz)
    w = _sparse(60, 48, 0.08)
    x = torch.randn(batch, 48, 5, 5)
    sw = sparse_weight(w)
    k = sw.product().samples_per_call(batch)
    assert k == (min(16, batch) if max_nnz is None else max(1, max_nnz // sw.product().nnz))
    csr = sw.product().csr
    per_sample = torch.stack([torch.mm(csr, xb.reshape(48, 25)) for xb in x]).view(batch, 60, 5, 5)
    assert torch.equal(sw.product()(x), per_sample)
    csr_t = sw.product(transposed=True).csr
    g = torch.randn(batch, 60, 5, 5)
    per_sample_t = torch.stack([torch.mm(csr_t, gb.reshape(60, 25)) for gb in g])
    assert torch.equal(sw.product(transposed=True)(g), per_sample_t.view(batch, 48, 5, 5))


def test_graph_conv_takes_the_dense_path_when_the_weight_is_dense():
    w = torch.randn(20, 20, 1, 1)
    assert sparse_weight(w) is None
    x = torch.randn(2, 20, 3, 3)
    assert torch.equal(graph_conv(x, w), F.conv2d(x, w))


def test_weight_slices_give_the_gradient_of_plain_slicing():
    w0 = torch.randn(10, 12, 1, 1)
    regions = [
        (slice(None), slice(0, 4)),
        (slice(3, None), slice(4, 9)),
        (slice(8, 10), slice(9, 12)),
    ]
    grads = []
    for take in (lambda w: weight_slices(w, regions), lambda w: [w[r] for r in regions]):
        w = w0.clone().requires_grad_()
        parts = take(w)
        sum((p * (k + 2)).pow(2).sum() for k, p in enumerate(parts)).backward()
        grads.append(w.grad)
        assert all(torch.equal(p.detach(), w0[r]) for p, r in zip(parts, regions))
    assert torch.equal(grads[0], grads[1])


def test_instance_norm_fast_path_equals_the_module():
    norm = torch.nn.InstanceNorm2d(6, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(4, 6, 5, 5)
    _close(instance_norm(x, norm), norm(x))
    _close(instance_norm(x[:, 2:], norm, lo=2), norm(x)[:, 2:])


@pytest.mark.parametrize("n", [1000, BRACKET_MIN, 640_000, 3_000_000])
def test_kth_smallest_equals_kthvalue(n):
    flat = torch.randn(n, generator=torch.Generator().manual_seed(n)).abs()
    for k in (1, 2, n // 3, int(0.95 * n), n - 1, n):
        assert kth_smallest(flat, k) == torch.kthvalue(flat, k).values


def test_kth_smallest_with_ties_and_other_dtypes():
    ties = torch.randint(0, 7, (5000,)).to(torch.float64)
    for k in (1, 700, 2500, 5000):
        got = kth_smallest(ties, k)
        assert got.dtype == torch.float64 and got == torch.kthvalue(ties, k).values
    half = torch.rand(3000).half()
    assert kth_smallest(half, 1234) == torch.kthvalue(half, 1234).values
    bf16 = torch.rand(3000).bfloat16()  # no NumPy dtype: the torch path
    assert kth_smallest(bf16, 1234) == torch.kthvalue(bf16, 1234).values


def _bracketed_kth(flat, k):
    found = selection._bracket(flat, k)
    assert found is not None, "the bracket missed"
    inside, rank = found
    return torch.kthvalue(inside, rank).values


@pytest.mark.parametrize("n", [BRACKET_MIN, 3_000_000])
def test_bracket_selection_is_exact(n):
    """The bracket (the GPU path) run on the CPU: the same value as a full selection."""
    flat = torch.randn(n, generator=torch.Generator().manual_seed(n)).abs()
    for k in (n // 3, int(0.95 * n), n - 1):
        assert _bracketed_kth(flat, k) == torch.kthvalue(flat, k).values


def test_bracket_holds_when_columns_differ():
    """A trained graph weight's columns differ in scale (only the DAG's region gets gradients).
    [1600, 1600]: a stride of n // (5 sqrt(n)) = 320 divides the row length and sampled the
    same 5 columns of every row; the bracket missed."""
    g = torch.Generator().manual_seed(0)
    scale = torch.ones(1600)
    scale[::320] = 0.01
    w = (torch.randn(1600, 1600, generator=g) * scale).abs().reshape(-1)
    k = int(0.95 * w.numel())
    assert _bracketed_kth(w, k) == torch.kthvalue(w, k).values


def test_kth_smallest_is_exact_when_the_sample_misleads():
    n = 2_000_000
    flat = torch.rand(n)
    flat[:: sample_stride(n)] = 10.0  # every sampled entry is the largest value: bracket misses
    k = n // 2
    assert selection._bracket(flat, k) is None
    assert kth_smallest(flat, k) == torch.kthvalue(flat, k).values


def test_topk_with_ties_in_a_large_matrix_keeps_the_budget():
    scores = torch.randint(0, 50, (1500, 1000)).float()  # many ties at any threshold
    keep = topk_mask(scores, 75_000)
    assert int(keep.sum()) == 75_000
    assert scores[keep].min() >= scores[~keep].max()


@pytest.mark.parametrize(
    "app,reference",
    [
        ("apps/small_scale/static_dnw.yml", original_static),
        ("apps/small_scale/discrete_time_dnw.yml", original_discrete),
        ("apps/small_scale/discrete_time_random_graph.yml", original_discrete),
    ],
)
def test_tiny_models_equal_the_original_formulation_in_a_training_step(app, reference):
    """Ours against the original's way (bench/vs_original.py: dense, sliced state, full sort)."""
    torch.manual_seed(0)
    model = api.build_model(app).train()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    results = []
    for forward in (model, lambda t: reference(model, t)):
        model.zero_grad(set_to_none=True)
        logits = forward(x)
        F.cross_entropy(logits, y).backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (got, got_grads), (ref, ref_grads) = results
    _close(got, ref)
    for name, g in ref_grads.items():
        # atol: some true gradients are 0 (a conv bias before a BatchNorm), both sides noise
        _close(got_grads[name], g, rel=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "app,reference",
    [
        ("apps/small_scale/static_dnw.yml", original_static),
        ("apps/small_scale/discrete_time_dnw.yml", original_discrete),
    ],
)
def test_a_training_step_gives_the_reference_weights(app, reference):
    """Two SGD steps (the experiment file's optimizer: momentum, weight decay) from the same
    weights, ours against the original's formulation (full sort, dense products) in float64:
    the same weights after each, and the same kept edges."""
    torch.manual_seed(0)
    ours = api.build_model(app).train()
    exact = copy.deepcopy(ours).double()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opts = [
        torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        for m in (ours, exact)
    ]
    for _ in range(2):
        for m, opt, forward, xs in (
            (ours, opts[0], ours, x),
            (exact, opts[1], lambda t: reference(exact, t), x.double()),
        ):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(forward(xs), y).backward()
            opt.step()
        got, want = dict(ours.named_parameters()), dict(exact.named_parameters())
        for name, p in want.items():
            assert (got[name].double() - p).abs().max() <= 1e-5 * p.abs().max() + 1e-7, name
        kept = ours.graph.get_weight().detach() != 0
        assert torch.equal(kept, exact.graph.get_weight().detach() != 0)


def test_medium_block_equals_the_sliced_state_formulation_in_a_training_step():
    torch.manual_seed(0)
    block = Block(inp=16, oup=24, stride=1, blocks=4, net_prune_rate=0.6, graph="dnw").train()
    x = torch.randn(3, 16, 6, 6)

    def reference(t):
        w = block.get_weight()
        t = block.downsample(F.relu(block.norm[0](t)))
        s = F.conv2d(t, w[:, :16])
        for i in range(3):
            a = F.relu(block.norm[i + 1](s[:, :24]))
            a = F.conv2d(a, block.conv.weight[i * 24 : (i + 1) * 24], padding=1, groups=24)
            s = s[:, 24:] + F.conv2d(a, w[(i + 1) * 24 :, 16 + i * 24 : 16 + (i + 1) * 24])
        return s

    results = []
    for forward in (block, reference):
        block.zero_grad(set_to_none=True)
        out = forward(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in block.named_parameters()}))
    _close(results[0][0], results[1][0])
    for name, g in results[1][1].items():
        _close(results[0][1][name], g, rel=1e-4)


def test_fast_paths_can_be_switched_off():
    w = _sparse(30, 30, 0.05)
    assert fastpath.switches().enabled and sparse_weight(w) is not None
    with fastpath.use(sparse=False):
        assert sparse_weight(w) is None
        assert fastpath.active()["sparse"] == "off (switched off)"
    with fastpath.use(enabled=False):
        assert sparse_weight(w) is None
        assert set(fastpath.active().values()) == {"off (switched off)", "off (all fast paths off)"}
        assert fastpath.summary() == "fast paths: all off (reference forwards)"
    assert sparse_weight(w) is not None and fastpath.switches() == fastpath.Switches()


def test_sparse_forms_are_kept_on_a_kept_weight_until_it_changes():
    w = _sparse(40, 30, 0.05)
    x = torch.randn(2, 30, 4, 4)
    with torch.no_grad():
        assert sparse_weight(w[:, :20]) is not sparse_weight(w[:, :20])  # not kept: made anew
        products.keep_forms(w)
        first = sparse_weight(w[:, :20])
        assert sparse_weight(w[:, :20]) is first  # a new view of the same tensor: kept
        assert sparse_weight(w[:, 20:]) is not first  # another region: its own form
        w.mul_(2)  # an in-place change makes a new form
        assert sparse_weight(w[:, :20]) is not first
        _close(graph_conv(x, w), F.conv2d(x, w))
    assert sparse_weight(w) is not sparse_weight(w)  # with autograd: made every time


def test_a_graph_keeps_its_eval_weight_and_forms_until_the_weight_changes():
    torch.manual_seed(0)
    model = api.build_model("apps/small_scale/discrete_time_dnw.yml").eval()
    graph = model.graph
    with torch.no_grad():
        w = graph.get_weight()
        assert graph.get_weight() is w and sparse_weight(w) is sparse_weight(w[:, :])
        with fastpath.use(eval_cache=False):
            assert graph.get_weight() is not w
        graph.weight.mul_(0.5)  # an in-place change of the weight: a new effective weight
        assert graph.get_weight() is not w
        w = graph.get_weight()
        graph.weight = torch.nn.Parameter(graph.weight.detach().clone())  # replaced
        assert graph.get_weight() is not w
    assert graph.get_weight() is not graph.get_weight()  # with autograd: computed every time


def test_eval_forwards_reuse_sparse_forms_and_follow_weight_changes():
    torch.manual_seed(0)
    model = api.build_model("apps/small_scale/static_dnw.yml").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = model(x)
        assert torch.equal(model(x), first)
        model.graph.weight.mul_(-1)  # flips every edge: the same wiring, negated weights
        changed = model(x)
        reference = original_static(model, x)
    assert not torch.allclose(changed, first)
    _close(changed, reference)
