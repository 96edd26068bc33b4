"""scikit-learn's bundled 8x8 handwritten digits: a dataset that needs no download, for smoke
runs and tests. Everything is precomputed into tensors; there is no augmentation.

Split: a fixed permutation (generator seeded with ``SPLIT_SEED``, independent of the run's seed,
so accuracies of different seeds are measured on the same images) puts its first fifth of the
1797 images in val (359) and the rest in train (1438). Pixels 0..16 are scaled to [0, 1], resized
bilinearly to ``image_size``, repeated to ``in_channels`` and normalised with the train split's
mean and std (one value for all pixels).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from data.loaders import build_loaders, check_val_resize
from data.tensor_dataset import TensorImageDataset
from genutil.errors import ConfigError

__all__ = ["SPLIT_SEED", "Digits", "digits_split"]

logger = logging.getLogger(__name__)

SPLIT_SEED = 0
_MAX_PIXEL = 16.0
_NUM_CLASSES = 10


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw train images ``[n, 1, 8, 8]`` in [0, 1], train labels, val images, val labels."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn is slow to import

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / _MAX_PIXEL
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    generator = torch.Generator()
    generator.manual_seed(SPLIT_SEED)
    order = torch.randperm(len(labels), generator=generator)
    num_val = len(labels) // 5
    train, val = order[num_val:], order[:num_val]
    return images[train], labels[train], images[val], labels[val]


class Digits:
    """The 8x8 digits as a train/val pair of in-memory datasets and their loaders."""

    # the config keys from_config reads beyond every run's (genutil.config.check_keys_used)
    config_keys = frozenset({"val_resize"})

    num_classes: int = _NUM_CLASSES

    def __init__(
        self,
        *,
        data_dir: str = "",
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
        del data_dir, download  # accepted for a uniform interface; the data ships with sklearn
        check_val_resize("digits", val_resize, image_size)
        if image_size < 1 or in_channels < 1:
            raise ConfigError(
                f"image_size={image_size}, in_channels={in_channels}: both must be positive"
            )
        train_images, train_labels, val_images, val_labels = digits_split()
        train_images = _resize(train_images, image_size)  # [n_train, 1, S, S]
        val_images = _resize(val_images, image_size)
        mean, std = train_images.mean(), train_images.std()
        self.mean, self.std = float(mean), float(std)
        train_images = ((train_images - mean) / std).repeat(1, in_channels, 1, 1)
        val_images = ((val_images - mean) / std).repeat(1, in_channels, 1, 1)
        self.classes = [str(digit) for digit in range(_NUM_CLASSES)]
        self.normalization = {
            "pixels": f"0..16 scaled to [0, 1], bilinear to {image_size}x{image_size}, repeated to "
            f"{in_channels} channels",
            "mean": [self.mean] * in_channels,
            "std": [self.std] * in_channels,
        }
        self.train_dataset = TensorImageDataset(train_images, train_labels)
        self.val_dataset = TensorImageDataset(val_images, val_labels)
        logger.info("digits: %d train, %d val images", len(train_labels), len(val_labels))
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
    ) -> Digits:
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
            pin_memory=pin_memory,
            distributed=distributed,
            train_subset=cfg.train_subset,
            val_resize=cfg.val_resize,
        )


def _resize(images: torch.Tensor, image_size: int) -> torch.Tensor:
    if images.shape[-1] == image_size:
        return images
    return F.interpolate(
        images, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
