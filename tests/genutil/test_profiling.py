"""Profiling: the original's MACs / params formula, to the unit (docs/faithfulness.md,
"Counting"), and every network's count through the contract."""

import dataclasses
import glob
import json
import os

import pytest
import torch

from genutil import api, profiling
from models.counting import count_block, count_mobilenet, graph_params, spatial_sizes
from models.graphs.mobilenetv1like import Block, MobileNetV1Like

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def medium(reference_dir):
    fixture = os.path.join(reference_dir, "ckpt", "medium_mobilenetv1_dnw_x225")
    ckpt = torch.load(fixture + ".ckpt.pt", weights_only=True)
    model = MobileNetV1Like(prune_rate=0.775, graph="dnw")
    model.load_state_dict({k[len("module.") :]: v for k, v in ckpt["model"].items()})
    with open(fixture + ".json") as fh:
        meta = json.load(fh)
    return model.eval(), meta


def test_medium_fixture_numbers(medium):
    model, meta = medium
    result = count_mobilenet(model)
    assert result.macs == meta["model_profiling_forced"]["n_macs"] == 52_551_552
    assert result.params == meta["model_profiling_forced"]["n_params"] == 212_946
    # a DataParallel-style wrapper is looked through
    # through the contract, and a DataParallel-style wrapper is looked through
    assert profiling.profile(torch.nn.DataParallel(model)).macs == 52_551_552


def test_medium_fixture_node_counts(medium):
    model, meta = medium
    result = count_mobilenet(model)
    fast = meta["fast_eval"]
    assert result.blocks[0].sources_with_output[0] == fast["conv1_out_channels"] == 29
    assert result.stem_params == 3 * 29 * 9
    for block, want in zip(result.blocks, fast["blocks"]):
        assert list(block.sources_with_output) == want["block_sz"][:-1]
        assert block.num_nodes_with_ops == want["nodes_with_output"]
        sizes = [model.layers[block.index].inp] + [model.layers[block.index].oup] * (
            len(want["block_sz"]) - 2
        )
        assert [s - k for s, k in zip(sizes, want["block_sz"][:-1])] == list(block.dead_sources)
    assert result.blocks[-1].outputs_with_input == fast["blocks"][-1]["block_sz"][-1]
    assert result.blocks[-1].dead_outputs == fast["last_block_outputs_without_input"] == 0
    assert [b.num_edges for b in result.blocks] == [104, 1245, 4977, 72991, 79627]


def test_spatial_sizes(medium):
    model, _ = medium
    assert spatial_sizes(model) == (112, [112, 56, 28, 14, 7])  # the original's assumption
    assert spatial_sizes(model, input_size=32) == (32, [32, 16, 8, 4, 2])
    result = count_mobilenet(model, input_size=32)
    assert [b.spatial for b in result.blocks] == [32, 16, 8, 4, 2]
    assert result.params == 212_946  # params do not depend on the resolution
    assert result.macs < count_mobilenet(model).macs


def test_block_counts_by_hand():
    # inp 2, oup 2, two layers: W is [4 targets, 4 sources]; block prune rate 1 - 8/16 = 0.5
    block = Block(inp=2, oup=2, stride=1, blocks=2, net_prune_rate=0.0, graph="complete")
    assert block.prune_rate == 0.5
    with torch.no_grad():
        block.graph.weight.zero_()
        block.graph.weight[0, 0] = 1.0  # input 0 -> intermediate 0
        block.graph.weight[2, 2] = -1.0  # intermediate 0 -> output 0
        block.graph.weight[1, 2] = 2.0  # intermediate 0 -> intermediate 1: never read
    b = count_block(block, spatial=4)
    assert b.num_edges == 3 and b.num_unread_edges == 1
    assert b.sources_with_output == (1, 1) and b.dead_sources == (1, 1)
    assert b.outputs_with_input == 1 and b.dead_outputs == 1
    assert b.edge_budget == 8.0  # 16 * (1 - 0.5): the budget, not the 3 edges present
    assert b.params == 2 * 9 + 8
    assert b.macs == (2 * 9 + 8) * 16


def test_original_float32_truncation():
    # int(<int64 tensor> + <float>) is float32 in the original: 19 072 509.12 becomes
    # 19 072 508 for Block 3 of the fixture (float64 would give 52 551 549 in total).
    block = Block(inp=256, oup=512, stride=2, blocks=6, net_prune_rate=0.775, graph="complete")
    assert count_block(block, spatial=14).macs == int(
        torch.tensor(2816 * 9 * 196) + 2816 * 3072 * (1 - block.prune_rate) * 196
    )


def test_imagenet_random_graph_matches_paper_and_input_size():
    torch.manual_seed(0)
    model = MobileNetV1Like(prune_rate=0.775, graph="random", image_size=224, output_size=1000)
    result = count_mobilenet(model)
    assert count_mobilenet(model, input_size=224) == dataclasses.replace(result, input_size=224)
    # Paper: RG x0.225 on ImageNet, 1.2M params and 55.7M MACs (dead nodes vary by draw).
    assert round(result.params / 1e6, 1) == 1.2
    assert abs(result.macs / 55.7e6 - 1) < 0.02
    assert result.pool_macs == 49 * result.blocks[-1].outputs_with_input
    assert result.classifier_params == result.blocks[-1].outputs_with_input * 1000


def test_small_classifier_counts_its_budget():
    model = MobileNetV1Like(
        prune_rate=0.85, graph="dnw", image_size=224, output_size=1000, small=True
    )
    result = count_mobilenet(model)
    assert result.classifier_params == result.classifier_macs == 153_600  # 1024000 * 0.15


def test_graph_params_tiny():
    w = torch.zeros(3, 3, 1, 1)
    w[1, 0] = 1.0
    w[2, 0] = 1.0
    w[2, 1] = -1.0  # sources 0 and 1 have out-edges, source 2 none
    assert graph_params(w, prune_rate=0.5) == int(2 * 9 + 9 * 0.5)  # 22


def test_tiny_models_count_the_papers_budget():
    # Table 1 of the paper: about 41k effective parameters. The original's graph count (32,000
    # edges of the budget + 9 per node with an out-edge: all 800 at initialisation) plus the
    # stem and classifier weights and biases (1,152 + 1,010), norms not counted.
    for app in ("static_dnw", "discrete_time_dnw", "continuous_time_random_graph"):
        model = api.build_model(f"apps/small_scale/{app}.yml")
        result = profiling.profile(model)
        assert result.params == 32_000 + 9 * 800 + 1_152 + 1_010 == 41_362, app
        assert result.dense_params == 651_058
    # MACs at 32 x 32: the stem at 16 x 16 and 8 x 8, the graph at 8 x 8 per pass, the classifier
    static = profiling.profile(api.build_model("apps/small_scale/static_dnw.yml"))
    stem = 16 * 16 * 16 * 27 + 8 * 8 * 16 * 9 + 8 * 8 * 32 * 16
    assert static.macs == stem + (32_000 + 9 * 800) * 64 + 100 * 10
    discrete = profiling.profile(api.build_model("apps/small_scale/discrete_time_dnw.yml"))
    assert discrete.macs == stem + 5 * (32_000 + 9 * 800) * 64 + 100 * 10


def test_every_experiment_is_profiled_and_described():
    for app in sorted(glob.glob(os.path.join(ROOT, "apps", "**", "*.yml"), recursive=True)):
        model = api.build_model(app)
        params, macs = api.profile(model)
        assert 0 < params <= sum(p.numel() for p in model.parameters()), app
        assert macs > 0
        lines = profiling.describe(profiling.profile(model))
        assert lines[0].startswith(f"params {params:,} as the paper counts them"), app
