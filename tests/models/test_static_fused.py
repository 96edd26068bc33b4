"""The static model's fused CPU graph (models/graphs/static_fused.py): the same logits and every
gradient as the step-by-step forward and the original's formulation; taken where it applies."""

import copy

import pytest
import torch
import torch.nn.functional as F

import models.graphs.neuralgraph as neuralgraph
from bench.vs_original import original_static
from genutil import api
from models.graphs import fastpath, native, static_fused
from models.graphs.neuralgraph import StaticNeuralGraph

pytestmark = pytest.mark.skipif(
    native.library() is None, reason=f"native kernels not built: {native.build_error()}"
)


def _count_fused(monkeypatch) -> list:
    calls = []
    real = static_fused._StaticGraph.apply

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(static_fused._StaticGraph, "apply", counted)
    return calls


def _step(model, forward, x, y, seed=0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same draws for edge types that draw (td)
    logits = forward(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _stepwise(model):
    def run(x):
        real = neuralgraph.static_graph
        neuralgraph.static_graph = lambda *a, **k: None
        try:
            return model(x)
        finally:
            neuralgraph.static_graph = real

    return run


def _assert_close(got, want, rel=1e-5, atol=1e-7):
    """Logits and gradients within ``rel`` of the largest reference value, name by name (atol:
    some true gradients are 0, the stem's conv bias before its BatchNorm, and float32 leaves
    noise of about 1e-9 there)."""
    (logits, grads), (ref_logits, ref_grads) = got, want
    assert (logits.double() - ref_logits).abs().max() <= rel * ref_logits.abs().max()
    assert grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        assert (grads[name].double() - ref).abs().max() <= rel * ref.abs().max() + atol, name


def _exact(model, x, y):
    """The original's formulation in float64: the reference both float32 paths are held to
    (its own float32 run is further from it than either of ours: the dense products' sums)."""
    exact = copy.deepcopy(model).double()
    return _step(exact, lambda t: original_static(exact, t), x.double(), y)


@pytest.mark.parametrize(
    "kwargs,batch",
    [
        (dict(), 6),  # the paper's model, 8x8 maps
        (dict(dim=96, downsample_dim=16, feature_dim=10, image_size=16), 21),  # 4x4, remainder
        (dict(dim=80, downsample_dim=20, feature_dim=12, layers=3, image_size=24), 5),  # 6x6
        # the read-out nodes are the whole last group
        (dict(dim=96, downsample_dim=16, feature_dim=20, image_size=16), 7),
    ],
)
@pytest.mark.parametrize("graph", ["dnw", "random", "dnw_no_update", "td"])
def test_fused_equals_stepwise_and_the_original(kwargs, batch, graph, monkeypatch):
    torch.manual_seed(0)
    # sparse enough for the fused path (FUSED_MAX_DENSITY in every block): td keeps its
    # candidates with probability 1 - rho in training
    model = StaticNeuralGraph(graph=graph, prune_rate=0.95, rho=0.99, **kwargs).train()
    size = model.image_size
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    calls = _count_fused(monkeypatch)
    fused = _step(model, model, x, y)
    assert len(calls) == 1  # the fused path ran
    stepwise = _step(model, _stepwise(model), x, y)
    assert len(calls) == 1  # and only where asked
    exact = _exact(model, x, y)
    _assert_close(fused, exact)
    _assert_close(stepwise, exact)
    # the straight-through rule: pruned edges of the read region get gradients too
    if graph == "dnw":
        g = fused[1]["graph.weight"].reshape(model.dim, model.dim)
        kept = model.graph.get_weight().detach().reshape(model.dim, model.dim) != 0
        assert (g[model.allowed_edges() & ~kept] != 0).any()
        assert (g[~model.allowed_edges()] == 0).all()


def test_fused_eval_equals_stepwise_eval(monkeypatch):
    torch.manual_seed(1)
    model = api.build_model("apps/small_scale/static_dnw.yml").eval()
    x = torch.randn(37, 3, 32, 32)
    calls = _count_fused(monkeypatch)
    with torch.no_grad():
        got = model(x)
        want = _stepwise(model)(x)
    assert len(calls) == 1
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize(
    "graph,prune_rate,crowded", [("complete", 0.0, False), ("dnw", 0.5, False), ("dnw", 0.9, True)]
)
def test_dense_blocks_take_batched_products(graph, prune_rate, crowded, monkeypatch):
    """A dense block (a complete graph; a DNW wiring that crowds into one block, as the stem's
    edges into the first group do in training) is one batched GEMM inside the fused path, the
    other blocks stay CSR: still the original's numbers."""
    torch.manual_seed(0)
    model = StaticNeuralGraph(graph=graph, prune_rate=prune_rate, dim=96, downsample_dim=16,
                              feature_dim=10, image_size=16)  # fmt: skip
    r = model.block_rng
    if crowded:  # the stem's edges into group 1 win the top-k
        with torch.no_grad():
            model.graph.weight[r[1] : r[2], : r[1]] *= 100
    w = model.graph.get_weight().detach().reshape(96, 96)
    plan = static_fused._Plan(w, model.block_rng, model.feature_dim)
    products = [*plan.pull[1:], *plan.push_t, plan.out, plan.out_t]
    kinds = [type(p).__name__ for p in products]
    assert "_DenseProduct" in kinds
    if crowded:
        assert type(plan.pull[1]).__name__ == "_DenseProduct" and "_CsrProduct" in kinds
    calls = _count_fused(monkeypatch)
    x, y = torch.randn(5, 3, 16, 16), torch.randint(0, 10, (5,))
    got = _step(model, model, x, y)
    assert len(calls) == 1
    _assert_close(got, _exact(model, x, y))


def test_without_native_kernels_the_stepwise_path_runs(monkeypatch):
    torch.manual_seed(0)
    model = StaticNeuralGraph(dim=96, downsample_dim=16, feature_dim=10, image_size=16)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    calls = _count_fused(monkeypatch)
    fused = _step(model, model, x, y)
    with fastpath.use(native=False):
        plain = _step(model, model, x, y)
    assert len(calls) == 1
    _assert_close(fused, _exact(model, x, y))
    _assert_close(plain, _exact(model, x, y))
