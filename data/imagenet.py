"""ImageNet (ILSVRC-2012) from two class-per-folder trees, with the standard ResNet pipeline the
original DNW used.

Layout: ``<data_dir>/imagenet/train/<wnid>/<image>.JPEG`` and
``<data_dir>/imagenet/val/<wnid>/<image>.JPEG``: the validation images sorted into the same class
folders as training (the official val tarball is flat and needs sorting first). No download: the
files need a licence from image-net.org.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image
from torchvision import datasets, transforms

from data._text import one_line
from data.loaders import build_loaders
from genutil.errors import ConfigError, DataError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageNet", "open_image_folder"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CROP_FRACTION = 0.875  # val: resize to image_size / 0.875 (256 for 224), then centre-crop


def _layout_hint(root: Path) -> str:
    return (
        f"put images in {root}/train/<class>/<image>.JPEG and {root}/val/<class>/<image>.JPEG, "
        "one folder per class, validation images sorted into class folders too"
    )


def load_image(path: str) -> Image.Image:
    """An RGB image, or a DataError naming the file that is not one (a truncated download, a
    file that only has an image's name): one line for the user, mid-epoch too."""
    try:
        with open(path, "rb") as fh:
            image = Image.open(fh)
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"{path} is not a readable image ({one_line(exc)}): remove or replace the file"
        ) from None


def open_image_folder(folder: Path, root: Path, transform: Any) -> datasets.ImageFolder:
    """``ImageFolder(folder)``, or DataError with the expected layout if it is missing or empty."""
    if not folder.is_dir():
        raise DataError(f"ImageNet folder not found: {folder}: {_layout_hint(root)}")
    try:
        return datasets.ImageFolder(str(folder), transform=transform, loader=load_image)
    except (FileNotFoundError, RuntimeError) as exc:  # no class folders, or a class with no images
        raise DataError(
            f"ImageNet folder {folder} is unusable ({one_line(exc)}): {_layout_hint(root)}"
        ) from exc


class ImageNet:
    """ImageNet train and val sets (folders named by class; labels are the sorted folder order).

    Train: RandomResizedCrop(image_size), RandomHorizontalFlip, ToTensor, Normalize.
    Val: Resize(val_resize, default int(image_size / 0.875)), CenterCrop(image_size), ToTensor,
    Normalize.
    """

    # the config keys from_config reads beyond every run's (genutil.config.check_keys_used)
    config_keys = frozenset({"val_resize"})

    def __init__(
        self,
        *,
        data_dir: str,
        batch_size: int,
        test_batch_size: int,
        workers: int,
        persistent_workers: bool = False,
        image_size: int = 224,
        in_channels: int = 3,
        seed: int = 0,
        pin_memory: bool = False,
        download: bool = True,
        distributed: bool = False,
        train_subset: int = 0,
        val_resize: int = 0,
    ) -> None:
        if in_channels != 3:
            raise ConfigError(f"ImageNet images are RGB, got in_channels={in_channels}: set 3")
        del download  # accepted for a uniform interface; ImageNet cannot be fetched automatically
        root = Path(data_dir) / "imagenet"
        normalize = transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        train_transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )
        val_transform = transforms.Compose(
            [
                transforms.Resize(val_resize or int(image_size / _CROP_FRACTION)),
                transforms.CenterCrop(image_size),
                transforms.ToTensor(),
                normalize,
            ]
        )
        self.train_dataset = open_image_folder(root / "train", root, train_transform)
        self.val_dataset = open_image_folder(root / "val", root, val_transform)
        if self.val_dataset.classes != self.train_dataset.classes:
            only_train = sorted(set(self.train_dataset.classes) - set(self.val_dataset.classes))
            only_val = sorted(set(self.val_dataset.classes) - set(self.train_dataset.classes))
            raise DataError(
                f"ImageNet train and val class folders differ (only in train: {only_train[:3]}, "
                f"only in val: {only_val[:3]}): give {root}/val the same class folders as train"
            )
        self.classes = self.train_dataset.classes
        resize = val_resize or int(image_size / _CROP_FRACTION)
        self.normalization = {
            "pixels": f"RGB scaled to [0, 1]; evaluation: resize to {resize}, centre crop "
            f"{image_size}",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        }
        self.num_classes = len(self.classes)
        logger.info(
            "ImageNet from %s: %d classes, %d train, %d val images",
            root,
            self.num_classes,
            len(self.train_dataset),
            len(self.val_dataset),
        )
        # The original reads its val loader's batch size from batch_size; its YAML files set
        # test_batch_size to the same value, so using test_batch_size changes nothing there.
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
    ) -> ImageNet:
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
