"""MobileNetV1Like and MobileNetV1CIFAR against the original's recorded layouts and logits."""

import json
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from models.basic.mobilenetv1cifar import MobileNetV1CIFAR
from models.graphs.edges import GRAPH_TYPES
from models.graphs.mobilenetv1like import (
    BLOCK_CFG,
    Block,
    MobileNetV1Like,
    block_allowed,
    block_prune_rate,
)

# tests/fixtures (as tests/conftest.py's reference_dir), read at collection time for the
# parametrization below.
REF = os.path.join(os.path.dirname(__file__), "..", "fixtures")
FIXTURE = os.path.join("ckpt", "medium_mobilenetv1_dnw_x225")


def _configs(class_name: str) -> list:
    with open(os.path.join(REF, "state_dicts.json")) as fh:
        configs = json.load(fh)["configs"]
    return [c for c in configs if c["model_class"].endswith(f".{class_name}'>")]


LIKE_CONFIGS = _configs("MobileNetV1Like")


def _build(c: dict) -> MobileNetV1Like:
    return MobileNetV1Like(
        prune_rate=c["flags_prune_rate"],
        graph=c["graph"],
        image_size=c["image_size"],
        output_size=c["output_size"],
        small=c["small"],
        rho=0.95,
    )


def _layout(module: torch.nn.Module) -> list:
    return [(k, list(v.shape), str(v.dtype)) for k, v in module.state_dict().items()]


def _json_layout(rows: list) -> list:
    return [(r["key"], r["shape"], r["dtype"]) for r in rows]


def test_every_medium_and_large_config_is_listed(reference_dir):
    assert len(LIKE_CONFIGS) == 15  # 8 medium + 7 large


def _config_id(c: dict) -> str:
    return os.path.splitext(os.path.relpath(c["yml"], "apps"))[0]


@pytest.mark.parametrize("c", LIKE_CONFIGS, ids=_config_id)
def test_layout_matches_original(c):
    torch.manual_seed(0)
    model = _build(c)
    assert _layout(model) == _json_layout(c["state_dict"])
    assert sum(p.numel() for p in model.parameters()) == c["num_parameters"]
    assert [repr(b.prune_rate) for b in model.layers] == [b["prune_rate_repr"] for b in c["blocks"]]
    assert [b.prune_rate for b in model.layers] == [b["prune_rate"] for b in c["blocks"]]
    graphs = [
        (n, type(g).__name__, g.prune_rate, g.num_kept)
        for n, g in ((gl.name, gl.module) for gl in model.graph_layers())
    ]
    want = [(g["module"], g["class"], g["prune_rate"], g["num_kept"]) for g in c["graph_modules"]]
    assert graphs == want
    assert len(model.get_weight()) == len(want)
    if "state_dict_after_get_weight" in c:  # fine_tune: masks appear at the first use
        model.get_weight()
        assert _layout(model) == _json_layout(c["state_dict_after_get_weight"])


def test_block_prune_rate_formula():
    # docs/faithfulness.md, "MobileNetV1-like": the medium values, exactly
    rates = [block_prune_rate(0.775, *cfg[:2], cfg[3]) for cfg in BLOCK_CFG]
    assert rates == [0.949375, 0.9746875, 0.9746875, 0.9915625, 0.9746875]
    assert block_prune_rate(0.7, 32, 64, 1) == 0.9099999999999999


def test_from_config_reads_the_keys():
    cfg = SimpleNamespace(
        prune_rate=0.85,
        graph="dnw",
        image_size=224,
        output_size=7,
        in_channels=1,
        small=True,
        rho=0.5,
        td_abs=False,
    )
    model = MobileNetV1Like.from_config(cfg)
    assert model.conv1.in_channels == 1 and model.conv1.stride == (2, 2)
    assert model.linear.graph.weight.shape == (7, 1024, 1, 1)
    assert model.linear.graph.prune_rate == 0.85


@pytest.mark.parametrize("image_size,stride", [(32, 1), (64, 1), (65, 2), (224, 2)])
def test_stem_stride(image_size, stride):
    model = MobileNetV1Like(prune_rate=0.5, graph="dnw", image_size=image_size)
    assert model.conv1.stride == (stride, stride)


def test_rho_gamma_is_the_graph_prune_rate():
    model = MobileNetV1Like(prune_rate=0.775, graph="td", rho="gamma", small=True)
    assert [g.rho for _, g in ((gl.name, gl.module) for gl in model.graph_layers())] == [
        g.prune_rate for _, g in ((gl.name, gl.module) for gl in model.graph_layers())
    ]


def _load_fixture(fixture: str) -> MobileNetV1Like:
    ckpt = torch.load(fixture + ".ckpt.pt", weights_only=True)
    state = {k[len("module.") :]: v for k, v in ckpt["model"].items()}
    model = MobileNetV1Like(prune_rate=0.775, graph="dnw")
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_fixture_logits(reference_dir):
    fixture = os.path.join(reference_dir, FIXTURE)
    model = _load_fixture(fixture)
    x = torch.load(fixture + ".input.pt", weights_only=True)
    expected = torch.load(fixture + ".expected.pt", weights_only=True)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (4, 10)
    assert (logits - expected["logits"]).abs().max().item() <= 1e-5
    with open(fixture + ".json") as fh:
        stats = {s["module"]: s for s in json.load(fh)["graph_stats"]}
    for name, graph in ((gl.name, gl.module) for gl in model.graph_layers()):
        w = graph.get_weight()
        assert int((w == 0).sum()) == stats[name]["p_pruned"]
        assert int((w != 0).sum()) == stats[name]["kept"]


def _reference_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """Gather formulation: each layer's input is the sum over ALL earlier layers' messages."""
    w = block.get_weight().flatten(1)  # [targets, sources]
    inp, oup = block.inp, block.oup
    h = block.downsample(F.relu(block.norm[0](x)))
    messages = [(h, slice(0, inp))]  # (node outputs, their columns of w)
    for layer in range(block.blocks):
        rows = slice(layer * oup, (layer + 1) * oup)
        total = sum(F.conv2d(m, w[rows, cols, None, None]) for m, cols in messages)
        if layer == block.blocks - 1:
            return total
        a = F.relu(block.norm[layer + 1](total))
        a = F.conv2d(a, block.conv.weight[layer * oup : (layer + 1) * oup], padding=1, groups=oup)
        messages.append((a, slice(inp + layer * oup, inp + (layer + 1) * oup)))


@pytest.mark.parametrize("blocks,stride", [(1, 1), (2, 2), (4, 1)])
def test_block_forward_equals_gather_formulation(blocks, stride):
    torch.manual_seed(1)
    block = Block(inp=5, oup=3, stride=stride, blocks=blocks, net_prune_rate=0.4, graph="dnw")
    for bn in block.norm:
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    block.eval()
    x = torch.randn(2, 5, 8, 8)
    with torch.no_grad():
        out = block(x)
        assert out.shape == (2, 3, 8 // stride, 8 // stride)
        torch.testing.assert_close(out, _reference_block(block, x), rtol=0, atol=1e-5)


def test_forward_reads_only_the_dag():
    torch.manual_seed(2)
    block = Block(inp=4, oup=3, stride=1, blocks=3, net_prune_rate=0.0, graph="complete")
    block(torch.randn(2, 4, 6, 6)).sum().backward()
    read = block.graph.weight.grad.flatten(1) != 0  # [targets, sources]
    allowed = block_allowed(4, 3, 3)
    assert torch.equal(read, allowed)
    # input columns feed all 9 targets; layer-0 columns feed rows 3..8; layer-1 rows 6..8
    assert allowed.sum().item() == 4 * 9 + 3 * 6 + 3 * 3


@pytest.mark.parametrize("graph", sorted(GRAPH_TYPES))
def test_forward_backward_every_graph_type(graph):
    torch.manual_seed(3)
    model = MobileNetV1Like(prune_rate=0.775, graph=graph, rho=0.95)
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(
        g.weight.grad.abs().sum() > 0
        for _, g in ((gl.name, gl.module) for gl in model.graph_layers())
    )


def test_random_mask_respects_the_dag():
    torch.manual_seed(4)
    model = MobileNetV1Like(prune_rate=0.49, graph="random", small=True)
    for block in model.layers:
        mask = block.graph.mask.flatten(1).bool()
        assert int(mask.sum()) == block.graph.num_kept
        assert not (mask & ~block_allowed(block.inp, block.oup, block.blocks)).any()
    assert int(model.linear.graph.mask.sum()) == model.linear.graph.num_kept


def test_dnw_no_update_mask_is_all_ones():
    model = MobileNetV1Like(prune_rate=0.775, graph="dnw_no_update")
    assert all(
        bool((g.mask == 1).all()) for _, g in ((gl.name, gl.module) for gl in model.graph_layers())
    )


@pytest.mark.parametrize("small", [False, True])
def test_imagenet_forward_shapes(small):
    torch.manual_seed(5)
    model = MobileNetV1Like(
        prune_rate=0.85, graph="dnw", image_size=224, output_size=1000, small=small
    ).eval()
    seen = []
    model.layers.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert seen == [(1, 1024, 7, 7)]  # 224 -> 112 (stem) -> 112, 56, 28, 14, 7


def test_mobilenetv1cifar_layout_and_forward(reference_dir):
    (c,) = _configs("MobileNetV1CIFAR")
    model = MobileNetV1CIFAR.from_config(
        SimpleNamespace(width_mult=0.25, output_size=c["output_size"], in_channels=3)
    )
    assert _layout(model) == _json_layout(c["state_dict"])
    assert sum(p.numel() for p in model.parameters()) == c["num_parameters"] == 215642
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    wide = MobileNetV1CIFAR(width_mult=1.0, output_size=100)
    assert wide.linear.weight.shape == (100, 1024)
