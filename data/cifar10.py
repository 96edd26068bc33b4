"""CIFAR-10 from torchvision's on-disk layout, read by our own safe reader, with the original
DNW augmentation.

Files live in ``<data_dir>/cifar10/cifar-10-batches-py/`` (or ``<data_dir>/cifar-10-batches-py/``):
``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and ``batches.meta``, each a pickled dict
(``data``: uint8 ``[N, 3072]`` with the 1024 red, then green, then blue pixels of a row-major
32x32 image; ``labels``: N ints). torchvision's reader is not used because it insists on the
official md5 sums and unpickles anything; ours allows only the few globals numpy arrays need, so
a planted file cannot run code.
"""

from __future__ import annotations

import importlib
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import transforms

from data._text import one_line
from data.loaders import build_loaders, check_val_resize
from data.tensor_dataset import TensorImageDataset
from genutil.errors import ConfigError, DataError

__all__ = [
    "CIFAR10",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "find_cifar10",
    "read_cifar_batch",
]

logger = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MEAN = (0.491, 0.482, 0.447)  # the original DNW values
CIFAR10_STD = (0.247, 0.243, 0.262)
_FOLDER = "cifar-10-batches-py"
_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_FILE = "test_batch"
_META_FILE = "batches.meta"
_NUM_CLASSES = 10
_PIXELS = 3 * 32 * 32

# numpy >= 2 keeps the array machinery in numpy._core (importing numpy.core there warns);
# numpy 1.x in numpy.core. Pickles name either, depending on the numpy that wrote them.
_CORE = "numpy._core" if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else "numpy.core"
_np_multiarray = importlib.import_module(f"{_CORE}.multiarray")
_np_numeric = importlib.import_module(f"{_CORE}.numeric")


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles from Python 3 call to rebuild bytes: ``_codecs.encode(s, 'latin1')``,
    restricted to that one codec."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _np_multiarray._reconstruct
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "scalar")] = _np_multiarray.scalar
    _ALLOWED_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _np_numeric._frombuffer


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def _load_pickle(path: Path, fix: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"CIFAR-10 file missing: {path}: {fix}")
    try:
        with open(path, "rb") as handle:
            # latin1: the official files were pickled by Python 2 (numpy documents this setting)
            obj = _ArraysOnlyUnpickler(handle, encoding="latin1").load()
    except Exception as exc:  # any failure inside the unpickler means a bad file, not a bug
        raise DataError(f"{path} is not a CIFAR-10 batch ({one_line(exc)}): {fix}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a CIFAR-10 dict: {fix}")
    # Python 2 files give str keys under latin1; files written by Python 3 keep bytes keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar_batch(path: Path, fix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[N, 3, 32, 32]`` and labels int64 ``[N]`` of one CIFAR-10 batch file.

    Raises DataError naming ``path`` (followed by ``fix``) if the file is not such a batch.
    """
    fix = fix or f"re-extract {CIFAR10_URL} into {path.parent.parent}"
    batch = _load_pickle(path, fix)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' is not a uint8 [N, {_PIXELS}] array: {fix}")
    if data.shape[1] != _PIXELS:
        raise DataError(
            f"{path}: 'data' has {data.shape[1]} values per image, not {_PIXELS}: {fix}"
        )
    try:
        label_array = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'labels' is not a list of class numbers: {fix}") from None
    if len(label_array) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(label_array)} labels: {fix}")
    if len(label_array) and (label_array.min() < 0 or label_array.max() >= _NUM_CLASSES):
        raise DataError(f"{path}: labels outside 0..{_NUM_CLASSES - 1}: {fix}")
    # writable and contiguous, so torch.from_numpy neither warns nor sees a strided view
    return np.require(data.reshape(-1, 3, 32, 32), requirements=["C", "W"]), label_array


def _download(root: Path) -> None:
    """torchvision's downloader (checks md5, extracts ``cifar-10-batches-py`` into ``root``)."""
    from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

    TorchvisionCIFAR10(root=str(root), train=True, download=True)


def find_cifar10(data_dir: str, download: bool) -> Path:
    """The folder holding the batch files; downloads into ``<data_dir>/cifar10`` if allowed."""
    primary = Path(data_dir) / "cifar10" / _FOLDER
    for folder in (primary, Path(data_dir) / _FOLDER):
        if folder.is_dir():
            return folder
    fix = f"download {CIFAR10_URL} and extract it into {primary.parent} (it makes {_FOLDER})"
    if not download:
        raise DataError(f"CIFAR-10 not found under {primary}: {fix}")
    logger.info("CIFAR-10 not found under %s; downloading it", primary)
    try:
        _download(primary.parent)
    except Exception as exc:  # offline, proxy, disk full: all end in the same advice
        raise DataError(
            f"CIFAR-10 not found under {primary} and download failed ({one_line(exc)}): {fix}"
        ) from exc
    if not primary.is_dir():
        raise DataError(f"CIFAR-10 not found under {primary} after download: {fix}")
    return primary


class CIFAR10:
    """CIFAR-10 train (50k) and test (10k, used as validation) sets and their loaders.

    Train augmentation is the original's: RandomCrop(32, padding=4), RandomHorizontalFlip, then
    scaling to [0, 1] and Normalize; validation only scales and normalises.
    """

    # the config keys from_config reads beyond every run's (genutil.config.check_keys_used)
    config_keys = frozenset({"download", "val_resize"})

    num_classes: int = _NUM_CLASSES

    def __init__(
        self,
        *,
        data_dir: str,
        batch_size: int,
        test_batch_size: int,
        workers: int,
        persistent_workers: bool = False,
        image_size: int = 32,
        in_channels: int = 3,
        seed: int = 0,
        pin_memory: bool = False,
        download: bool = True,
        distributed: bool = False,
        train_subset: int = 0,
        val_resize: int = 0,
    ) -> None:
        check_val_resize("CIFAR-10", val_resize, image_size)
        if image_size != 32 or in_channels != 3:
            raise ConfigError(
                f"CIFAR10 images are 32x32 RGB, got image_size={image_size} "
                f"in_channels={in_channels}: set image_size: 32 and in_channels: 3"
            )
        folder = find_cifar10(data_dir, download)
        fix = f"re-extract {CIFAR10_URL} into {folder.parent}"
        self.classes = _read_class_names(folder / _META_FILE, fix)
        # how an input is made: what an exported model needs to be fed (genutil.run --export)
        self.normalization = {
            "pixels": "RGB scaled to [0, 1]", "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)
        }  # fmt: skip
        parts = [read_cifar_batch(folder / name, fix) for name in _TRAIN_FILES]
        train_images = torch.from_numpy(np.concatenate([images for images, _ in parts]))
        train_labels = torch.from_numpy(np.concatenate([labels for _, labels in parts]))
        test_images, test_labels = read_cifar_batch(folder / _TEST_FILE, fix)
        logger.info(
            "CIFAR-10 from %s: %d train, %d val images", folder, len(train_labels), len(test_labels)
        )

        normalize = transforms.Normalize(mean=CIFAR10_MEAN, std=CIFAR10_STD)
        to_float = transforms.ConvertImageDtype(torch.float32)  # uint8 / 255, as ToTensor does
        train_transform = transforms.Compose(
            [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
            + [to_float, normalize]
        )
        val_transform = transforms.Compose([to_float, normalize])
        self.train_dataset = TensorImageDataset(train_images, train_labels, train_transform)
        self.val_dataset = TensorImageDataset(
            torch.from_numpy(test_images), torch.from_numpy(test_labels), val_transform
        )
        self.train_loader, self.val_loader = build_loaders(
            self.train_dataset,
            self.val_dataset,
            batch_size=batch_size,
            test_batch_size=test_batch_size,
            workers=workers,
            persistent_workers=persistent_workers,
            pin_memory=pin_memory,
            seed=seed,
            distributed=distributed,
            train_subset=train_subset,
        )

    @classmethod
    def from_config(
        cls, cfg: Any, *, pin_memory: bool = False, distributed: bool = False
    ) -> CIFAR10:
        """Build from the run's config (the only place config keys are read)."""
        return cls(
            data_dir=cfg.data_dir,
            batch_size=cfg.batch_size,
            test_batch_size=cfg.test_batch_size,
            workers=cfg.workers,
            persistent_workers=cfg.persistent_workers,
            image_size=cfg.image_size,
            in_channels=cfg.in_channels,
            seed=cfg.seed,
            download=cfg.download,
            pin_memory=pin_memory,
            distributed=distributed,
            train_subset=cfg.train_subset,
            val_resize=cfg.val_resize,
        )


def _read_class_names(path: Path, fix: str) -> list[str]:
    meta = _load_pickle(path, fix)
    names: Any | None = meta.get("label_names")
    if not isinstance(names, list) or len(names) != _NUM_CLASSES:
        raise DataError(f"{path}: 'label_names' is not a list of {_NUM_CLASSES} names: {fix}")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
