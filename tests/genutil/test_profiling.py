"""Profiling: the original's MACs / params formula, to the unit (reference README 4.5)."""

import dataclasses
import json
import os

import pytest
import torch

from genutil.profiling import graph_params, profile, profile_block, spatial_sizes
from models.graphs.mobilenetv1like import Block, MobileNetV1Like


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
    result = profile(model)
    assert result.macs == meta["model_profiling_forced"]["n_macs"] == 52_551_552
    assert result.params == meta["model_profiling_forced"]["n_params"] == 212_946
    # a DataParallel-style wrapper is looked through
    assert profile(torch.nn.DataParallel(model)).macs == 52_551_552


def test_medium_fixture_node_counts(medium):
    model, meta = medium
    result = profile(model)
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
    result = profile(model, input_size=32)
    assert [b.spatial for b in result.blocks] == [32, 16, 8, 4, 2]
    assert result.params == 212_946  # params do not depend on the resolution
    assert result.macs < profile(model).macs


def test_block_counts_by_hand():
    # inp 2, oup 2, two layers: W is [4 targets, 4 sources]; block prune rate 1 - 8/16 = 0.5
    block = Block(inp=2, oup=2, stride=1, blocks=2, net_prune_rate=0.0, graph="complete")
    assert block.prune_rate == 0.5
    with torch.no_grad():
        block.graph.weight.zero_()
        block.graph.weight[0, 0] = 1.0  # input 0 -> intermediate 0
        block.graph.weight[2, 2] = -1.0  # intermediate 0 -> output 0
        block.graph.weight[1, 2] = 2.0  # intermediate 0 -> intermediate 1: never read
    b = profile_block(block, spatial=4)
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
    assert profile_block(block, spatial=14).macs == int(
        torch.tensor(2816 * 9 * 196) + 2816 * 3072 * (1 - block.prune_rate) * 196
    )


def test_imagenet_random_graph_matches_paper_and_input_size():
    torch.manual_seed(0)
    model = MobileNetV1Like(prune_rate=0.775, graph="random", image_size=224, output_size=1000)
    result = profile(model)
    assert profile(model, input_size=224) == dataclasses.replace(result, input_size=224)
    # Paper: RG x0.225 on ImageNet, 1.2M params and 55.7M MACs (dead nodes vary by draw).
    assert round(result.params / 1e6, 1) == 1.2
    assert abs(result.macs / 55.7e6 - 1) < 0.02
    assert result.pool_macs == 49 * result.blocks[-1].outputs_with_input
    assert result.classifier_params == result.blocks[-1].outputs_with_input * 1000


def test_small_classifier_counts_its_budget():
    model = MobileNetV1Like(
        prune_rate=0.85, graph="dnw", image_size=224, output_size=1000, small=True
    )
    result = profile(model)
    assert result.classifier_params == result.classifier_macs == 153_600  # 1024000 * 0.15


def test_graph_params_tiny():
    w = torch.zeros(3, 3, 1, 1)
    w[1, 0] = 1.0
    w[2, 0] = 1.0
    w[2, 1] = -1.0  # sources 0 and 1 have out-edges, source 2 none
    assert graph_params(w, prune_rate=0.5) == int(2 * 9 + 9 * 0.5)  # 22
