"""Fashion-MNIST from its four IDX files, padded to ``image_size`` and repeated to ``in_channels``.

Where the files are looked for, in order:

1. ``<data_dir>/fashion-mnist/``;
2. ``<data_dir>/fashion-mnist/FashionMNIST/raw/`` (where torchvision's downloader puts them);
3. ``/usr/share/datasets/fashion-mnist/`` (Debian/Ubuntu package ``dataset-fashion-mnist``,
   which ships the four ``*-ubyte.gz`` files there);
4. torchvision's download into (2), when ``download`` is allowed.

Each file may be gzipped or not (``train-images-idx3-ubyte`` or ``train-images-idx3-ubyte.gz``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import transforms

from data._text import one_line
from data.idx import read_idx
from data.loaders import build_loaders, check_val_resize, subset_indices
from data.tensor_dataset import RepeatChannels, TensorImageDataset
from genutil.errors import ConfigError, DataError

__all__ = ["FASHION_MNIST_FILES", "SYSTEM_DIRS", "FashionMNIST", "find_fashion_mnist"]

logger = logging.getLogger(__name__)

SYSTEM_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_MEAN = 0.2860  # of the 28x28 training images, before padding
FASHION_MNIST_STD = 0.3530
_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_SIDE = 28


def _how_to_get(data_dir: str) -> str:
    return (
        "run 'apt-get install -y dataset-fashion-mnist' (installs /usr/share/datasets/"
        f"fashion-mnist), or put the four *-ubyte[.gz] files in {Path(data_dir) / 'fashion-mnist'}"
    )


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _files_in(folder: Path, fix: str) -> dict[str, Path] | None:
    """The four files in ``folder``; None if it has none of them; DataError if only some."""
    found = {key: _find_file(folder, stem) for key, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[key] for key, path in found.items() if path is None]
    if len(missing) == len(found):
        return None
    if missing:
        raise DataError(f"Fashion-MNIST file missing: {folder / missing[0]}[.gz]: {fix}")
    return found


def _download(root: Path) -> None:
    """torchvision's downloader; leaves the files in ``root/FashionMNIST/raw``."""
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

    TorchvisionFashionMNIST(root=str(root), train=True, download=True)
    TorchvisionFashionMNIST(root=str(root), train=False, download=True)


def find_fashion_mnist(data_dir: str, download: bool) -> dict[str, Path]:
    """Paths of the four files (keys of ``FASHION_MNIST_FILES``), searched as the module says."""
    fix = _how_to_get(data_dir)
    own = Path(data_dir) / "fashion-mnist"
    downloaded = own / "FashionMNIST" / "raw"
    searched = [own, downloaded] + [Path(d) for d in SYSTEM_DIRS]
    for folder in searched:
        files = _files_in(folder, fix) if folder.is_dir() else None
        if files is not None:
            return files
    if not download:
        places = ", ".join(str(folder) for folder in searched)
        raise DataError(f"Fashion-MNIST not found (looked in {places}): {fix}")
    logger.info("Fashion-MNIST not found; downloading it into %s", own)
    try:
        _download(own)
    except Exception as exc:  # offline, proxy, disk full: all end in the same advice
        raise DataError(
            f"Fashion-MNIST not found and download failed ({one_line(exc)}): {fix}"
        ) from exc
    files = _files_in(downloaded, fix) if downloaded.is_dir() else None
    if files is None:
        raise DataError(f"Fashion-MNIST not found in {downloaded} after download: {fix}")
    return files


def _read_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != "uint8" or images.ndim != 3 or images.shape[1:] != (_SIDE, _SIDE):
        raise DataError(f"{images_path} does not hold uint8 28x28 images: download it again")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_path} does not hold one label per image: download it again")
    if len(labels) and int(labels.max()) >= len(_CLASSES):
        raise DataError(f"{labels_path} has labels outside 0..9: download it again")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype("int64"))


class FashionMNIST:
    """Fashion-MNIST train (60k, or a seeded subset) and test (10k, used as validation) sets.

    Each 28x28 image is padded with the background value 0 to ``image_size`` (centred), scaled to
    [0, 1], normalised with mean 0.2860 and std 0.3530, and its grey channel repeated
    ``in_channels`` times. Train augmentation: RandomHorizontalFlip only.
    ``train_subset > 0`` keeps that many training images, drawn with a generator seeded by
    ``seed`` (the same images for the same seed on every machine).
    """

    # the config keys from_config reads beyond every run's (genutil.config.check_keys_used)
    config_keys = frozenset({"download", "val_resize"})

    num_classes: int = len(_CLASSES)

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
        if image_size < _SIDE:
            raise ConfigError(f"image_size={image_size} is below Fashion-MNIST's 28: set >= 28")
        check_val_resize("Fashion-MNIST", val_resize, image_size)
        if train_subset < 0:
            raise ConfigError(f"train_subset={train_subset} is negative: set 0 (all) or a count")
        files = find_fashion_mnist(data_dir, download)
        train_images, train_labels = _read_split(files["train_images"], files["train_labels"])
        val_images, val_labels = _read_split(files["val_images"], files["val_labels"])
        if train_subset:  # on the tensors: the same images as build_loaders would pick
            keep = subset_indices(len(train_labels), train_subset, seed)
            train_images, train_labels = train_images[keep], train_labels[keep]
        logger.info(
            "Fashion-MNIST from %s: %d train, %d val images",
            files["train_images"].parent,
            len(train_labels),
            len(val_labels),
        )
        self.classes: list[str] = list(_CLASSES)
        self.normalization = {
            "pixels": f"grey scaled to [0, 1], centred in {image_size}x{image_size}, repeated to "
            f"{in_channels} channels",
            "mean": [FASHION_MNIST_MEAN] * in_channels,
            "std": [FASHION_MNIST_STD] * in_channels,
        }

        to_float_normalized = [
            transforms.ConvertImageDtype(torch.float32),
            transforms.Normalize(mean=(FASHION_MNIST_MEAN,), std=(FASHION_MNIST_STD,)),
            RepeatChannels(in_channels),
        ]
        train_transform = transforms.Compose(
            [transforms.RandomHorizontalFlip()] + to_float_normalized
        )
        val_transform = transforms.Compose(to_float_normalized)
        self.train_dataset = TensorImageDataset(
            _pad(train_images, image_size), train_labels, train_transform
        )
        self.val_dataset = TensorImageDataset(
            _pad(val_images, image_size), val_labels, val_transform
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
        )

    @classmethod
    def from_config(
        cls, cfg: Any, *, pin_memory: bool = False, distributed: bool = False
    ) -> FashionMNIST:
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
            train_subset=cfg.train_subset,
            pin_memory=pin_memory,
            distributed=distributed,
            val_resize=cfg.val_resize,
        )


def _pad(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """``[N, 1, 28, 28]`` -> ``[N, 1, image_size, image_size]``, centred, background 0."""
    before = (image_size - _SIDE) // 2
    after = image_size - _SIDE - before
    return F.pad(images, (before, after, before, after), value=0)
