"""The contract (models/contract.py): every network of apps/ answers it, a network defined here,
outside models/, gets profiling, figures, TensorBoard images and fast evaluation through it, and
genutil's tools ask nothing else of a network."""

from __future__ import annotations

import copy
import glob
import os
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from genutil import api, plot, profiling
from genutil.config import load_config
from genutil.log import adjacency_images
from models.contract import GraphLayer, NodeLayout, WiredNetwork, graph_layers, unwrap
from models.graphs import fastpath
from models.graphs.edges import Graph, make_graph

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APPS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "apps", "**", "*.yml"), recursive=True)
)
# networks whose evaluation has nothing to shrink: they say so
NO_PLAN = {
    "DiscreteTimeNeuralGraph": "no dead nodes",
    "ContinuousTimeNeuralGraph": "no dead nodes",
    "MobileNetV1CIFAR": "no graph layer",
}


@pytest.mark.parametrize("app", APPS)
def test_every_experiment_answers_the_contract(app):
    torch.manual_seed(0)
    model = api.build_model(app)
    assert isinstance(model, WiredNetwork)
    layers = model.graph_layers()
    for layer in layers:
        assert isinstance(layer, GraphLayer) and isinstance(layer.module, Graph)
        assert model.get_submodule(layer.name) is layer.module
        n_out, n_in = layer.shape
        assert layer.effective_weight().shape == (n_out, n_in)
        if layer.allowed is not None:
            assert layer.allowed.shape == (n_out, n_in) and layer.allowed.dtype == torch.bool
        if layer.layout is not None:  # every read edge is placed inside the layout
            rows, cols = layer.allowed.nonzero(as_tuple=True)
            src, src_pos, dst, dst_pos = layer.layout.place(rows, cols)
            sizes = torch.tensor(layer.layout.sizes)
            assert bool((src < dst).all()) and bool((src_pos < sizes[src]).all())
            assert bool((dst_pos < sizes[dst]).all())
    result = model.profile()
    assert 0 < result.params <= result.dense_params == sum(p.numel() for p in model.parameters())
    # the network recognises its own state dict (the original's files carry no config); an
    # imported network (models/wired.py) has no original's files: its checkpoints are ours
    cfg = load_config(app)
    if cfg.model.startswith("models."):
        again = models.from_state_dict(model.state_dict(), cfg.prune_rate)
        assert type(again) is type(model)
        again.load_state_dict(model.state_dict())
    else:
        assert models.from_state_dict(model.state_dict(), cfg.prune_rate) is None


@pytest.mark.parametrize(
    "app",
    [a for a in APPS if "large_scale" not in a and "continuous" not in a and "fashion" not in a],
)
def test_fast_plan_builds_or_says_why(app):
    torch.manual_seed(0)
    model = api.build_model(os.path.join(ROOT, app)).eval()
    reason = NO_PLAN.get(type(model).__name__)
    if reason:
        with pytest.raises(ValueError, match=reason):
            api.fast_eval(model)
        return
    x = torch.randn(2, model.in_channels, model.image_size, model.image_size)
    shrunk = api.shrink(model, backend="sparse")
    with torch.no_grad():
        assert (shrunk.module(x) - model(x)).abs().max().item() <= 1e-4
    assert shrunk.lines and shrunk.lines[0].startswith("fast_eval (sparse)")


@pytest.mark.parametrize(
    "app",
    [
        "apps/small_scale/static_dnw.yml",
        "apps/small_scale/discrete_time_dnw.yml",
        "apps/small_scale/continuous_time_dnw.yml",
        "apps/medium_scale/mobilenetv1_dnw_x225.yml",
        "apps/medium_scale/mobilenetv1_td_x225.yml",
    ],
)
def test_reference_forward_equals_the_fast_one(app):
    """The one visible branch: the paper's equations in plain ops and the forward arranged for
    speed give the same logits and gradients."""
    torch.manual_seed(0)
    model = api.build_model(os.path.join(ROOT, app), image_size=32).train()
    x = torch.randn(3, 3, 32, 32)

    def step(net: nn.Module, enabled: bool) -> tuple:
        with fastpath.use(enabled=enabled):
            torch.manual_seed(1)  # targeted dropout draws the same drops in both
            net.zero_grad(set_to_none=True)
            out = net(x.to(next(net.parameters()).dtype))
            (out * torch.linspace(-1, 1, out.numel()).to(out).view_as(out)).sum().backward()
            return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}

    exact: dict = {}
    start = copy.deepcopy(model)
    (fast, g_fast), (ref, g_ref) = step(model, True), step(copy.deepcopy(start), False)
    assert (fast - ref).abs().max().item() <= 1e-5
    for name, g in g_ref.items():
        # relative to the tensor's size, with a floor for gradients that are zero in exact
        # arithmetic (a conv bias followed by BatchNorm) and only rounding noise here
        scale = g.abs().max().item()
        if (g_fast[name] - g).abs().max().item() <= 1e-4 * scale + 1e-5:
            continue
        # The float32 reference can itself be off (the medium TD model's float32 torch ops put
        # a BatchNorm bias gradient 18 % from the float64 one, and every gradient before it
        # 8 %); then the reference forward in float64 decides, and the fast one must be the
        # closer of the two.
        if not exact:
            exact.update(step(copy.deepcopy(start).double(), False)[1])
        g64 = exact[name]
        off_fast = (g_fast[name].double() - g64).abs().max().item()
        assert off_fast <= 1e-4 * g64.abs().max().item() + 1e-5, name
        assert off_fast < (g.double() - g64).abs().max().item(), name


class OutsideNet(WiredNetwork):
    """A network this test defines: two graph layers used as modules, a BatchNorm between."""

    image_size = 8

    def __init__(self, graph: str = "dnw", prune_rate: float = 0.6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.g1 = make_graph(graph, prune_rate, 12, 20)
        self.bn = nn.BatchNorm2d(20)
        self.g2 = make_graph(graph, prune_rate, 20, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = F.relu(self.g1(F.relu(self.stem(x))))
        h = F.relu(self.g2(self.bn(h)))
        return self.fc(h.mean((2, 3)))


def test_a_network_from_outside_gets_every_tool(tmp_path):
    torch.manual_seed(0)
    net = OutsideNet().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2)
    kept = [layer.module.num_kept for layer in graph_layers(net)]
    assert kept == [240 - int(0.6 * 240), 320 - int(0.6 * 320)] == [96, 128]
    # profiling: kept edges + every other parameter; MACs at 8 x 8, graph layers at kept edges
    result = profiling.profile(nn.DataParallel(net))
    others = sum(
        p.numel() for n, p in net.named_parameters() if not n.endswith(("g1.weight", "g2.weight"))
    )
    assert result.params == 96 + 128 + others
    assert result.macs == 64 * (12 * 27) + 64 * 96 + 64 * 128 + 16 * 5
    assert api.profile(net) == (result.params, result.macs)
    # figures and TensorBoard images
    wirings = plot.load_wirings(net)
    assert [w.name for w in wirings] == ["g1", "g2"]
    assert [int(w.kept.sum()) for w in wirings] == [96, 128]
    path = plot.plot_adjacency(wirings[0], str(tmp_path / "adjacency.png"))
    assert os.path.getsize(path) > 1000
    images = adjacency_images(net)
    assert [tag for tag, _ in images] == ["non_zero/g1", "non_zero/g2"]
    assert images[0][1].shape == (1, 20, 12) and int(images[0][1].sum()) == 96
    # fast evaluation: the kept edges only, same outputs
    x = torch.randn(4, 3, 8, 8)
    for backend in ("sparse", "dense"):
        fast = api.fast_eval(net, backend=backend)
        with torch.no_grad():
            assert (fast(x) - net(x)).abs().max().item() <= 1e-5, backend
    assert not any(isinstance(m, Graph) for m in api.fast_eval(net, backend="sparse").modules())
    with pytest.raises(ValueError, match="choose"):
        api.fast_eval(net, backend="dgl")


def test_layouts_place_edges_and_unwrap_sees_through_wrappers():
    net = OutsideNet()
    assert unwrap(nn.DataParallel(net)) is net
    assert graph_layers(nn.DataParallel(net))[0].module is net.g1
    layout = NodeLayout(("a", "b"), (2, 3), lambda r, c: (c * 0, c, r * 0 + 1, r))
    assert layout.place(torch.tensor([2]), torch.tensor([1]))[3].item() == 2


def test_genutil_asks_nothing_of_a_network_but_the_contract():
    """No model-specific knowledge in genutil/: no hasattr on a module, no class names of the
    networks, no state-dict keys (docstrings and help texts may name the networks)."""
    names = ("MobileNetV1Like", "MobileNetV1CIFAR", "StaticNeuralGraph", "DiscreteTimeNeuralGraph",
             "ContinuousTimeNeuralGraph", "GraphLinear", "Block")  # fmt: skip
    code_only = re.compile(r'""".*?"""|#.*$|"[^"\n]*"', re.S | re.M)
    for path in glob.glob(os.path.join(ROOT, "genutil", "*.py")):
        with open(path) as fh:
            code = code_only.sub("", fh.read())
        for name in names:
            assert not re.search(rf"\b{name}\b", code), (path, name)
        for found in re.findall(r"hasattr\(([^,]+),", code):
            assert found.strip() in ("torch.serialization", "torch.amp"), (path, found)
        assert "type(model).__name__ ==" not in code and 'graph.weight"' not in code
