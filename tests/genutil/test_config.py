"""The original command-line grammar and the typed, validated Config."""

import glob

import pytest

from genutil.config import (
    Config,
    check_keys_used,
    load_config,
    parse_argv,
    parse_value,
    run_title,
)
from genutil.errors import ConfigError
from genutil.registry import resolve

APP = "apps/small_scale/static_dnw.yml"


def test_values_parse_as_int_then_float_then_string():
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("0.5") == 0.5
    assert parse_value("1e-4") == 1e-4
    assert parse_value("dnw") == "dnw"
    assert parse_value("-2") == -2


def test_grammar_lists_flags_noflags_gpus_data_dir():
    app, o = parse_argv(
        [
            f"app:{APP}",
            "--gpus",
            "0",
            "1",
            "--data-dir",
            "/d",
            "--lr",
            "0.5",
            "--evaluate",
            "--nonestorov",
            "--topk",
            "1",
            "3",
            "--batch_size",
            "64",
            "--multistep_lr_milestones",
            "5",
        ]
    )
    assert app == APP
    assert o == {
        "gpus": [0, 1],
        "data_dir": "/d",
        "lr": 0.5,
        "evaluate": True,
        "nestorov": False,
        "topk": [1, 3],
        "batch_size": 64,
        "multistep_lr_milestones": 5,
    }
    cfg = load_config(app, o)
    assert cfg.gpus == [0, 1] and cfg.data_dir == "/d" and cfg.lr == 0.5
    assert cfg.evaluate is True and cfg.nestorov is False and cfg.topk == [1, 3]
    assert cfg.multistep_lr_milestones == [5]  # a single value becomes a one-item list


def test_single_gpu_is_a_list():
    _, o = parse_argv([f"app:{APP}", "--gpus", "0"])
    assert o["gpus"] == [0]


def test_yaml_values_and_overrides():
    cfg = load_config(APP)
    assert (cfg.batch_size, cfg.lr, cfg.prune_rate, cfg.dim, cfg.graph) == (
        512,
        0.1,
        0.95,
        800,
        "dnw",
    )
    assert cfg.multistep_lr_milestones == [80, 120] and cfg.seed == 1996
    cfg2 = load_config(APP, {"prune_rate": 0.5, "graph": "random"})
    assert cfg2.prune_rate == 0.5 and cfg2.graph == "random" and cfg.prune_rate == 0.95
    with pytest.raises(Exception):
        cfg2.lr = 1.0  # frozen


def test_run_title_is_the_originals_over_the_keys_that_make_a_run():
    t = run_title(APP, {"gpus": [0], "data_dir": "/d", "lr": 0.5, "dim": 96, "save_dir": "x"})
    assert t == "base=static_dnw_lr=0.5_dim=96"
    # where and how a run executes, what a command does with it, how long it trains: not in it
    same = {"num_epochs": 9, "evaluate": True, "resume": "auto", "workers": 0, "topk": [1, 5],
            "fast_eval": True, "export": "x.pt", "overwrite": True, "progress": False}  # fmt: skip
    assert run_title(APP, {"lr": 0.5, **same}) == "base=static_dnw_lr=0.5"


@pytest.mark.parametrize("path", sorted(glob.glob("apps/**/*.yml", recursive=True)))
def test_every_experiment_file_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config) and cfg.model and cfg.data


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"lrr": 0.1}, ["unknown key 'lrr'", "did you mean 'lr'"]),
        ({"prune_rate": 1.0}, ["prune_rate", "[0, 1)"]),
        ({"prune_rate": -0.1}, ["prune_rate"]),
        ({"batch_size": "big"}, ["batch_size", "integer"]),
        ({"batch_size": 0}, ["batch_size", "positive"]),
        ({"num_epochs": 0}, ["num_epochs"]),
        ({"graph": "dense"}, ["graph", "'dnw'"]),
        ({"nestorov": "maybe"}, ["nestorov", "True or False"]),
        ({"topk": [1, 50]}, ["topk"]),
    ],
)
def test_bad_values_name_the_problem(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config(APP, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yml"))
    with pytest.raises(ConfigError, match="directory"):
        load_config(str(tmp_path))
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(str(empty))
    broken = tmp_path / "broken.yml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(broken))
    unknown = tmp_path / "unknown.yml"
    unknown.write_text(
        "model: models.graphs.neuralgraph:StaticNeuralGraph\n"
        "data: data.digits:Digits\nprune_rat: 0.5\n"
    )
    with pytest.raises(ConfigError, match="did you mean 'prune_rate'"):
        load_config(str(unknown))


def test_long_titles_are_shortened_deterministically():
    long_path = "/very/long/" + "x" * 300 + "/epoch_0.pt"
    t = run_title(APP, {"use_graph": long_path})
    assert len(t) <= 160 and t.startswith("base=static_dnw_use_graph=")
    assert t == run_title(APP, {"use_graph": long_path})
    assert t != run_title(APP, {"use_graph": long_path + "x"})


@pytest.mark.parametrize("path", sorted(glob.glob("apps/**/*.yml", recursive=True)))
def test_every_key_of_every_experiment_file_acts(path):
    cfg = load_config(path)
    assert check_keys_used(cfg, resolve(cfg.model, "model"), resolve(cfg.data, "data")) == []


def test_keys_that_would_act_on_nothing_are_refused_or_said():
    small = "apps/small_scale/continuous_time_dnw.yml"
    classes = lambda c: (resolve(c.model, "model"), resolve(c.data, "data"))  # noqa: E731
    cfg = load_config(small)  # its layers: 5 acts on nothing, but is the authors' value
    assert check_keys_used(cfg, *classes(cfg)) == []
    cfg = load_config(small, {"layers": 7})
    with pytest.raises(ConfigError, match="layers is not read by ContinuousTimeNeuralGraph"):
        check_keys_used(cfg, *classes(cfg))
    # the file's multistep milestones under a command-line cosine schedule: said, not refused
    cfg = load_config("apps/small_scale/static_dnw.yml", {"lr_scheduler": "cosine"})
    notes = check_keys_used(cfg, *classes(cfg))
    assert [n.split()[1] for n in notes] == ["multistep_lr_milestones", "multistep_lr_gamma"]
    cfg = load_config(
        "apps/quickstart/static_dnw.yml", {"multistep_lr_milestones": [3]}
    )  # typed by the user: refused
    with pytest.raises(ConfigError, match="acts only with lr_scheduler multistep"):
        check_keys_used(cfg, *classes(cfg))
    cfg = load_config("apps/medium_scale/mobilenetv1_x25.yml", {"setting": "static"})
    with pytest.raises(ConfigError, match="runs no wiring setting"):
        check_keys_used(cfg, *classes(cfg))


def test_key_equals_value_and_non_finite_numbers_and_duplicates(tmp_path):
    assert parse_argv(["app:x.yml", "--lr=0.05", "--topk=1", "--gpus", "0"])[1] == {
        "lr": 0.05, "topk": 1, "gpus": [0],
    }  # fmt: skip
    for value in (".inf", "-.inf", ".nan", "1e400"):
        path = tmp_path / "e.yml"
        path.write_text(open(APP).read().replace("lr: 0.1", f"lr: {value}"))
        with pytest.raises(ConfigError, match="finite|number"):
            load_config(str(path))
    path.write_text(open(APP).read() + "seed: 3\n")
    with pytest.raises(ConfigError, match="sets 'seed' twice"):
        load_config(str(path))


def test_an_imported_network_reads_its_own_keys(tmp_path):
    """model: any importable network; model_kwargs a mapping (YAML text on the command line);
    the wiring keys act only with wire: True."""
    app = tmp_path / "tv.yml"
    app.write_text(
        "model: torchvision.models:resnet18\nmodel_kwargs: {num_classes: 10}\n"
        "data: data.digits:Digits\nwire: True\nprune_rate: 0.5\nwire_exclude: layer4.*\n"
    )
    cfg = load_config(str(app), {"model_kwargs": "{num_classes: 10, zero_init_residual: true}"})
    assert cfg.model_kwargs == {"num_classes": 10, "zero_init_residual": True}
    assert cfg.wire_exclude == ["layer4.*"] and cfg.wire_include == []
    model_cls, data_cls = resolve(cfg.model, "model"), resolve(cfg.data, "data")
    assert model_cls.__name__ == "torchvision.models:resnet18"
    assert check_keys_used(cfg, model_cls, data_cls) == []
    unwired = load_config(str(app), {"wire": False})
    with pytest.raises(ConfigError, match="prune_rate is not read by torchvision.models:resnet18"):
        check_keys_used(unwired, model_cls, data_cls)
    for bad, match in (
        ({"model_kwargs": "[1, 2]"}, "not a mapping"),
        ({"model_kwargs": "{a: [1"}, "not a mapping"),
        ({"wire_prune_rates": "{layer1.*: 1.5}"}, r"rate of 'layer1\.\*' is 1\.5"),
        ({"wire_include": 3}, "module-name patterns"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_config(str(app), bad)
    rates = load_config(str(app), {"wire_prune_rates": "{layer1.*: 0.25}"}).wire_prune_rates
    assert rates == {"layer1.*": 0.25}
    with pytest.raises(ConfigError, match="not found.*PYTHONPATH"):
        resolve("no_such_package_xyz.nets:Net", "model")
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        resolve("torchvision.models:resnet1", "model")


def test_a_contract_network_outside_the_repository_builds_itself(tmp_path, monkeypatch):
    (tmp_path / "contract_lab.py").write_text(
        "import torch.nn as nn\n"
        "from models.contract import WiredNetwork\n"
        "from models.graphs.edges import make_graph\n"
        "class Net(WiredNetwork):\n"
        "    def __init__(self, rate):\n"
        "        super().__init__()\n"
        "        self.g = make_graph('dnw', rate, 3, 10)\n"
        "    @classmethod\n"
        "    def from_config(cls, cfg):\n"
        "        return cls(cfg.prune_rate)\n"
        "    def forward(self, x):\n"
        "        return self.g(x).mean((2, 3))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = resolve("contract_lab:Net", "model")
    assert cls.__name__ == "Net" and cls.__module__ == "contract_lab"  # its own, not imported
