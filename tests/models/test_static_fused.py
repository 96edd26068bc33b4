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
    # td keeps its candidates with probability 1 - rho in training
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
def test_dense_wirings_give_the_originals_numbers(graph, prune_rate, crowded, monkeypatch):
    """Every block is a CSR product inside the fused path whatever its density: a complete
    graph, and a DNW wiring that crowds into one block (as the stem's edges into the first
    group do in training), still give the original's numbers."""
    torch.manual_seed(0)
    model = StaticNeuralGraph(graph=graph, prune_rate=prune_rate, dim=96, downsample_dim=16,
                              feature_dim=10, image_size=16)  # fmt: skip
    r = model.block_rng
    if crowded:  # the stem's edges into group 1 win the top-k
        with torch.no_grad():
            model.graph.weight[r[1] : r[2], : r[1]] *= 100
    calls = _count_fused(monkeypatch)
    x, y = torch.randn(5, 3, 16, 16), torch.randint(0, 10, (5,))
    got = _step(model, model, x, y)
    assert len(calls) == 1
    _assert_close(got, _exact(model, x, y))


def _dag_run(model, stem, g_out):
    """The fused graph's read-out and stem gradient for ``stem`` (the native DAG directly)."""
    stem = stem.clone().requires_grad_()
    out = static_fused.static_graph(
        stem, model.graph.get_weight().detach(), model.conv.weight.detach(), model.norm,
        model.block_rng, model.feature_dim,
    )  # fmt: skip
    out.backward(g_out)
    return out.detach(), stem.grad


def test_results_do_not_depend_on_threads_or_on_the_other_samples():
    """One sample a thread (a batch at least as large as the threads) or each group's planes
    shared out (a smaller batch): every sample's read-out and stem gradient are bitwise the
    same, with 1, 2 or 3 threads, alone or in a batch."""
    torch.manual_seed(0)
    model = StaticNeuralGraph(dim=96, downsample_dim=16, feature_dim=10, image_size=16)
    stem, g_out = torch.randn(4, 16, 4, 4), torch.randn(4, 10, 4, 4)
    old, runs = torch.get_num_threads(), []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(_dag_run(model, stem, g_out))
            alone = _dag_run(model, stem[:1], g_out[:1])  # fewer samples than threads
            assert torch.equal(alone[0], runs[-1][0][:1]) and torch.equal(alone[1], runs[-1][1][:1])
    finally:
        torch.set_num_threads(old)
    for run in runs[1:]:
        assert torch.equal(run[0], runs[0][0]) and torch.equal(run[1], runs[0][1])


def test_the_dag_reads_only_its_region_and_refuses_what_does_not_fit():
    """The pulls are the edges into a later group only, whatever the weight holds elsewhere;
    groups, read-out and weight that do not fit are refused."""
    rng, d = [0, 4, 8, 12], 12
    w = torch.randn(d, d)  # every entry an edge, the DAG's region and outside it
    dag = native.StaticDag(w, rng, 3)
    crow, col, val = dag.pull
    rows = torch.repeat_interleave(torch.arange(4, d), (crow[1:] - crow[:-1]).long())
    starts = torch.tensor([4] * 4 + [8] * 4)
    assert torch.equal(col.long(), torch.cat([torch.arange(int(s)) for s in starts]))
    assert torch.equal(val, w[rows, col.long()])
    assert dag.out[1].numel() == 3 * 4 and dag.push_t[0].numel() == d + 1
    with pytest.raises(ValueError, match="do not fit"):
        native.StaticDag(w, rng, 5)  # more read-out nodes than the last group holds
    with pytest.raises(ValueError, match="do not fit"):
        native.StaticDag(w[:, :10], rng, 3)
    with pytest.raises(ValueError, match="do not fit"):
        native.StaticDag(w, [0, 8, 4, 12], 3)


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
