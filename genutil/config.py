"""The experiment configuration: the original command-line grammar -> one frozen, typed Config.

Grammar (docs/faithfulness.md, "The command line"): ``app:<file.yml>`` names the experiment; every
later ``--key v`` overrides ``key``; a value that parses as int, else float, stays that, else is a
string; ``--key v1 v2`` gives a list; ``--key`` alone sets True and ``--nokey`` sets False.
``--gpus`` and ``--data-dir`` select devices and the data root. The run title is
``base=<yml name>_key=value_...`` over the overrides, as in the original.

The Config is built once (in main.py or genutil.api) and handed to whatever needs it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml

from genutil.errors import ConfigError

__all__ = [
    "Config",
    "NOT_IN_TITLE",
    "parse_argv",
    "parse_value",
    "load_config",
    "run_title",
    "config_help",
    "config_from_dict",
    "check_keys_used",
    "keys_read",
]


def _schedules() -> tuple[str, ...]:
    from genutil.schedules import SCHEDULES  # noqa: PLC0415

    return tuple(SCHEDULES)


def _edge_types() -> tuple[str, ...]:
    from models.graphs.edges import GRAPH_TYPES  # noqa: PLC0415  (imports torch: on demand)

    return tuple(GRAPH_TYPES)


def _choices(f: dataclasses.Field) -> Optional[tuple]:
    """A field's allowed values: a tuple, or read from a registry (a function) when asked."""
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def _f(default: Any, help: str, choices: Any = None) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    """Every key an experiment file or the command line may set. Names are the original's."""

    # what to run
    model: str = _f(
        "",
        "the network: 'module.path:Name', a class under models., or any importable class or "
        "function that returns an nn.Module (e.g. torchvision.models:mobilenet_v2)",
    )
    model_kwargs: dict = _f(
        {}, "a network named outside models.: its keyword arguments (a mapping, YAML on the CLI)"
    )
    wire: bool = _f(
        False,
        "a network named outside models.: make its 1x1 convolutions graph layers of edge type "
        "graph at prune_rate (models/wired.py)",
    )
    wire_include: list = _f([], "wire: only the 1x1 convolutions these name patterns match")
    wire_exclude: list = _f([], "wire: leave out the 1x1 convolutions these name patterns match")
    wire_prune_rates: dict = _f(
        {}, "wire: {name pattern: prune rate} for some layers (first match; others: prune_rate)"
    )
    data: str = _f("", "dataset class as 'module.path:ClassName' under data.")
    # data
    data_dir: str = _f("./datasets", "root folder of the datasets (--data-dir)")
    batch_size: int = _f(128, "training batch size (all GPUs together)")
    test_batch_size: int = _f(0, "evaluation batch size; 0 means batch_size")
    workers: int = _f(4, "data-loading worker processes")
    image_size: int = _f(32, "input image side in pixels")
    val_resize: int = _f(
        0,
        "ImageNet evaluation: resize the short side to this before the centre crop (0: "
        "image_size / 0.875); the other datasets evaluate at image_size",
    )
    in_channels: int = _f(3, "input image channels")
    output_size: int = _f(10, "number of classes")
    train_subset: int = _f(0, "train on a random subset of this many images (0: all)")
    download: bool = _f(True, "download the dataset when it is missing (CIFAR-10, Fashion-MNIST)")
    # optimisation
    lr: float = _f(0.1, "base learning rate")
    lr_scheduler: str = _f("cosine", "learning-rate schedule", _schedules)
    multistep_lr_milestones: list = _f([], "epochs at which multistep multiplies lr by gamma")
    multistep_lr_gamma: float = _f(0.1, "multistep factor")
    exp_decaying_lr_gamma: float = _f(0.97, "exp_decaying factor per epoch")
    optimizer: str = _f("sgd", "optimizer", ("sgd",))
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(1e-4, "SGD weight decay")
    nestorov: bool = _f(False, "Nesterov momentum (the original's spelling)")
    num_epochs: int = _f(160, "training epochs")
    topk: list = _f([1, 5], "top-k accuracies to report")
    seed: int = _f(0, "seed of python, numpy and torch (the original always used 0)")
    # the wiring
    graph: str = _f("dnw", "edge type of every graph layer", _edge_types)
    setting: str = _f(
        "static",
        "tiny classifiers: static | discrete_time | continuous",
        ("static", "discrete_time", "continuous"),
    )
    prune_rate: float = _f(0.0, "fraction of edges removed, in [0, 1)")
    prune: bool = _f(
        True,
        "the original's flag, which changes nothing: graphs prune to prune_rate (False: refused)",
    )
    dim: int = _f(800, "tiny classifiers: number of nodes")
    downsample_dim: int = _f(32, "tiny classifiers: channels out of the stem")
    feature_dim: int = _f(100, "tiny classifiers: output nodes read by the classifier")
    layers: int = _f(5, "tiny classifiers: node groups (static) or time steps (discrete)")
    small: bool = _f(False, "MobileNetV1Like: the classifier is itself a pruned graph")
    width_mult: float = _f(1.0, "MobileNetV1CIFAR width multiplier")
    rho: Union[float, str] = _f(0.5, "targeted dropout drop probability, or 'gamma' (= prune_rate)")
    td_abs: bool = _f(False, "td/reg_td: train on |w| as the original did (sign lost)")
    ode_inplace_relu: bool = _f(
        True,
        "continuous model: clamp the solver state in place as the original (docs/faithfulness.md)",
    )
    use_graph: str = _f("", "fine_tune: checkpoint whose wiring (and weights) to start from")
    use_init: str = _f("", "fine_tune: checkpoint whose weights to start from (lottery ticket)")
    # run control
    resume: str = _f("", "checkpoint to continue from ('auto': the newest of this run)")
    overwrite: bool = _f(
        False,
        "replace outputs that exist: a fresh run's own folders, --export's file (never the "
        "checkpoint being read)",
    )
    override_checkpoint: bool = _f(
        False,
        "use the command line's model and wiring keys where a checkpoint's stored config differs "
        "(e.g. fine-tune at another prune_rate); without it such a difference is refused",
    )
    evaluate: bool = _f(False, "only evaluate (with --resume)")
    save_dir: str = _f("./checkpoints", "checkpoint root; the run's files go to save_dir/title")
    log_dir: str = _f("./runs", "TensorBoard root; the run's events go to log_dir/title")
    skip_profiling: bool = _f(True, "do not count MACs/params")
    fast_eval: bool = _f(False, "remove dead nodes before evaluating")
    use_dgl: bool = _f(False, "run the graphs with DGL (same as graph_backend: dgl)")
    graph_backend: str = _f(
        "auto",
        "fast_eval edge execution; auto: the fastest exact one for the device (sparse on the "
        "CPU, dense on CUDA; bench/README.md)",
        ("auto", "dense", "sparse", "dgl"),
    )
    export: str = _f(
        "",
        "with --fast_eval: write the shrunk model to this file (.pt2: torch.export with its "
        "metadata; .pt: TorchScript)",
    )
    results_file: str = _f(
        "",
        "with --evaluate: write the results as JSON here (default: eval_<checkpoint>.json "
        "beside the checkpoint, never over an existing file)",
    )
    title: str = _f(
        "", "the run's name (its folders); default: base=<file name>_key=value over the overrides"
    )
    gpus: list = _f([], "GPU ids; empty: all visible GPUs, or the CPU when there is none")
    amp: str = _f("", "mixed precision on CUDA: '' | bf16 | fp16", ("", "bf16", "fp16"))
    compile: bool = _f(False, "torch.compile the model")
    channels_last: bool = _f(False, "channels_last memory format on CUDA")
    progress: bool = _f(True, "show a progress bar per epoch")
    persistent_workers: bool = _f(
        False,
        "keep data-loader workers across epochs (faster epoch starts; a resumed run then "
        "draws other augmentations than an unbroken one)",
    )
    keep_freed_memory: bool = _f(
        True,
        "glibc: keep freed memory for the next step instead of returning it to the kernel "
        "(no page faults per step; the process keeps its peak memory; genutil/allocator.py)",
    )
    fast_paths: bool = _f(
        True,
        "the models' forwards arranged for speed (models/graphs/fastpath.py); off: the "
        "reference forwards in plain torch ops, same math",
    )
    native_kernels: bool = _f(
        True,
        "CPU: the tiny models' node ops (norm, ReLU, depthwise) and static graph as C kernels, "
        "built once with the system C compiler (models/graphs/native); off: torch ops, same math",
    )
    # not keys: the keys the experiment file and the command line set, and the command line's
    # alone (load_config)
    set_keys: tuple = field(default=(), metadata={"help": "", "internal": True})
    cli_keys: tuple = field(default=(), metadata={"help": "", "internal": True})


_FIELDS = {f.name: f for f in dataclasses.fields(Config) if not f.metadata.get("internal")}
_MAX_TITLE = 160
_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False}
# A run's identity is its title: the experiment file and the overrides that change what is
# trained. Keys that say where or how a run executes, what a command does with it, or how long it
# trains (num_epochs: a finished run is extended by --resume auto --num_epochs N) are left out,
# so they never change where a run lives, and may differ when a run is resumed (the changes are
# printed then). docs/checkpoints.md, "A run's identity".
NOT_IN_TITLE = (
    "gpus",
    "data_dir",
    "save_dir",
    "log_dir",
    "resume",
    "evaluate",
    "fast_eval",
    "use_dgl",
    "graph_backend",
    "export",
    "skip_profiling",
    "num_epochs",
    "test_batch_size",
    "topk",
    "workers",
    "progress",
    "persistent_workers",
    "keep_freed_memory",
    "native_kernels",
    "fast_paths",
    "amp",
    "compile",
    "channels_last",
    "download",
    "overwrite",
    "override_checkpoint",
    "results_file",
    "title",
)


def parse_value(token: str) -> Union[int, float, str]:
    """int if it parses as int, else float, else the string (the original's rule)."""
    for cast in (int, float):
        try:
            return cast(token)
        except ValueError:
            pass
    return token


def _is_key(token: str) -> bool:
    # '--x' is a key; '-3' is a (negative) value, unlike the original which took it for a key.
    return token.startswith("--") and len(token) > 2


def parse_argv(argv: list[str]) -> tuple[Optional[str], dict[str, Any]]:
    """Split ``argv`` (without the program name) into the app path and the overrides."""
    app = None
    rest = list(argv)
    if rest and rest[0].startswith("app:"):
        app = rest.pop(0)[4:]
    # --key=value is --key value (one value; the value may contain '=')
    rest = [part for t in rest for part in (t.split("=", 1) if _is_key(t) and "=" in t else [t])]
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        token = rest[i]
        if not _is_key(token):
            raise ConfigError(
                f"unexpected argument {token!r}: options are written '--key value' "
                "(and the experiment file first, as app:<file.yml>)"
            )
        key = token[2:].replace("-", "_")
        j = i + 1
        while j < len(rest) and not _is_key(rest[j]):
            j += 1
        values = [parse_value(v) for v in rest[i + 1 : j]]
        if not values:
            if key.startswith("no") and key not in _FIELDS and key[2:] in _FIELDS:
                overrides[key[2:]] = False
            else:
                overrides[key] = True
        elif len(values) == 1 and key != "gpus":
            overrides[key] = values[0]
        else:
            overrides[key] = values
        i = j
    return app, overrides


def _closest(key: str) -> str:
    match = difflib.get_close_matches(key, list(_FIELDS), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Convert ``value`` to the type of field ``name`` or raise a one-line ConfigError."""
    f = _FIELDS[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    where = f"{name}={value!r} ({origin})"

    def bad(expect: str) -> ConfigError:
        return ConfigError(f"{where} is not {expect}: set {name} to {expect}")

    if name == "rho":
        if value == "gamma":
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
            return float(value)
        raise bad("a number in [0, 1] or 'gamma'")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        if value in (0, 1) and not isinstance(value, float):
            return bool(value)
        raise bad("True or False")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad("an integer")
    if isinstance(default, float):
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads '5e-5' as a string
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise bad("a finite number")
            return float(value)
        raise bad("a number")
    if isinstance(default, dict):
        return _coerce_mapping(name, value, where)
    if name in ("wire_include", "wire_exclude"):
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) and v for v in items):
            raise bad("a list of module-name patterns (strings)")
        return list(items)
    if isinstance(default, list):
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise bad("a list of integers")
        return list(items)
    if value is None:
        return default
    if isinstance(value, (dict, list)):
        raise bad("a string")
    value = str(value)
    choices = _choices(f)
    if choices and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{where} is not one of {allowed}: set {name} to one of them")
    return value


def _coerce_mapping(name: str, value: Any, where: str) -> dict:
    """A mapping key: from the experiment file as it is, from the command line as YAML text
    (``--model_kwargs "{num_classes: 10}"``)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else {}
        except yaml.YAMLError:
            value = "not YAML"
    if value is None:
        value = {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(
            f"{where} is not a mapping of names to values: write it as {{key: value, ...}}"
        )
    if name == "wire_prune_rates":
        for pattern, rate in value.items():
            ok = isinstance(rate, (int, float)) and not isinstance(rate, bool)
            if not ok or not 0 <= rate < 1:
                raise ConfigError(
                    f"{where}: the rate of {pattern!r} is {rate!r}: give a number in [0, 1)"
                )
        return {k: float(v) for k, v in value.items()}
    return dict(value)


def _validate(cfg: Config) -> None:
    checks = [
        (0 <= cfg.prune_rate < 1, "prune_rate", "a number in [0, 1)"),
        (0 < cfg.batch_size < 2**31, "batch_size", "a positive integer below 2**31"),
        (
            0 <= cfg.test_batch_size < 2**31,
            "test_batch_size",
            "0 or a positive integer below 2**31",
        ),
        (cfg.num_epochs > 0, "num_epochs", "a positive integer"),
        (cfg.workers >= 0, "workers", "0 or more"),
        (cfg.lr > 0, "lr", "a positive number"),
        (cfg.image_size > 0, "image_size", "a positive integer"),
        (cfg.output_size > 0, "output_size", "a positive integer"),
        (all(k > 0 for k in cfg.topk) and cfg.topk, "topk", "a list of positive integers"),
        (cfg.momentum >= 0, "momentum", "0 or more"),
        (cfg.weight_decay >= 0, "weight_decay", "0 or more"),
        (cfg.train_subset >= 0, "train_subset", "0 (all) or a positive integer"),
        (0 <= cfg.seed < 2**32, "seed", "an integer from 0 to 2**32 - 1 (numpy's range)"),
        (cfg.weight_decay < 1, "weight_decay", "a number below 1 (e.g. 1e-4)"),
        (cfg.momentum < 1, "momentum", "a number in [0, 1)"),
        (cfg.val_resize >= 0, "val_resize", "0 (image_size / 0.875) or a positive integer"),
        (
            cfg.prune,
            "prune",
            "True: the original's flag changes nothing; for every edge set prune_rate 0 instead",
        ),
    ]
    for ok, name, expect in checks:
        if not ok:
            raise ConfigError(f"{name}={getattr(cfg, name)!r} is invalid: set {name} to {expect}")
    if cfg.title and ("/" in cfg.title or cfg.title in (".", "..") or len(cfg.title) > 200):
        raise ConfigError(f"title={cfg.title!r} cannot name a folder: use a name without '/'")
    if max(cfg.topk) > cfg.output_size:
        raise ConfigError(
            f"topk={cfg.topk} asks for more classes than output_size={cfg.output_size}: lower topk"
        )


class _DuplicateKey(Exception):
    """(key, first line, second line) of a key a YAML mapping holds twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that holds a key twice (PyYAML keeps the last
    value silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str) -> dict:
    if not path:
        raise ConfigError("no experiment file: start with app:<path/to/experiment.yml>")
    if not os.path.exists(path):
        raise ConfigError(f"experiment file {path} not found: check the path after app:")
    if os.path.isdir(path):
        raise ConfigError(f"experiment file {path} is a directory: name a .yml file in it")
    try:
        with open(path) as fh:
            content = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except _DuplicateKey as e:
        raise ConfigError(
            f"experiment file {path} sets '{e.args[0]}' twice (lines {e.args[1]} and "
            f"{e.args[2]}): keep one"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"experiment file {path} is not valid YAML{where}: fix its syntax"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"experiment file {path} cannot be read ({e}): check it") from None
    if content is None:
        raise ConfigError(f"experiment file {path} is empty: give at least model: and data:")
    if not isinstance(content, dict):
        raise ConfigError(f"experiment file {path} is not a mapping of key: value: fix it")
    return content


def load_config(app_path: str, overrides: Optional[dict[str, Any]] = None) -> Config:
    """Read the experiment file, apply the overrides, check every key and value."""
    raw = _read_yaml(app_path)
    values: dict[str, Any] = {}
    for origin, items in ((f"in {app_path}", raw), ("on the command line", overrides or {})):
        for key, value in items.items():
            key = str(key).replace("-", "_")
            if key not in _FIELDS:
                raise ConfigError(
                    f"unknown key '{key}' {origin}{_closest(key)}: "
                    f"remove it or use a known key (python main.py --help)"
                )
            values[key] = _coerce(key, value, origin)
    for required in ("model", "data"):
        if not values.get(required):
            raise ConfigError(
                f"{app_path} has no '{required}:' entry: add {required}: <module.path:ClassName>"
            )
    set_keys = tuple(values)
    cli_keys = tuple(str(k).replace("-", "_") for k in (overrides or {}))
    if not values.get("test_batch_size"):  # 0 or absent: evaluate at the training batch size
        values["test_batch_size"] = values.get("batch_size", _FIELDS["batch_size"].default)
    cfg = Config(**values, set_keys=set_keys, cli_keys=cli_keys)
    _validate(cfg)
    return cfg


def config_from_dict(values: dict) -> Config:
    """The Config stored in a checkpoint (``dataclasses.asdict``), read back: keys this version
    does not know are dropped, missing ones take their defaults. No validation: it describes a
    run that happened."""
    names = {f.name for f in dataclasses.fields(Config)}
    kept = {k: v for k, v in values.items() if k in names}
    for key in ("multistep_lr_milestones", "topk", "gpus", "set_keys", "wire_include",
                "wire_exclude"):  # fmt: skip
        if isinstance(kept.get(key), (list, tuple)):
            kept[key] = list(kept[key]) if key != "set_keys" else tuple(kept[key])
    return Config(**kept)


# Keys every experiment's run reads, whatever its model and data. The others act only for some
# experiments: the model and data classes say which they read (``config_keys``), and a few only
# with a given value of another key (below).
_RUN_KEYS = frozenset(
    {
        "model", "data", "data_dir", "batch_size", "test_batch_size", "workers", "lr",
        "lr_scheduler", "optimizer", "momentum", "weight_decay", "nestorov", "num_epochs",
        "topk", "seed", "resume", "evaluate", "save_dir", "log_dir", "skip_profiling", "gpus",
        "amp", "compile", "channels_last", "progress", "persistent_workers",
        "keep_freed_memory", "native_kernels", "fast_paths", "overwrite",
        "override_checkpoint", "train_subset", "image_size", "in_channels", "output_size",
        "prune", "fast_eval", "use_dgl", "graph_backend", "export", "results_file", "title",
    }
)  # fmt: skip
_ONLY_WITH = {  # key: (the other key, its values with which the key acts)
    "multistep_lr_milestones": ("lr_scheduler", ("multistep",)),
    "multistep_lr_gamma": ("lr_scheduler", ("multistep",)),
    "exp_decaying_lr_gamma": ("lr_scheduler", ("exp_decaying",)),
    "use_graph": ("graph", ("fine_tune",)),
    "use_init": ("graph", ("fine_tune",)),
    "rho": ("graph", ("td", "reg_td")),
    "td_abs": ("graph", ("td", "reg_td")),
}


def keys_read(cfg: Config, model_cls: Any, data_cls: Any) -> Optional[set[str]]:
    """The keys this experiment reads (every run's, the model's and the data's ``config_keys``,
    the conditional ones where their condition holds); None where a class does not say."""
    read = set(_RUN_KEYS)
    for cls in (model_cls, data_cls):
        keys = getattr(cls, "config_keys", None)
        if keys is None:
            return None
        read |= set(keys(cfg) if callable(keys) else keys)
    read -= {k for k, (name, values) in _ONLY_WITH.items() if getattr(cfg, name) not in values}
    return read | {k for k, (name, values) in _ONLY_WITH.items() if getattr(cfg, name) in values}


def check_keys_used(cfg: Config, model_cls: Any, data_cls: Any) -> list[str]:
    """Refuse, with one line, a key set in the experiment file or on the command line that this
    experiment does not read. A class that reads config keys says which: ``config_keys(cfg)``
    (a set of names; absent: not checked) and ``inert_keys`` ({key: value} that the authors'
    files set without effect, accepted at exactly that value so that their files run).

    One case is said, not refused: a key of the experiment file that only acts with a value of
    another key that the command line changed (the file's multistep milestones under
    ``--lr_scheduler cosine``). Returns those notes."""
    notes = []
    read = keys_read(cfg, model_cls, data_cls)
    checked = read is not None
    inert = {**getattr(data_cls, "inert_keys", {}), **getattr(model_cls, "inert_keys", {})}
    if "setting" in cfg.set_keys and getattr(model_cls, "setting", None) != cfg.setting:
        runs = getattr(model_cls, "setting", None)
        fix = f"set setting: {runs}" if runs else "remove setting"
        raise ConfigError(
            f"setting: {cfg.setting}, but {model_cls.__name__} runs "
            f"{f'the {runs} setting' if runs else 'no wiring setting'}: {fix}"
        )
    for key in cfg.set_keys:
        other = _ONLY_WITH.get(key)
        if other is not None:
            name, values = other
            if (
                getattr(cfg, name) not in values
                and key not in cfg.cli_keys
                and name in cfg.cli_keys
            ):
                notes.append(
                    f"note: {key} of the experiment file acts only with {name} "
                    f"{' or '.join(values)}; under --{name} {getattr(cfg, name)} it does nothing"
                )
                continue
            if getattr(cfg, name) not in values:
                raise ConfigError(
                    f"{key} acts only with {name} {' or '.join(values)} (this experiment has "
                    f"{name} {getattr(cfg, name)}): remove {key}"
                )
            continue
        if not checked or key in read:
            continue
        if key in inert and getattr(cfg, key) == inert[key]:
            continue
        users = " and ".join(c.__name__ for c in (model_cls, data_cls))
        value = (
            f" (the authors' files set {inert[key]!r}, which changes nothing)"
            if key in inert
            else ""
        )
        raise ConfigError(
            f"{key} is not read by {users}{value}: remove {key} from the experiment file or "
            "the command line"
        )
    return notes


def run_title(app_path: str, overrides: Optional[dict[str, Any]] = None) -> str:
    """``base=<yml name>_key=value_...`` as the original runner names a run."""
    name = os.path.basename(app_path)
    name = name[:-4] if name.endswith(".yml") else name
    parts = [f"base={name}"]
    for key, value in (overrides or {}).items():
        key = key.replace("-", "_")
        if key in NOT_IN_TITLE:
            continue
        parts.append(f"{key}={str(value).replace(' ', '')}")
    title = "_".join(parts).replace("/", ".")
    if len(title) > _MAX_TITLE:  # a folder name must stay under the file system's 255 bytes
        digest = hashlib.sha1(title.encode()).hexdigest()[:10]
        title = f"{title[: _MAX_TITLE - 11]}-{digest}"
    return title


def config_help(cfg: Optional[Config] = None) -> str:
    """One line per key: name, help, default (``main.py --help``); with ``cfg``, its values
    and where each came from (``main.py app:<file> --help``)."""
    lines = []
    for f in _FIELDS.values():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = _choices(f)
        extra = f" [{' | '.join(map(str, choices))}]" if choices else ""
        if cfg is None:
            lines.append(f"  --{f.name:<24} {f.metadata['help']}{extra} (default {default!r})")
            continue
        value = getattr(cfg, f.name)
        origin = (
            "command line" if f.name in cfg.cli_keys
            else "experiment file" if f.name in cfg.set_keys
            else "default"
        )  # fmt: skip
        lines.append(f"  --{f.name:<24} {value!r:<28} ({origin}) {f.metadata['help']}{extra}")
    return "\n".join(lines)
