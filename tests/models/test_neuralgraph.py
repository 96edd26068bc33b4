"""Tiny classifiers: layouts against the original's, forward shapes, the recorded logits."""

import json
import os

import pytest
import torch

from genutil import api
from models.graphs.neuralgraph import (
    ContinuousTimeNeuralGraph,
    DiscreteTimeNeuralGraph,
    StaticNeuralGraph,
    static_groups,
)

SMALL = [
    "static_dnw",
    "static_random_graph",
    "discrete_time_dnw",
    "discrete_time_random_graph",
    "continuous_time_dnw",
    "continuous_time_random_graph",
]


def _ref(reference_dir, yml):
    configs = json.load(open(os.path.join(reference_dir, "state_dicts.json")))["configs"]
    return next(c for c in configs if c["yml"] == yml)


@pytest.mark.parametrize("name", SMALL)
def test_state_dict_and_parameter_count_match_the_original(reference_dir, name):
    yml = f"apps/small_scale/{name}.yml"
    ref = _ref(reference_dir, yml)
    model = api.build_model(yml)
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == [(r["key"], r["shape"]) for r in ref["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"] == 651058
    (graph,) = [g for _, g in ((gl.name, gl.module) for gl in model.graph_layers())]
    assert graph.num_kept == ref["graph_modules"][0]["num_kept"] == 32000


@pytest.mark.parametrize(
    "cls", [StaticNeuralGraph, DiscreteTimeNeuralGraph, ContinuousTimeNeuralGraph]
)
def test_forward_backward_shapes(cls):
    torch.manual_seed(0)
    model = cls(
        dim=96,
        downsample_dim=32,
        feature_dim=16,
        image_size=16,
        output_size=7,
        prune_rate=0.8,
        **({} if cls is ContinuousTimeNeuralGraph else {"layers": 5}),
    )
    out = model(torch.randn(3, 3, 16, 16))
    assert out.shape == (3, 7)
    out.sum().backward()
    assert model.get_weight().shape == (96, 96, 1, 1)
    assert all(p.grad is not None for p in model.parameters())


def test_static_groups_are_derived_from_the_config():
    assert static_groups(800, 32, 5) == [32, 192, 192, 192, 192]  # the original's hard-coding
    assert static_groups(224, 32, 5) == [32, 48, 48, 48, 48]
    assert static_groups(160, 40, 4) == [40, 40, 40, 40]
    with pytest.raises(ValueError):
        static_groups(800, 32, 6)  # 768 nodes do not split into 5 equal groups
    m = StaticNeuralGraph(dim=160, downsample_dim=40, feature_dim=20, layers=4, image_size=16)
    assert m.block_sz == [40, 40, 40, 40] and len(m.norm) == 4
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_static_random_mask_respects_the_dag():
    torch.manual_seed(0)
    m = StaticNeuralGraph(graph="random")
    mask = m.graph.mask.view(800, 800).bool()
    allowed = m.allowed_edges()
    assert not mask[~allowed].any()
    assert int(mask.sum()) == 32000
    # edges from the stem group reach every later node; nothing feeds the stem nodes
    assert not mask[:32].any() and mask[32:, :32].any()


def test_static_fixture_gives_the_recorded_logits(reference_dir):
    d = os.path.join(reference_dir, "ckpt")
    model = api.build_model("apps/small_scale/static_dnw.yml")
    api.load_checkpoint(model, os.path.join(d, "small_static_dnw.ckpt.pt"))
    x = torch.load(os.path.join(d, "small_static_dnw.input.pt"), weights_only=True)
    expected = torch.load(os.path.join(d, "small_static_dnw.expected.pt"), weights_only=True)
    model.eval()
    with torch.no_grad():
        assert (model(x) - expected["logits"]).abs().max() <= 1e-5
    assert int((model.get_weight() != 0).sum()) == 32000


def test_continuous_model_counts_function_evaluations_and_clean_ode_differs():
    torch.manual_seed(0)
    kw = dict(dim=64, downsample_dim=32, feature_dim=16, image_size=16, prune_rate=0.5)
    a = ContinuousTimeNeuralGraph(inplace_relu=True, **kw).eval()
    b = ContinuousTimeNeuralGraph(inplace_relu=False, **kw).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert a.nfe >= 8 and (a.nfe - 2) % 6 == 0  # dopri5: 2 + 6 per step (FSAL)
    assert not torch.allclose(ya, yb)  # the original's in-place ReLU changes the trajectory
