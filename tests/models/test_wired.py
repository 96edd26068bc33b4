"""DNW on any network (models/wired.py, ``api.wire``): a network defined here, not in models/,
wired in place, against the same network with each 1x1 weight masked by hand."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from genutil import api
from models.contract import WiredNetwork
from models.graphs.edges import GRAPH_TYPES, Graph


class Bottleneck(nn.Module):
    """1x1 (bias) -> 3x3 depthwise -> 1x1 strided, plus a 1x1 strided projection shortcut."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(cin, mid, 1, bias=True)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.project = nn.Conv2d(mid, cout, 1, stride=stride, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        y = F.relu(self.bn1(self.expand(x)))
        y = self.bn2(self.project(F.relu(self.dw(y))))
        return F.relu(y + self.shortcut(x))


class SmallNet(nn.Module):
    """A stem, two bottlenecks, a padded 1x1 head with reflect padding and a grouped 1x1 (which
    is not wired: groups > 1), global pool, linear classifier."""

    def __init__(self, classes: int = 7) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(Bottleneck(12, 24, 16, 1), Bottleneck(16, 32, 20, 2))
        self.head = nn.Conv2d(20, 30, 1, padding=1, padding_mode="reflect")
        self.grouped = nn.Conv2d(30, 30, 1, groups=3)
        self.fc = nn.Linear(30, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        x = self.grouped(F.relu(self.head(x)))
        return self.fc(x.mean((2, 3)))


POINTWISE = [
    "blocks.0.expand",
    "blocks.0.project",
    "blocks.0.shortcut",
    "blocks.1.expand",
    "blocks.1.project",
    "blocks.1.shortcut",
    "head",
]


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    net = SmallNet()
    with torch.no_grad():  # BatchNorm statistics that are not identities
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net, copy.deepcopy(net)


def _mask_by_hand(net: nn.Module, rate) -> None:
    """Each 1x1 weight keeps its top n - int(p*n) |w| (a full sort; the test's own rule)."""
    with torch.no_grad():
        for name in POINTWISE:
            conv = net.get_submodule(name)
            p = rate[name] if isinstance(rate, dict) else rate
            w = conv.weight
            n = w.numel()
            keep = n - int(p * n)
            order = w.abs().flatten().argsort(descending=True, stable=True)[:keep]
            mask = torch.zeros(n, dtype=torch.bool)
            mask[order] = True
            w.mul_(mask.view_as(w).to(w.dtype))


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.9, 0.97])
def test_wired_forward_is_the_network_with_each_1x1_weight_masked_to_its_top_k(rate):
    net, reference = _pair()
    out = api.wire(net, graph="dnw", prune_rate=rate)
    assert out is net and isinstance(net, WiredNetwork) and isinstance(net, SmallNet)
    assert [layer.name for layer in net.graph_layers()] == POINTWISE
    assert not isinstance(net.grouped, Graph) and not isinstance(net.stem, Graph)
    _mask_by_hand(reference, rate)
    net.eval(), reference.eval()
    x = torch.randn(3, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), atol=1e-5, rtol=0)
    for layer in net.graph_layers():  # the budget, exactly
        n = layer.module.weight.numel()
        assert int(torch.count_nonzero(layer.effective_weight())) == n - int(rate * n)


def test_wiring_keeps_weights_bias_stride_padding_and_the_state_dict_keys():
    net, reference = _pair()
    keys = set(reference.state_dict())
    api.wire(net, "dnw", 0.5)
    assert set(net.state_dict()) == keys  # dnw adds no buffer: torchvision/user weights load
    head = net.head
    assert head.padding == (1, 1) and head.padding_mode == "reflect"
    assert net.blocks[1].project.stride == (2, 2) and net.blocks[1].shortcut.stride == (2, 2)
    torch.testing.assert_close(net.blocks[0].expand.bias, reference.blocks[0].expand.bias)
    torch.testing.assert_close(net.blocks[0].expand.weight, reference.blocks[0].expand.weight)
    net.load_state_dict(reference.state_dict())  # an unwired checkpoint loads into the wired net


def test_dnw_backward_reaches_the_pruned_edges():
    net, _ = _pair()
    api.wire(net, "dnw", 0.9)
    net.train()
    F.cross_entropy(net(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    for layer in net.graph_layers():
        pruned = layer.effective_weight() == 0
        grad = layer.module.weight.grad.reshape(pruned.shape)
        assert pruned.sum() > 0 and bool((grad[pruned] != 0).any()), layer.name


def test_dnw_no_update_does_not_reach_them():
    net, _ = _pair()
    api.wire(net, "dnw_no_update", 0.9)
    F.cross_entropy(net(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    for layer in net.graph_layers():
        pruned = layer.effective_weight() == 0
        assert bool((layer.module.weight.grad.reshape(pruned.shape)[pruned] == 0).all())


def test_random_wiring_is_a_fixed_mask_of_the_same_count():
    net, _ = _pair()
    api.wire(net, "random", 0.8)
    masks = {layer.name: layer.module.mask.clone() for layer in net.graph_layers()}
    for layer in net.graph_layers():
        n = layer.module.weight.numel()
        assert int(layer.module.mask.sum()) == n - int(0.8 * n)
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(net(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
    for layer in net.graph_layers():
        assert torch.equal(layer.module.mask, masks[layer.name])
        kept = layer.effective_weight() != 0
        assert torch.equal(kept, layer.module.mask.reshape(kept.shape).bool())


@pytest.mark.parametrize("backend", ["sparse", "dense"])
def test_fast_eval_runs_only_the_kept_edges_and_gives_the_same_logits(backend):
    net, _ = _pair()
    api.wire(net, "dnw", 0.85)
    net.eval()
    small = api.fast_eval(net, backend=backend)
    x = torch.randn(5, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x), atol=1e-4, rtol=0)
    assert not any(isinstance(m, Graph) for m in small.modules())
    assert all(isinstance(m, Graph) for m in (net.head, net.blocks[0].expand))  # net unchanged


def test_profile_counts_kept_edges_plus_every_other_parameter():
    net, _ = _pair()
    api.wire(net, "dnw", 0.75)
    params, macs = api.profile(net, input_size=16)
    kept = sum(int(torch.count_nonzero(g.effective_weight())) for g in net.graph_layers())
    graph_weights = {id(g.module.weight) for g in net.graph_layers()}
    others = sum(p.numel() for p in net.parameters() if id(p) not in graph_weights)
    assert params == kept + others
    dense_params, dense_macs = api.profile(api.wire(_pair()[0], "complete", 0.75), input_size=16)
    assert params < dense_params and macs < dense_macs


def test_per_layer_rates_include_and_exclude():
    net, reference = _pair()
    rates = {"blocks.0.*": 0.5, "head": 0.0, "*": 0.9}
    api.wire(net, "dnw", rates, exclude="*.shortcut")
    names = [g.name for g in net.graph_layers()]
    assert names == [n for n in POINTWISE if not n.endswith("shortcut")]
    assert net.wiring()["layers"]["blocks.0.expand"]["prune_rate"] == 0.5
    assert net.blocks[1].expand.prune_rate == 0.9 and net.head.prune_rate == 0.0
    only = api.wire(_pair()[0], "dnw", lambda name, conv: 0.1 * conv.out_channels / 32,
                    include=["blocks.1.*"])  # fmt: skip
    assert [g.name for g in only.graph_layers()] == [n for n in POINTWISE if "blocks.1" in n]
    assert only.blocks[1].expand.prune_rate == pytest.approx(0.1)


@pytest.mark.parametrize("graph", sorted(GRAPH_TYPES))
def test_every_edge_type_trains_and_evaluates(graph):
    net, _ = _pair()
    api.wire(net, graph, 0.6)
    F.cross_entropy(net(torch.randn(2, 3, 16, 16)), torch.tensor([0, 1])).backward()
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 16, 16))
        torch.testing.assert_close(api.fast_eval(net, "sparse")(torch.zeros(1, 3, 16, 16)),
                                   net(torch.zeros(1, 3, 16, 16)), atol=1e-4, rtol=0)  # fmt: skip
    assert out.shape == (2, 7)


def test_a_wired_state_dict_reloads_into_a_freshly_wired_network():
    net, _ = _pair(1)
    api.wire(net, "random", 0.7)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    fresh = api.wire(_pair(2)[0], "random", 0.7).eval()  # another draw of the wiring
    assert not torch.equal(fresh.head.mask, net.head.mask)
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), net(x), atol=0, rtol=0)


def test_copies_and_whole_model_pickles_stay_wired():
    net, _ = _pair()
    api.wire(net, "dnw", 0.5)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    for other in (copy.deepcopy(net), torch.load(buf, weights_only=False)):
        assert type(other) is type(net) and isinstance(other, WiredNetwork)
        with torch.no_grad():
            torch.testing.assert_close(other(x), net(x), atol=0, rtol=0)


def test_a_module_used_twice_is_wired_everywhere():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 1)
            self.b = self.a

        def forward(self, x):
            return self.b(self.a(x))

    net = api.wire(Shared(), "dnw", 0.5)
    assert isinstance(net.a, Graph) and net.b is net.a


def test_bad_wirings_are_one_line_value_errors():
    with pytest.raises(ValueError, match="not an edge type"):
        api.wire(_pair()[0], graph="dense", prune_rate=0.5)
    with pytest.raises(ValueError, match=r"no 1x1 convolution.*include/exclude"):
        api.wire(_pair()[0], "dnw", 0.5, include="nothing.*")
    with pytest.raises(ValueError, match="no 1x1 convolution with groups=1"):
        api.wire(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1, groups=2)), "dnw", 0.5)
    with pytest.raises(ValueError, match=r"prune rate of layer 'head' is 1\.0"):
        api.wire(_pair()[0], "dnw", {"head": 1.0, "*": 0.5})
    with pytest.raises(ValueError, match="no entry for layer"):
        api.wire(_pair()[0], "dnw", {"head": 0.5})
    with pytest.raises(TypeError, match="nn.Module"):
        api.wire("resnet", "dnw", 0.5)

    class Clash(SmallNet):
        def profile(self):
            return "mine"

    with pytest.raises(ValueError, match="defines profile"):
        api.wire(Clash(), "dnw", 0.5)


@pytest.mark.parametrize(
    "build, layers",
    [
        (lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5), 34),
        (lambda: torchvision.models.resnet18(num_classes=10), 3),
    ],
)
def test_torchvision_networks_wire_and_shrink(build, layers):
    torch.manual_seed(0)
    net = api.wire(build(), "dnw", 0.8, input_size=32)
    assert len(net.graph_layers()) == layers
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(api.fast_eval(net, "sparse")(x), net(x), atol=1e-4, rtol=1e-4)
    params, _ = api.profile(net)
    assert params < sum(p.numel() for p in net.parameters())
