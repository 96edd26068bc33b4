"""The native graph products and top-k threshold (models/graphs/native/node_ops.c): CSR forms
equal torch's, products equal a float64 reference whatever the plane size, offset and thread
count, and the threshold equals torch.kthvalue exactly."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from models.graphs import fastpath, native
from models.graphs.ops import graph_conv
from models.graphs.products import sparse_weight
from models.graphs.selection import kth_smallest, topk_mask

pytestmark = pytest.mark.skipif(
    native.library() is None, reason=f"native kernels not built: {native.build_error()}"
)


def _sparse(o, i, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(o, i, generator=g)
    return w * (torch.rand(o, i, generator=g) < density)


def _torch_csr(w2d):
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        csr = w2d.to_sparse_csr()
    return csr.crow_indices().int(), csr.col_indices().int(), csr.values()


@pytest.mark.parametrize("shape,density", [((60, 48), 0.08), ((7, 300), 0.5), ((5, 4), 0.0)])
def test_csr_forms_equal_torch(shape, density):
    w = _sparse(*shape, density)
    w[0, :2] = -0.0  # a negative zero is no edge, as for torch
    for got, want in zip(native.csr_from_dense(w), _torch_csr(w)):
        assert torch.equal(got, want)
    wide = torch.randn(shape[0], shape[1] + 9)  # a block of a wider matrix: rows strided
    wide[:, 3 : 3 + shape[1]] = w
    for got, want in zip(native.csr_from_dense(wide[:, 3 : 3 + shape[1]]), _torch_csr(w)):
        assert torch.equal(got, want)
    crow, col, val = native.csr_from_dense(w)
    for got, want in zip(native.csr_transpose(crow, col, val, shape[1]), _torch_csr(w.t())):
        assert torch.equal(got, want)


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 5), (4, 4), (8, 8), (9, 9), (16, 16), (32, 32)])
def test_products_equal_float64_for_every_plane_size(hw):
    w = _sparse(70, 50, 0.1, seed=hw[0])
    x = torch.randn(5, 62, *hw)  # the product reads channels 12 .. 62
    crow, col, val = native.csr_from_dense(w)
    out = torch.randn(5, 70, *hw)
    before = out.clone()
    native.csr_product(crow, col, val, x, 12, out, beta=0.5)
    want = F.conv2d(x[:, 12:].double(), w.double()[:, :, None, None]) + 0.5 * before.double()
    assert (out.double() - want).abs().max() <= 1e-5 * want.abs().max()
    native.csr_product(crow, col, val, x, 12, out)  # beta 0: out is not read
    want = F.conv2d(x[:, 12:].double(), w.double()[:, :, None, None])
    assert (out.double() - want).abs().max() <= 1e-5 * want.abs().max()


def test_products_do_not_depend_on_the_thread_count():
    w = _sparse(90, 80, 0.1)
    x = torch.randn(7, 80, 8, 8)
    crow, col, val = native.csr_from_dense(w)
    old, runs = torch.get_num_threads(), []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(native.csr_product(crow, col, val, x, 0, torch.empty(7, 90, 8, 8)))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_bad_arrays_and_buffers_are_refused():
    w = _sparse(10, 8, 0.3)
    crow, col, val = native.csr_from_dense(w)
    x, out = torch.randn(2, 8, 4, 4), torch.empty(2, 10, 4, 4)
    with pytest.raises(ValueError, match="CSR arrays"):
        native.csr_product(crow, col, val, x, 1, out)  # column 7 would read past channel 8
    with pytest.raises(ValueError, match="CSR arrays"):
        native.csr_product(crow.long(), col, val, x, 0, out)
    with pytest.raises(ValueError, match="do not fit"):
        native.csr_product(crow, col, val, x, 0, torch.empty(2, 9, 4, 4))
    with pytest.raises(ValueError, match="do not fit"):
        native.csr_product(crow, col, val, x.transpose(2, 3), 0, out)
    with pytest.raises(ValueError, match="contiguous rows"):
        native.csr_from_dense(w.t())


def test_graph_conv_takes_the_native_products_and_matches_mkl():
    w = _sparse(64, 96, 0.05)[:, :, None, None]
    x0 = torch.randn(20, 96, 8, 8)
    results = []
    for on in (True, False):
        with fastpath.use(native=on):
            x, wg = x0.clone().requires_grad_(), w.clone().requires_grad_()
            y = graph_conv(x, wg)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
            results.append([y.detach(), x.grad, wg.grad])
    for a, b in zip(*results):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    with fastpath.use(native=True):
        product = sparse_weight(w).product()
        assert torch.equal(product(x0), product(x0))
        assert fastpath.native_csr_on()


@pytest.mark.parametrize("n", [1, 9, 1000, 640_000])
def test_kth_smallest_is_exact_for_signed_values_and_ties(n):
    g = torch.Generator().manual_seed(n)
    values = [
        torch.randn(n, generator=g),
        torch.randint(-3, 4, (n,), generator=g).float(),
        torch.randn(n, generator=g) * 1e-40,  # subnormals
    ]
    if n >= 9:
        special = [float("inf"), -float("inf"), -0.0, 0.0, 1, -1, 2, 2, 3]
        values.append(torch.tensor(special * (n // 9)))
    for flat in values:
        m = flat.numel()
        for k in {1, min(2, m), (m + 1) // 2, max(m - 1, 1), m}:
            assert native.kth_smallest(flat, k) == torch.kthvalue(flat, k).values
    assert fastpath.native_selection(values[0])


def test_topk_mask_keeps_exactly_k_with_the_native_threshold():
    scores = torch.randint(0, 5, (40, 30)).float()  # many ties at every cutoff
    for keep in (0, 1, 77, 600, 1199, 1200):
        with fastpath.use(native=True):
            got = topk_mask(scores, keep)
        with fastpath.use(native=False, numpy_topk=False):
            want = topk_mask(scores, keep)
        assert int(got.sum()) == keep and torch.equal(got, want)
    assert kth_smallest(scores.flatten(), 5) == 0
