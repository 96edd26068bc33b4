"""Checkpoint files: atomic save, safe load, the original's layout, RNG state.

Layout (the original's keys, so its files and ours load both ways): ``model`` (state dict with
every key prefixed ``module.``, as nn.DataParallel saves it), ``optimizer``, ``last_epoch``,
``best_val``, ``iter``, ``meters``. We add, and never require: ``config``, ``title``,
``format_version``; for exact resume ``step`` (global optimizer steps), ``epoch`` (the next epoch)
and ``batch`` (its batches already trained: non-zero after a mid-epoch stop) with
``partial_meters`` (their metric sums), ``rng`` (python, numpy, torch, CUDA generator states of
rank 0) and ``rng_ranks`` (those of every process), and ``data_order`` (seed, epoch, batch,
steps per epoch, world size: an epoch's order is a function of seed and epoch, see data.loaders).

Loading never executes code from the pickle: ``torch.load(weights_only=True)`` always. The
original pickles objects of its own meter classes (``train.ScalarMeter``); they are mapped to
inert stand-ins. Any other global is refused by name.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import socket
import uuid
import warnings
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from genutil.errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "save_checkpoint",
    "remove_stale_temps",
    "read_checkpoint",
    "model_state",
    "load_model_state",
    "rng_state",
    "set_rng_state",
    "MeterStandIn",
]

FORMAT_VERSION = 1
_PREFIX = "module."


class MeterStandIn:
    """Inert replacement for the original's pickled ``train.Meter``/``train.ScalarMeter``."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})

    def __repr__(self) -> str:
        return f"MeterStandIn({self.__dict__.get('name', '?')})"


def _allowlist() -> list:
    items: list = [(MeterStandIn, "train.ScalarMeter"), (MeterStandIn, "train.Meter")]
    # numpy arrays/scalars inside the original's meters (values cached as numpy)
    try:
        from numpy.core.multiarray import _reconstruct, scalar  # noqa: PLC0415

        items += [
            (_reconstruct, "numpy.core.multiarray._reconstruct"),
            (scalar, "numpy.core.multiarray.scalar"),
            np.ndarray,
            np.dtype,
        ]
        items += [
            (_reconstruct, "numpy._core.multiarray._reconstruct"),
            (scalar, "numpy._core.multiarray.scalar"),
        ]
        items += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "uint8", "bool")]
    except ImportError:  # pragma: no cover - numpy layout differs
        pass
    return items


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - not all platforms open folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(path: str) -> str:
    # Hidden, unique, never ending in ".pt": a kill mid-write leaves a name no loader picks up.
    # The writer's pid and host are in the name, so that only temps of dead writers are removed.
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(
        folder, f".tmp_{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{socket.gethostname()}"
    )


_TEMP = re.compile(r"^\.tmp_.+\.pt\.(\d+)\.[0-9a-f]{8}(?:\.(.+))?$")


def save_checkpoint(path: str, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically: temp file in the same folder, flush, fsync,
    ``os.replace``, fsync the folder. The old file is never deleted first, so a kill at any
    instant leaves either the previous file or the new one, never a torn file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _temp_path(path)
    # 0o666 less the umask, as a plain open() would give (mkstemp would make it 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_temps(folder: str) -> list[str]:
    """Delete the temp files that killed saves left in ``folder``: those whose writer (pid and
    host in the name) no longer runs on this machine; a live writer's, or another machine's,
    are left alone. Return the names deleted."""
    from genutil.runlock import pid_alive  # noqa: PLC0415

    if not os.path.isdir(folder):
        return []
    stale = []
    for name in os.listdir(folder):
        found = _TEMP.match(name)
        if not found:
            continue
        pid, host = int(found.group(1)), found.group(2)
        if (host or socket.gethostname()) != socket.gethostname() or pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
            stale.append(name)
    return stale


def _refusal(path: str, message: str) -> str:
    """One line for a weights-only refusal: a global it would import, or a foreign opcode."""
    found = re.search(r"GLOBAL (\S+)|Unsupported class (\S+)", message)
    if found:
        what = found.group(1) or found.group(2)
        return (
            f"checkpoint {path} refused: its pickle would load {what}, which is not "
            "weights: only load files you trust, re-saved as plain tensors"
        )
    if "Weights only load failed" in message:
        return (
            f"checkpoint {path} refused: it is not a weights-only torch file (a plain pickle "
            "or another format): give a checkpoint written by torch.save"
        )
    first = message.strip().splitlines()[0][:120] if message.strip() else "unreadable"
    return f"checkpoint {path} is truncated or not a torch file ({first}): use an intact copy"


def read_checkpoint(path: str) -> dict:
    """Load a checkpoint file safely (weights only) to CPU; a one-line CheckpointError if not."""
    if not path or not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} not found: check the path")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a directory: name a .pt file in it")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            if hasattr(torch.serialization, "safe_globals"):
                with torch.serialization.safe_globals(_allowlist()):
                    obj = torch.load(path, map_location="cpu", weights_only=True)
            else:  # torch < 2.5: the original's meters cannot be mapped; weights-only holds
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(_refusal(path, str(e))) from None
    except Exception as e:  # noqa: BLE001 - parsing a file: any failure means a bad file
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a torch file ({first}): use an intact copy"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a dict: "
            "give a checkpoint written by this framework or the original"
        )
    return obj


def model_state(ckpt: dict) -> dict:
    """The model's tensors from a checkpoint dict (or a bare state dict), without 'module.'."""
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint has no 'model' state dict: give a model checkpoint")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue  # not weights (for instance a bare checkpoint's metadata)
        out[key[len(_PREFIX) :] if key.startswith(_PREFIX) else key] = value
    return out


def _lazy_buffers(model: nn.Module) -> set[str]:
    """Buffers registered as None until first use (FineTune masks): may or may not be saved."""
    return {
        f"{name}.{b}" if name else b
        for name, m in model.named_modules()
        for b, v in m._buffers.items()
        if v is None
    }


def load_model_state(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` after checking keys and shapes; name the first mismatch."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    lazy = _lazy_buffers(model)
    for key, value in state.items():
        if key not in want and key not in lazy:
            raise CheckpointError(
                f"{source} does not fit this model: it has '{key}' {tuple(value.shape)}, which "
                "this model lacks: pass the experiment file the checkpoint was trained with"
            )
        if key in want and tuple(value.shape) != want[key]:
            raise CheckpointError(
                f"{source} does not fit this model: '{key}' is {tuple(value.shape)} there and "
                f"{want[key]} here: pass the experiment file the checkpoint was trained with"
            )
    for key in want:
        if key not in state:
            raise CheckpointError(
                f"{source} does not fit this model: it lacks '{key}' {want[key]}: pass the "
                "experiment file the checkpoint was trained with"
            )
    model.load_state_dict(state, strict=False)


def rng_state() -> dict:
    """Every random generator's state, as tensors and plain values (weights_only-loadable)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Optional[dict]) -> None:
    """Restore what ``rng_state`` saved (missing parts are left alone)."""
    if not state:
        return
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
