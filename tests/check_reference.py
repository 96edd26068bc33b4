"""Check the project against the fixtures made with the authors' release (tests/fixtures/).

    make check-reference        # = .venv/bin/python tests/check_reference.py

One line per check, "ok" or "FAIL", and exit code 1 if any failed. Everything goes through the
public API (genutil.api), as a user's script would:

- the state-dict keys and shapes, and the parameter count, of the model of every experiment file
  the authors released (tests/fixtures/state_dicts.json);
- the recorded logits of both checkpoint fixtures within 1e-5, and the medium fixture's
  fast-eval logits with the dense and sparse backends within 1e-5;
- the medium fixture's count by the original's formula (52,551,552 MACs, 212,946 params);
- the DNW edge type's forward and straight-through backward on the recorded tiny weights.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)

import torch  # noqa: E402

from genutil import api  # noqa: E402
from models.graphs.edges import DNW  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
_failed: list[str] = []


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        _failed.append(name)


def layouts() -> None:
    with open(os.path.join(FIXTURES, "state_dicts.json")) as fh:
        configs = json.load(fh)["configs"]
    for entry in configs:
        model = api.build_model(entry["yml"])
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        wanted = [
            {row["key"]: row["shape"] for row in entry[key]}
            for key in ("state_dict", "state_dict_after_get_weight")
            if key in entry
        ]
        count = sum(p.numel() for p in model.parameters())
        same = shapes in wanted and count == entry["num_parameters"]
        report(entry["yml"], same, f"{len(shapes)} tensors, {count:,} parameters")


def _fixture(name: str):
    base = os.path.join(FIXTURES, "ckpt", name)
    with open(base + ".json") as fh:
        meta = json.load(fh)
    model = api.build_model(meta["yml"])
    api.load_checkpoint(model, base + ".ckpt.pt")
    x = torch.load(base + ".input.pt", weights_only=True)
    expected = torch.load(base + ".expected.pt", weights_only=True)
    return model.eval(), x, expected, meta


def logits() -> None:
    for name in ("small_static_dnw", "medium_mobilenetv1_dnw_x225"):
        model, x, expected, meta = _fixture(name)
        with torch.no_grad():
            diff = (model(x) - expected["logits"]).abs().max().item()
        report(f"{name} logits", diff <= 1e-5, f"max |diff| {diff:.1e} (bar 1e-5)")
        if "logits_fast_eval" not in expected:
            continue
        for backend in ("dense", "sparse"):
            fast = api.fast_eval(model, backend=backend)
            with torch.no_grad():
                diff = (fast(x) - expected["logits_fast_eval"]).abs().max().item()
            report(f"{name} fast_eval {backend}", diff <= 1e-5, f"max |diff| {diff:.1e}")
        params, macs = api.profile(model)
        want = meta["model_profiling_forced"]
        ok = (params, macs) == (want["n_params"], want["n_macs"])
        report(f"{name} count", ok, f"{params:,} params, {macs:,} MACs")


def straight_through() -> None:
    with open(os.path.join(FIXTURES, "straight_through.json")) as fh:
        cases = [c for c in json.load(fh)["cases"] if c.get("op") == "ChooseTopEdges"]
    worst = 0.0
    for case in cases:
        shape = case["weight_shape"]
        layer = DNW(case["prune_rate"], shape[1], shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(case["weight"]).view(layer.weight.shape))
        out = layer.get_weight()
        (out * torch.tensor(case["upstream_grad"]).view_as(out)).sum().backward()
        forward = torch.tensor(case["forward"]).view_as(out)
        grad = torch.tensor(case["grad_weight"]).view_as(out)
        worst = max(worst, (out - forward).abs().max().item())
        worst = max(worst, (layer.weight.grad - grad).abs().max().item())
    report("DNW forward and backward", bool(cases) and worst == 0.0, f"{len(cases)} cases exact")


if __name__ == "__main__":
    torch.manual_seed(0)
    layouts()
    logits()
    straight_through()
    print(f"{'all checks hold' if not _failed else f'{len(_failed)} failed'}")
    sys.exit(1 if _failed else 0)
