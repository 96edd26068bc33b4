"""Edge types: exact top-k, straight-through vs no-update gradients, masks, targeted dropout.

Numbers come from the original release (tests/fixtures/straight_through.json).
"""

import json
import os

import pytest
import torch

from models.graphs import edges as E


def _cases(reference_dir):
    return json.load(open(os.path.join(reference_dir, "straight_through.json")))["cases"]


def _layer(cls, w, prune_rate, **kw):
    shape = w.shape
    layer = cls(prune_rate, shape[1], shape[0], **kw)
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


def _forward_backward(layer, upstream):
    out = layer.compute_weight()
    (out * upstream).sum().backward()
    return out.detach(), layer.weight.grad


def test_dnw_matches_the_original_forward_and_backward(reference_dir):
    n = 0
    for case in _cases(reference_dir):
        if case["op"] != "ChooseTopEdges":
            continue
        shape = case["weight_shape"]
        w = torch.tensor(case["weight"]).view(shape)
        layer = _layer(E.DNW, w, case["prune_rate"])
        out, grad = _forward_backward(layer, torch.tensor(case["upstream_grad"]).view(shape))
        assert torch.equal(out.flatten(), torch.tensor(case["forward"]))
        assert torch.equal(grad.flatten(), torch.tensor(case["grad_weight"]))  # identity
        assert int((out != 0).sum()) == w.numel() - case["p"]
        n += 1
    assert n == 9  # 5 rates on 4x5, 0.57/0.29 on 10x10, two tie cases


@pytest.mark.parametrize("cls_name", ["DNWNoUpdate", "RandomGraph", "FineTune", "Complete"])
def test_other_types_match_the_original_in_eval(reference_dir, cls_name):
    case = next(c for c in _cases(reference_dir) if c.get("class") == cls_name)
    w = torch.tensor(case["weight"]).view(4, 5, 1, 1)
    layer = _layer(getattr(E, cls_name), w, case["prune_rate"])
    if cls_name == "RandomGraph":
        layer.mask.copy_(torch.tensor(case["mask"]).view(4, 5, 1, 1))
    layer.eval()
    out, grad = _forward_backward(layer, torch.tensor(case["upstream_grad"]).view(4, 5, 1, 1))
    assert torch.equal(out.flatten(), torch.tensor(case["forward"]))
    assert torch.allclose(grad.flatten(), torch.tensor(case["grad_weight"]))
    if cls_name == "FineTune":
        assert torch.equal(layer.mask.flatten(), torch.tensor(case["mask_after"]))


def test_straight_through_reaches_pruned_edges_but_no_update_does_not():
    torch.manual_seed(0)
    w = torch.randn(6, 8, 1, 1)
    up = torch.randn(6, 8, 1, 1)
    _, g_dnw = _forward_backward(_layer(E.DNW, w, 0.75), up)
    layer = _layer(E.DNWNoUpdate, w, 0.75)
    out, g_nu = _forward_backward(layer, up)
    kept = out != 0
    assert torch.equal(g_dnw, up)  # every edge
    assert torch.equal(g_nu[kept], up[kept]) and torch.all(g_nu[~kept] == 0)
    assert int(kept.sum()) == 48 - int(0.75 * 48)


@pytest.mark.parametrize("graph", sorted(E.GRAPH_TYPES))
@pytest.mark.parametrize("rate", [0.0, 0.29, 0.57, 0.9])
def test_exact_edge_counts(graph, rate):
    torch.manual_seed(1)
    layer = E.make_graph(graph, rate, 10, 10, rho=0.5)
    layer.eval()
    with torch.no_grad():
        nonzero = int((layer.get_weight() != 0).sum())
    if graph == "complete":
        assert nonzero == 100
    elif graph == "reg_td":
        assert nonzero == 100 - 10 * int(10 * rate)
    else:
        assert nonzero == 100 - int(rate * 100)  # 0.57 -> 56 pruned, 0.29 -> 28 (float64 rule)


def test_ties_keep_exactly_the_budget():
    w = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9]).view(2, 4, 1, 1)
    for rate in (0.25, 0.5, 0.75):
        keep = E.topk_mask(w.abs(), 8 - int(rate * 8))
        assert int(keep.sum()) == 8 - int(rate * 8)
        assert keep.flatten()[0] and keep.flatten()[7]


def test_topk_equals_full_sort_without_ties():
    g = torch.Generator().manual_seed(3)
    for n_keep in (1, 17, 500, 999):
        s = torch.randn(1000, generator=g)
        ref = torch.zeros(1000, dtype=torch.bool)
        ref[s.argsort(descending=True)[:n_keep]] = True
        assert torch.equal(E.topk_mask(s, n_keep), ref)


def test_random_mask_respects_allowed_region():
    allowed = torch.tril(torch.ones(20, 20, dtype=torch.bool))
    layer = E.make_graph("random", 0.6, 20, 20, allowed=allowed)
    mask = layer.mask.view(20, 20).bool()
    assert not mask[~allowed].any()
    assert int(mask.sum()) == 400 - int(0.6 * 400)  # 210 allowed >= 160 kept


def test_targeted_dropout_train_and_eval_keep_the_sign():
    torch.manual_seed(0)
    w = torch.randn(8, 10, 1, 1)
    layer = _layer(E.TargetedDropout, w, 0.5, rho=0.5)
    candidates = layer.candidates()
    assert int(candidates.sum()) == 40
    layer.eval()
    with torch.no_grad():
        out = layer.get_weight()
    assert torch.equal(out[~candidates], w[~candidates])  # sign kept (the original lost it)
    assert torch.all(out[candidates] == 0)
    layer.train()
    dropped = []
    for _ in range(200):
        out = layer.compute_weight().detach()
        assert torch.equal(out[~candidates], w[~candidates])
        dropped.append(float((out[candidates] == 0).float().mean()))
    assert 0.45 < sum(dropped) / len(dropped) < 0.55  # candidates dropped with prob rho
    orig = _layer(E.TargetedDropout, w, 0.5, rho=0.5, abs_weights=True).eval()
    with torch.no_grad():
        assert torch.all(orig.get_weight() >= 0)  # the original's behaviour, opt-in


def test_reg_td_prunes_per_row():
    torch.manual_seed(0)
    layer = _layer(E.RegularTargetedDropout, torch.randn(4, 10, 1, 1), 0.3, rho=1.0).eval()
    with torch.no_grad():
        out = layer.get_weight().view(4, 10)
    assert torch.equal((out == 0).sum(1), torch.full((4,), 3))


def test_fine_tune_freezes_the_first_wiring():
    torch.manual_seed(0)
    layer = E.FineTune(0.5, 4, 4)
    first = (layer.compute_weight() != 0).clone()
    with torch.no_grad():
        layer.weight.mul_(torch.randn(4, 4, 1, 1))
    assert torch.equal(layer.compute_weight() != 0, first & (layer.weight != 0))
    state = layer.state_dict()
    fresh = E.FineTune(0.5, 4, 4)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.mask, layer.mask)


def test_one_sgd_step_swaps_an_edge_in_when_the_gradient_says_so():
    w = torch.tensor([[1.0, 0.5, 0.4, -0.3]]).view(1, 4, 1, 1)
    layer = _layer(E.DNW, w, 0.5)  # keeps 1.0 and 0.5
    x = torch.tensor([0.0, 0.0, 0.0, -5.0]).view(1, 4, 1, 1)  # only the pruned edge's input
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    before = layer.compute_weight().detach() != 0
    layer(x).sum().backward()  # the straight-through gradient reaches the unused edge: -5
    opt.step()  # -0.3 -> 4.7: it enters the top 2 and pushes 0.5 out
    after = layer.compute_weight().detach() != 0
    assert before.flatten().tolist() == [True, True, False, False]
    assert after.flatten().tolist() == [True, False, False, True]


def test_eval_weight_is_cached_until_the_weight_changes():
    layer = E.DNW(0.5, 4, 4).eval()
    with torch.no_grad():
        a = layer.get_weight()
        assert layer.get_weight() is a
        layer.weight.add_(1.0)
        b = layer.get_weight()
    assert b is not a and torch.equal(b, layer.compute_weight().detach())
