"""fast_eval: dead-node removal is exact, keeps the original's counts, and every backend agrees.

Runs in both environments (torch 2.14 and, via ``make test-dgl``, torch 2.2 with DGL); the DGL
cases skip where DGL is not importable.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from genutil import api
from models.graphs.edges import GRAPH_TYPES
from models.graphs.fast import BackendUnavailable, FastGraphNet, dgl_available
from models.graphs.fast.counting import executed_macs
from models.graphs.fast.removal import plan_mobilenet
from models.graphs.mobilenetv1like import MobileNetV1Like
from models.graphs.neuralgraph import StaticNeuralGraph

BACKENDS = ["dense", "sparse"] + (["dgl"] if dgl_available() else [])
needs_dgl = pytest.mark.skipif(
    not dgl_available(),
    reason="dgl is not importable here: it "
    "needs torch <= 2.2.1 (make dgl-env; make test-dgl runs these)",
)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Norm parameters and statistics away from the identity, so relu(bn(0)) != 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def max_diff(fast: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (fast(x) - model(x)).abs().max().item()


def every_backend(model: nn.Module) -> dict:
    """{backend: shrunk model}, all from one plan (planning is the slow part)."""
    plan = model.eval().fast_plan()
    return {backend: FastGraphNet(plan, backend) for backend in BACKENDS}


def assert_exact(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Every backend's output equals the full model's within 1e-5; return the last one."""
    with torch.no_grad():
        want = model(x)
        for backend, fast in every_backend(model).items():
            assert (fast(x) - want).abs().max().item() <= 1e-5, backend
    return fast


@pytest.fixture(scope="module")
def medium(reference_dir):
    base = os.path.join(reference_dir, "ckpt", "medium_mobilenetv1_dnw_x225")
    model = MobileNetV1Like(prune_rate=0.775, graph="dnw")
    api.load_checkpoint(model, base + ".ckpt.pt")
    with open(base + ".json") as fh:
        meta = json.load(fh)
    x = torch.load(base + ".input.pt", weights_only=True)
    return model.eval(), x, torch.load(base + ".expected.pt", weights_only=True), meta


@pytest.fixture(scope="module")
def medium_fast(medium):
    return every_backend(medium[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_medium_fixture_is_exact_with_the_original_counts(medium, medium_fast, backend):
    _, x, expected, meta = medium
    fast = medium_fast[backend]
    assert not fast.training and fast.backend == backend
    with torch.no_grad():
        out = fast(x)
    assert (out - expected["logits_fast_eval"]).abs().max().item() <= 1e-5
    assert (out - expected["logits"]).abs().max().item() <= 1e-5
    kept = fast.kept_channels()
    assert kept["stem"] == meta["fast_eval"]["conv1_out_channels"] == 29
    assert kept["blocks"] == [b["block_sz"] for b in meta["fast_eval"]["blocks"]]
    assert kept["blocks"][3] == [256, 446, 508, 503, 501, 488, 512]
    assert kept["features"] == meta["fast_eval"]["linear_in_features"] == 1024
    assert kept["constants"] == 0


def test_fast_eval_returns_a_new_model_and_leaves_the_original(medium):
    model, x, expected, _ = medium
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fast = api.fast_eval(model, backend="sparse")
    assert model.training and not fast.training and fast is not model
    assert not any(p.requires_grad for p in fast.parameters())
    model.eval()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():  # the full model still gives the recorded logits
        assert (model(x) - expected["logits"]).abs().max().item() <= 1e-5
        assert (fast(x) - expected["logits"]).abs().max().item() <= 1e-5


def test_transitive_rule_is_exact_and_never_keeps_more(medium):
    model, x, expected, _ = medium
    fast = api.fast_eval(model, rule="transitive")
    orig = api.fast_eval(model).kept_channels()["blocks"]
    assert all(
        t <= o for tb, ob in zip(fast.kept_channels()["blocks"], orig) for t, o in zip(tb, ob)
    )
    with torch.no_grad():
        assert (fast(x) - expected["logits"]).abs().max().item() <= 1e-5


def test_sparse_executes_the_counted_work(medium, medium_fast):
    """Executed multiply-adds = edges x s^2 + 9 s^2 per kept node + stem + classifier, about
    the paper's count (its edges are the fractional budget, incl. entries never read)."""
    model, x, _, _ = medium
    plan = plan_mobilenet(model)
    sides = [32, 16, 8, 4, 2]
    want = 29 * 3 * 9 * 32 * 32 + plan.head.weight.numel()
    for block, s in zip(plan.blocks, sides):
        want += (block.weight.numel() + 9 * sum(op.size for op in block.layers)) * s * s
    got = executed_macs(medium_fast["sparse"], x[:2])
    assert got == want == 4_283_288
    theory = api.profile(model, input_size=32)[1]
    assert 0.9 <= got / theory <= 1.0
    if "dgl" in medium_fast:  # DGL's kernels are invisible to FlopCounterMode: a hook counts
        assert executed_macs(medium_fast["dgl"], x[:2]) == want
    assert executed_macs(medium_fast["dense"], x[:2]) > 20 * theory  # the zeros too


@pytest.mark.parametrize("graph", sorted(GRAPH_TYPES))
def test_every_graph_type_is_exact(graph):
    torch.manual_seed(1)
    model = randomize_norms(MobileNetV1Like(prune_rate=0.9, graph=graph, rho=0.5))
    assert_exact(model, torch.randn(2, 3, 32, 32))


def _kill_last_block_outputs(model: MobileNetV1Like, outputs: list) -> None:
    """Zero every weight into some last-Block outputs: the top-k prunes them, so those outputs
    have no in-edge and stay 0 before the final BatchNorm (docs/faithfulness.md, "Where we
    differ")."""
    block = model.layers[-1]
    rows = [block.oup * (block.blocks - 1) + j for j in outputs]
    with torch.no_grad():
        block.graph.weight[rows] = 0


@pytest.mark.parametrize("small", [False, True])
def test_dead_last_block_outputs_are_folded_not_dropped(small):
    torch.manual_seed(2)
    model = randomize_norms(MobileNetV1Like(prune_rate=0.775, graph="dnw", small=small))
    _kill_last_block_outputs(model, list(range(0, 1024, 7)))
    fast = assert_exact(model, torch.randn(2, 3, 32, 32))
    kept = fast.kept_channels()
    assert kept["constants"] > 0  # read by the classifier, no in-edge: a constant
    assert kept["blocks"][-1][-1] + kept["constants"] <= 1024
    # the original dropped them: that changes the logits by the folded constants
    bias = torch.zeros(10) if small else model.linear.bias.detach()
    assert (fast.head.bias - bias).abs().max().item() > 1e-3


def test_small_classifier_drops_features_it_never_reads():
    torch.manual_seed(3)
    model = randomize_norms(MobileNetV1Like(prune_rate=0.9, graph="dnw", small=True))
    fast = api.fast_eval(model, backend="sparse")
    reads = int((model.linear.get_weight().flatten(1) != 0).any(0).sum())
    assert fast.kept_channels()["features"] <= reads < 1024
    assert max_diff(fast, model, torch.randn(2, 3, 32, 32)) <= 1e-5


def test_large_scale_small_x15_at_a_small_input():
    torch.manual_seed(4)
    model = randomize_norms(api.build_model("apps/large_scale/mobilenetv1_dnw_small_x15.yml"))
    assert model.small and model.conv1.stride == (2, 2)
    assert_exact(model, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("graph", ["dnw", "random"])
def test_static_tiny_model_is_exact(graph):
    torch.manual_seed(5)
    model = randomize_norms(StaticNeuralGraph(prune_rate=0.995, graph=graph))
    fast = assert_exact(model, torch.randn(3, 3, 32, 32))
    kept = fast.kept_channels()
    assert kept["stem"] <= 32 and sum(kept["blocks"][0][:-1]) < 800


def test_static_fixture(reference_dir):
    base = os.path.join(reference_dir, "ckpt", "small_static_dnw")
    model = api.build_model("apps/small_scale/static_dnw.yml")
    api.load_checkpoint(model, base + ".ckpt.pt")
    x = torch.load(base + ".input.pt", weights_only=True)
    expected = torch.load(base + ".expected.pt", weights_only=True)["logits"]
    for backend, fast in every_backend(model).items():
        with torch.no_grad():
            assert (fast(x) - expected).abs().max().item() <= 1e-5, backend


def test_unsupported_model_and_backend_are_value_errors_naming_them():
    model = api.build_model("apps/small_scale/discrete_time_dnw.yml")
    with pytest.raises(ValueError, match="discrete-time model has no dead nodes"):
        api.fast_eval(model)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        api.fast_eval(
            StaticNeuralGraph(dim=96, downsample_dim=32, feature_dim=16, layers=5, image_size=16),
            backend="cuda",
        )
    with pytest.raises(TypeError, match="does not implement models.contract.WiredNetwork"):
        api.fast_eval(nn.Linear(2, 2))


@pytest.mark.skipif(dgl_available(), reason="dgl is importable here")
def test_dgl_backend_without_dgl_is_a_backend_error():
    model = StaticNeuralGraph(dim=96, downsample_dim=32, feature_dim=16, layers=5, image_size=16)
    with pytest.raises(BackendUnavailable, match=r"torch <= 2\.2\.1") as err:
        api.fast_eval(model, backend="dgl")
    assert "\n" not in str(err.value)


def test_shrink_reports_what_it_kept_and_exports(tmp_path):
    model = randomize_norms(
        StaticNeuralGraph(
            dim=96, downsample_dim=32, feature_dim=16, layers=5, image_size=16, prune_rate=0.5
        )
    )
    x = torch.randn(2, 3, 16, 16)
    shrunk = api.shrink(model, backend="sparse")
    assert max_diff(shrunk.module, model, x) <= 1e-5
    assert shrunk.lines[0].startswith("fast_eval (sparse): stem keeps")
    assert shrunk.lines == shrunk.module.report()
    path = tmp_path / "out" / "model.pt"
    assert api.export_model(shrunk.module, str(path), x) <= 1e-5 and path.exists()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_export_round_trip_in_a_fresh_process(medium, medium_fast, tmp_path, backend):
    _, x, expected, _ = medium
    path = tmp_path / f"{backend}.pt"
    assert api.export_model(medium_fast[backend], str(path), x) <= 1e-5
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch\n"
        f"m = torch.jit.load({str(path)!r})\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save((m(x), m(torch.randn(5, 3, 32, 32)).shape), "
        f"{str(tmp_path / 'y.pt')!r})\n"
        "assert not any(k.split('.')[0] in ('models', 'genutil') for k in sys.modules)\n"
    )
    # -I: no PYTHONPATH, no current directory on sys.path; cwd elsewhere: this project is unseen
    subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, check=True, capture_output=True
    )
    out, shape = torch.load(tmp_path / "y.pt", weights_only=True)
    assert (out - expected["logits"]).abs().max().item() <= 1e-5
    assert tuple(shape) == (5, 10)
