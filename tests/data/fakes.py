"""Tiny stand-ins for the real datasets, written in the real on-disk formats, for tests that must
run offline in seconds (data loaders here; end-to-end ``main.py`` runs elsewhere).

Images carry a class-dependent brightness on top of noise, so a small model can learn them.
Each ``make_*`` takes the ``data_dir`` a run would get and returns the folder it wrote.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from data.idx import write_idx

__all__ = [
    "CIFAR10_LABEL_NAMES",
    "cifar10_arrays",
    "fashion_mnist_arrays",
    "make_cifar10",
    "make_fashion_mnist",
    "make_imagenet",
    "write_cifar_batch",
]

CIFAR10_LABEL_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
_BRIGHTNESS_STEP = 12  # class c adds 12 * c to every pixel
_NOISE_LOW, _NOISE_HIGH = 16, 128  # never 0, so zero pixels can only come from padding


def _class_images(labels: Sequence[int], shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(_NOISE_LOW, _NOISE_HIGH, size=(len(labels),) + shape)
    offset = np.asarray(labels).reshape((-1,) + (1,) * len(shape)) * _BRIGHTNESS_STEP
    return (noise + offset).astype(np.uint8)


def cifar10_arrays(num_images: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Pixels uint8 ``[num_images, 3072]`` and labels (every class once per 10 images)."""
    labels = [(i + seed) % 10 for i in range(num_images)]
    return _class_images(labels, (3072,), seed), labels


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], name: str) -> None:
    """One batch file as the official ones are: a protocol-2 pickle of a dict with bytes keys."""
    batch = {
        b"batch_label": name.encode(),
        b"labels": list(labels),
        b"data": data,
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(labels))],
    }
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def make_cifar10(root: Path, n_per_batch: int = 20, n_test: int = 0) -> Path:
    """Write ``<root>/cifar10/cifar-10-batches-py`` with 5 train batches of ``n_per_batch``
    images and a test batch of ``n_test`` (default ``n_per_batch``) images.

    Batch ``k`` (1..5) holds ``cifar10_arrays(n_per_batch, seed=k)``; the test batch holds
    ``cifar10_arrays(n_test, seed=0)``.
    """
    folder = Path(root) / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, 6):
        data, labels = cifar10_arrays(n_per_batch, seed=k)
        write_cifar_batch(folder / f"data_batch_{k}", data, labels, f"training batch {k} of 5")
    data, labels = cifar10_arrays(n_test or n_per_batch, seed=0)
    write_cifar_batch(folder / "test_batch", data, labels, "testing batch 1 of 1")
    meta = {
        b"num_cases_per_batch": n_per_batch,
        b"label_names": [name.encode() for name in CIFAR10_LABEL_NAMES],
        b"num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return folder


def make_imagenet(
    root: Path,
    classes: int | Sequence[str] = ("n01440764", "n01443537"),
    per_class: int = 2,
    val_per_class: int = 0,
) -> Path:
    """Write ``<root>/imagenet/{train,val}/<class>/*.JPEG``: ``per_class`` training and
    ``val_per_class`` (default ``per_class``) validation images per class, of varying
    non-square sizes around 40x30 pixels. ``classes`` is a list of folder names, or a count
    (folders ``n00000000``, ``n00000001``, ...)."""
    if isinstance(classes, int):
        classes = [f"n{index:08d}" for index in range(classes)]
    base = Path(root) / "imagenet"
    counts = {"train": per_class, "val": val_per_class or per_class}
    for split, count in counts.items():
        for c, name in enumerate(classes):
            folder = base / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                height, width = 30 + 2 * k, 40 + 4 * k
                pixels = _class_images([c], (height, width, 3), seed=100 * c + k)[0]
                Image.fromarray(pixels).save(folder / f"{name}_{k:04d}.JPEG", quality=90)
    return base


def fashion_mnist_arrays(num_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[num_images, 28, 28]`` and uint8 labels (every class once per 10)."""
    labels = np.array([(i + seed) % 10 for i in range(num_images)], dtype=np.uint8)
    return _class_images(labels.tolist(), (28, 28), seed), labels


def make_fashion_mnist(root: Path, n: int = 30, n_test: int = 0, compress: bool = True) -> Path:
    """Write the four IDX files into ``<root>/fashion-mnist`` (``.gz`` if ``compress``):
    ``fashion_mnist_arrays(n, seed=1)`` for train and ``(n_test or n, seed=0)`` for test."""
    folder = Path(root) / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    splits = {
        "train": fashion_mnist_arrays(n, seed=1),
        "t10k": fashion_mnist_arrays(n_test or n, 0),
    }
    for prefix, (images, labels) in splits.items():
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
    return folder
