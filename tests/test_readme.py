"""The README's Python example runs as written, and its stated numbers hold."""

import contextlib
import io
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_blocks(section: str) -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    start = text.index(section)
    end = min(
        (i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1)) if i > 0),
        default=len(text),
    )
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def test_the_python_api_example_runs(monkeypatch):
    (code,) = _python_blocks("### Python API")
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own code
    params, macs, diff = out.getvalue().split()
    assert int(params) == 41_362 and int(macs) > 0 and float(diff) <= 1e-5


def test_the_wire_your_own_network_examples_run(monkeypatch, tmp_path):
    (code,) = _python_blocks("### Wire your own network")
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own code
    layers, params, macs = map(int, out.getvalue().split())
    assert layers == 33 and 0 < params < 700_490 and macs > 0

    from genutil import api
    from genutil.config import check_keys_used, load_config
    from genutil.registry import resolve

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    start = text.index("### Wire your own network")
    (yml,) = re.findall(r"```yaml\n(.*?)```", text[start : text.index("\n## ", start)], re.S)
    app = tmp_path / "wired.yml"
    app.write_text(yml)
    cfg = load_config(str(app))
    assert check_keys_used(cfg, resolve(cfg.model, "model"), resolve(cfg.data, "data")) == []
    model = api.model_from_config(cfg)
    assert len(model.graph_layers()) == 33 and model.wiring()["layers"]["features.1.conv.1"] == {
        "graph": "dnw",
        "prune_rate": 0.8,
    }
