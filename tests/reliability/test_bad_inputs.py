"""Bad inputs through ``python main.py`` (issue 6, item 5): every row exits 2 with exactly one
line on stderr (``error: ...`` naming the problem), no traceback, and changes no existing file.

Every row runs against its own copy of a finished run's checkpoint folder (``save_dir``), hashed
before and after; the shared inputs (experiment files, checkpoints, data) are hashed around the
whole table. Rows run two at a time (most stop before torch is even imported).
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests.data.fakes import make_cifar10, make_imagenet
from tests.reliability.util import QUICKSTART, ROOT, run_main, tree_hash

pytestmark = pytest.mark.slow  # end to end: main.py or its parts, in subprocesses

EXISTING = [QUICKSTART, "--dim", "160", "--feature_dim", "32", "--num_epochs", "1", "--noprogress"]
QS = Path(ROOT, "apps", "quickstart", "static_dnw.yml").read_text()
# an imported network (models/wired.py) on the bundled digits
WIRED = """model: {model}
model_kwargs:
  num_classes: 10
{extra}data: data.digits:Digits
workers: 0
num_epochs: 1
image_size: 32
wire: True
graph: dnw
prune_rate: 0.5
"""
IMAGENET_APP = "app:apps/large_scale/mobilenetv1_dnw_x225.yml"
CIFAR_APP = "app:apps/small_scale/static_dnw.yml"


@dataclass
class Row:
    name: str
    argv: list  # "{in}" is replaced by the inputs folder, "{ck}" by the run's checkpoint file
    expect: list  # words the error line must contain (case-insensitive)
    own_dirs: bool = True  # add --save_dir/--log_dir of the row's own folder
    fresh_dirs: bool = False  # ... an empty one instead of a copy of the finished run
    files: dict = field(default_factory=dict)  # name -> text of an input file to write


def _yml(text: str) -> dict:
    return {"exp.yml": text}


ROWS = [
    Row(
        "yaml syntax error",
        ["app:{in}/exp.yml"],
        ["not valid YAML", "at line"],
        files=_yml("model: models.graphs.neuralgraph:StaticNeuralGraph\ndata: [digits\n"),
    ),
    Row("yaml not a mapping", ["app:{in}/exp.yml"], ["not a mapping"], files=_yml("- a\n- b\n")),
    Row("empty experiment file", ["app:{in}/exp.yml"], ["is empty"], files=_yml("")),
    Row(
        "comment-only experiment file",
        ["app:{in}/exp.yml"],
        ["is empty"],
        files=_yml("# nothing\n"),
    ),
    Row(
        "binary experiment file",
        ["app:{in}/exp.yml"],
        ["exp.yml"],
        files={"exp.yml": b"\xff\xfe\x00\x9c garbage"},
    ),
    Row(
        "wrong type in yml",
        ["app:{in}/exp.yml"],
        ["batch_size", "integer"],
        files=_yml(QS.replace("batch_size: 64", "batch_size: lots")),
    ),
    Row(
        "list where a number goes",
        ["app:{in}/exp.yml"],
        ["lr=", "number"],
        files=_yml(QS.replace("lr: 0.1", "lr: [0.1, 0.2]")),
    ),
    Row("wrong type on the command line", [QUICKSTART, "--lr", "fast"], ["lr=", "number"]),
    Row("float for an integer", [QUICKSTART, "--seed", "1.5"], ["seed", "integer"]),
    Row(
        "unknown key in yml",
        ["app:{in}/exp.yml"],
        ["unknown key 'bach_size'", "batch_size"],
        files=_yml(QS + "bach_size: 64\n"),
    ),
    Row(
        "unknown key on the command line",
        [QUICKSTART, "--num_epoch", "3"],
        ["unknown key 'num_epoch'", "num_epochs"],
    ),
    Row("stray positional argument", [QUICKSTART, "oops"], ["unexpected argument 'oops'"]),
    Row("no experiment file", ["--lr", "0.1"], ["no experiment file", "app:"]),
    Row("missing experiment file", ["app:apps/nope.yml"], ["apps/nope.yml", "not found"]),
    Row("experiment path is a directory", ["app:apps/quickstart"], ["is a directory"]),
    Row("negative batch size", [QUICKSTART, "--batch_size", "-4"], ["batch_size", "positive"]),
    Row("zero batch size", [QUICKSTART, "--batch_size", "0"], ["batch_size", "positive"]),
    Row("zero epochs", [QUICKSTART, "--num_epochs", "0"], ["num_epochs", "positive"]),
    Row("negative learning rate", [QUICKSTART, "--lr", "-0.1"], ["lr", "positive"]),
    Row("prune_rate 1.0", [QUICKSTART, "--prune_rate", "1.0"], ["prune_rate", "[0, 1)"]),
    Row("unknown edge type", [QUICKSTART, "--graph", "dense"], ["graph", "'dnw'"]),
    Row("topk above the classes", [QUICKSTART, "--topk", "1", "20"], ["topk", "output_size"]),
    Row(
        "model the class cannot build",
        [QUICKSTART, "--image_size", "10"],
        ["cannot be built", "image_size"],
    ),
    Row(
        "unknown model class",
        ["app:{in}/exp.yml"],
        ["no class NoSuchGraph", "StaticNeuralGraph"],
        files=_yml(QS.replace(":StaticNeuralGraph", ":NoSuchGraph")),
    ),
    Row(
        "model module that does not exist",
        ["app:{in}/exp.yml"],
        ["no_such_lab.nets", "not found", "PYTHONPATH"],
        files=_yml(WIRED.format(model="no_such_lab.nets:Net", extra="")),
    ),
    Row(
        "model_kwargs the network does not take",
        ["app:{in}/exp.yml"],
        ["model_kwargs", "widht"],
        files=_yml(WIRED.format(model="torchvision.models:resnet18", extra="  widht: 2\n")),
    ),
    Row(
        "wire a network without a 1x1 convolution",
        ["app:{in}/exp.yml"],
        ["no 1x1 convolution"],
        files=_yml(WIRED.format(model="torchvision.models:alexnet", extra="")),
    ),
    Row(
        "wire with a key the unwired network does not read",
        ["app:{in}/exp.yml", "--wire", "False"],
        ["graph is not read", "remove graph"],
        files=_yml(WIRED.format(model="torchvision.models:resnet18", extra="")),
    ),
    Row(
        "model_kwargs that are not a mapping",
        ["app:{in}/exp.yml", "--model_kwargs", "[1, 2]"],
        ["model_kwargs", "not a mapping"],
        files=_yml(WIRED.format(model="torchvision.models:resnet18", extra="")),
    ),
    Row(
        "an imported network whose outputs do not fit output_size",
        ["app:{in}/exp.yml", "--model_kwargs", "{num_classes: 1000}"],
        ["(2, 1000)", "num_classes"],
        files=_yml(WIRED.format(model="torchvision.models:resnet18", extra="")),
    ),
    Row(
        "data module outside data.",
        ["app:{in}/exp.yml"],
        ["outside the data/"],
        files=_yml(QS.replace("data.digits:Digits", "genutil.run:CheckpointHook")),
    ),
    Row(
        "missing data folder",
        [IMAGENET_APP, "--data-dir", "{in}/no_such_dir", "--workers", "0"],
        ["ImageNet", "not found", "no_such_dir"],
    ),
    Row(
        "data folder in the wrong layout",
        [CIFAR_APP, "--data-dir", "{in}/cifar_bad", "--workers", "0"],
        ["data_batch_3"],
    ),
    Row("resume from a missing file", EXISTING + ["--resume", "{in}/nope.pt"], ["not found"]),
    Row("resume from a directory", EXISTING + ["--resume", "{in}"], ["is a directory"]),
    Row("evaluate without resume", EXISTING + ["--evaluate"], ["--evaluate", "--resume <file>"]),
    Row("truncated checkpoint", EXISTING + ["--resume", "{in}/truncated.pt"], ["truncated"]),
    Row("text file as checkpoint", EXISTING + ["--resume", "{in}/notes.pt"], ["not a"]),
    Row(
        "checkpoint holding a tensor",
        EXISTING + ["--resume", "{in}/tensor.pt"],
        ["Tensor, not a dict"],
    ),
    Row(
        "checkpoint trained with other settings",
        [QUICKSTART, "--noprogress", "--resume", "{ck}"],
        ["trained with dim 160", "this command has 224", "--override_checkpoint"],
    ),
    Row(
        "checkpoint of another shape, settings overridden",
        [QUICKSTART, "--noprogress", "--resume", "{ck}", "--override_checkpoint"],
        ["does not fit this model", "pass the experiment file"],
        fresh_dirs=True,
    ),
    Row(
        "planted pickle that would run code",
        EXISTING + ["--resume", "{in}/evil.pt"],
        ["refused", "not weights"],
    ),
    Row("planted plain pickle", EXISTING + ["--resume", "{in}/evil_plain.pt"], ["refused"]),
    Row("use_graph without fine_tune", EXISTING + ["--use_graph", "{ck}"], ["fine_tune"]),
    Row(
        "unwritable save_dir (a file)",
        EXISTING + ["--save_dir", "{in}/notes.pt/ck"],
        ["save_dir", "is a file"],
        own_dirs=False,
    ),
    Row(
        "fresh start over an existing run", EXISTING, ["already holds checkpoints", "--resume auto"]
    ),
    # nothing lost (issue 14): keys that would act on nothing, values out of range
    Row("negative seed", [QUICKSTART, "--seed", "-1"], ["seed", "2**32"]),
    Row("seed past numpy's range", [QUICKSTART, "--seed", "4294967296"], ["seed", "2**32"]),
    Row("weight decay overflowing", [QUICKSTART, "--weight_decay", "1e300"], ["weight_decay"]),
    Row("batch size past an int", [QUICKSTART, "--batch_size", "10" * 10], ["batch_size"]),
    Row(
        "infinite number in yml",
        ["app:{in}/exp.yml"],
        ["lr=inf", "finite"],
        files=_yml(QS.replace("lr: 0.1", "lr: .inf")),
    ),
    Row(
        "a key twice in yml",
        ["app:{in}/exp.yml"],
        ["sets 'lr' twice", "keep one"],
        files=_yml(QS + "lr: 0.3\n"),
    ),
    Row(
        "setting the model does not run",
        [QUICKSTART, "--setting", "discrete_time"],
        ["setting: discrete_time", "static"],
    ),
    Row("key the model does not read", [QUICKSTART, "--width_mult", "0.5"], ["width_mult"]),
    Row("key of another edge type", [QUICKSTART, "--rho", "0.3"], ["rho", "td"]),
    Row("prune switched off", [QUICKSTART, "--noprune"], ["prune", "prune_rate 0"]),
    Row("val_resize the data ignores", [QUICKSTART, "--val_resize", "64"], ["val_resize"]),
    Row(
        "more classes than outputs",
        [IMAGENET_APP, "--data-dir", "{in}/inet", "--workers", "0", "--output_size", "10"],
        ["12 classes", "output_size is 10"],
    ),
    Row(
        "evaluate at another prune rate",
        EXISTING + ["--resume", "{ck}", "--evaluate", "--prune_rate", "0.5"],
        ["trained with prune_rate 0.9", "--override_checkpoint"],
    ),
    Row(
        "resume into another run's folder",
        EXISTING + ["--resume", "{in}/other_run.pt"],
        ["holds checkpoints of another run"],
    ),
    Row(
        "momentum of the wrong shape",
        EXISTING + ["--resume", "{in}/bad_momentum.pt"],
        ["optimizer state", "does not fit"],
        fresh_dirs=True,
    ),
    Row("overwrite and resume", EXISTING + ["--overwrite", "--resume", "auto"], ["drop one"]),
    Row(
        "export over an existing file",
        EXISTING + ["--resume", "{ck}", "--evaluate", "--fast_eval", "--export", "{in}/notes.pt"],
        ["already exists", "--overwrite"],
    ),
    Row(
        "export over the checkpoint being read",
        EXISTING
        + ["--resume", "{ck}", "--evaluate", "--fast_eval", "--export", "{ck}", "--overwrite"],
        ["is the checkpoint being read"],
    ),
    Row(
        "export onto a folder",
        EXISTING + ["--resume", "{ck}", "--evaluate", "--fast_eval", "--export", "{in}"],
        ["is a folder"],
    ),
    Row(
        "export below a file",
        EXISTING
        + ["--resume", "{ck}", "--evaluate", "--fast_eval", "--export", "{in}/notes.pt/x.pt"],
        ["cannot be written"],
    ),
]


class _RunsCode:
    """Unpickling this creates a file: the proof that a planted checkpoint ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("bad_inputs")
    inputs, existing = base / "in", base / "existing"
    inputs.mkdir()
    result = run_main(
        EXISTING + ["--save_dir", str(existing / "ck"), "--log_dir", str(existing / "runs")]
    )
    assert result.returncode == 0, result.stderr
    (folder,) = (existing / "ck").iterdir()
    data = (folder / "last.pt").read_bytes()
    (inputs / "truncated.pt").write_bytes(data[: len(data) // 2])
    (inputs / "notes.pt").write_text("these are my notes, not a checkpoint\n")
    torch.save(torch.zeros(3), inputs / "tensor.pt")
    marker = base / "pwned"
    torch.save({"model": {}, "x": _RunsCode(str(marker))}, inputs / "evil.pt")
    with open(inputs / "evil_plain.pt", "wb") as fh:
        import pickle

        pickle.dump({"model": {}, "x": _RunsCode(str(marker))}, fh, protocol=4)
    ckpt = torch.load(folder / "last.pt", weights_only=True)
    torch.save(ckpt, inputs / "other_run.pt")
    state = ckpt["optimizer"]["state"]
    first = next(iter(state))
    state[first]["momentum_buffer"] = torch.zeros(3, 3)
    torch.save(ckpt, inputs / "bad_momentum.pt")
    make_imagenet(inputs / "inet", classes=12, per_class=1)
    bad = make_cifar10(inputs / "cifar_bad", n_per_batch=10)
    (bad / "data_batch_3").write_bytes(b"\x80\x02not a batch")
    return {
        "base": base,
        "inputs": inputs,
        "existing": existing,
        "ck": folder / "last.pt",
        "marker": marker,
    }


def _run_row(index: int, row: Row, world: dict) -> tuple:
    own = world["base"] / "rows" / str(index)
    for name, content in row.files.items():
        (own / "in").mkdir(parents=True, exist_ok=True)
        path = own / "in" / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    shutil.copytree(world["existing"], own / "run")
    inputs = own / "in" if row.files else world["inputs"]
    argv = [a.replace("{in}", str(inputs)).replace("{ck}", str(world["ck"])) for a in row.argv]
    if row.own_dirs:
        run = own / ("fresh" if row.fresh_dirs else "run")
        argv += ["--save_dir", str(run / "ck"), "--log_dir", str(run / "runs")]
    before = tree_hash(str(own))
    result = run_main(argv, timeout=180)
    return result, before, tree_hash(str(own))


def test_bad_input_table(world):
    assert len(ROWS) >= 50
    shared = tree_hash(str(world["base"]))
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda item: _run_row(item[0], item[1], world), enumerate(ROWS)))
    failures = []
    for row, (result, before, after) in zip(ROWS, outcomes):
        lines = result.stderr.strip().splitlines()
        problems = []
        if result.returncode != 2:
            problems.append(f"exit {result.returncode}")
        if "Traceback" in result.stderr or len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"stderr {result.stderr[-600:]!r}")
        missing = [w for w in row.expect if w.lower() not in result.stderr.lower()]
        if missing:
            problems.append(f"line lacks {missing}: {result.stderr.strip()!r}")
        if before != after:
            problems.append(
                f"files changed: {sorted(set(before.items()) ^ set(after.items()))[:4]}"
            )
        if problems:
            failures.append(f"{row.name}: {'; '.join(problems)}")
    after_all = {
        k: v for k, v in tree_hash(str(world["base"])).items() if not k.startswith("rows" + os.sep)
    }
    assert after_all == shared, "a row changed a shared input"
    assert not world["marker"].exists(), "a planted pickle ran code"
    assert not failures, "\n".join(failures)
