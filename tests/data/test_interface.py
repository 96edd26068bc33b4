"""Every dataset class follows the one interface the trainer and the YAML files rely on."""

import dataclasses
import inspect

import pytest
from torch.utils.data import Dataset

import data.fashion_mnist as fashion_module
from data.cifar10 import CIFAR10
from data.digits import Digits
from data.fashion_mnist import FashionMNIST
from data.imagenet import ImageNet
from data.loaders import SeededLoader
from genutil.config import Config
from genutil.errors import ConfigError
from tests.data.fakes import make_cifar10, make_fashion_mnist, make_imagenet

# class, fake writer, image_size, num_classes of the fake
CASES = {
    "cifar10": (CIFAR10, lambda root: make_cifar10(root, n_per_batch=10), 32, 10),
    "imagenet": (
        ImageNet,
        lambda root: make_imagenet(root, classes=2, per_class=3),
        16,
        2,
    ),
    "fashion_mnist": (FashionMNIST, lambda root: make_fashion_mnist(root, n=20), 32, 10),
    "digits": (Digits, lambda root: None, 32, 10),
}
REQUIRED_ARGS = {
    "data_dir", "batch_size", "test_batch_size", "workers", "image_size", "in_channels",
    "seed", "pin_memory", "download", "distributed",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_keyword_only_constructor(name):
    cls = CASES[name][0]
    parameters = inspect.signature(cls.__init__).parameters
    assert REQUIRED_ARGS <= set(parameters)
    assert all(parameters[arg].kind is inspect.Parameter.KEYWORD_ONLY for arg in REQUIRED_ARGS)


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
@pytest.mark.parametrize("name", sorted(CASES))
def test_from_config_builds_loaders(name, tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_module, "SYSTEM_DIRS", ())
    cls, make, image_size, num_classes = CASES[name]
    make(tmp_path)
    cfg = Config(
        data_dir=str(tmp_path), batch_size=4, test_batch_size=6, workers=0,
        image_size=image_size, in_channels=3, seed=11, download=False,
    )  # fmt: skip
    dataset = cls.from_config(cfg, pin_memory=True)
    assert isinstance(dataset.num_classes, int) and dataset.num_classes == num_classes
    assert isinstance(dataset.train_dataset, Dataset) and isinstance(dataset.val_dataset, Dataset)
    for loader, batch_size in ((dataset.train_loader, 4), (dataset.val_loader, 6)):
        assert isinstance(loader, SeededLoader)
        assert loader.batch_size == batch_size and loader.seed == 11 and loader.pin_memory
    images, labels = next(iter(dataset.val_loader))
    assert images.shape == (6, 3, image_size, image_size) and labels.shape == (6,)
    assert int(labels.max()) < num_classes
    assert not dataset.train_loader.persistent_workers
    persistent = cls.from_config(dataclasses.replace(cfg, workers=1, persistent_workers=True))
    assert persistent.train_loader.persistent_workers and persistent.val_loader.persistent_workers


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_dataset_honours_train_subset_and_val_resize(name, tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_module, "SYSTEM_DIRS", ())
    cls, make, image_size, _ = CASES[name]
    make(tmp_path)
    cfg = Config(
        data_dir=str(tmp_path), batch_size=2, test_batch_size=2, workers=0,
        image_size=image_size, in_channels=3, seed=11, download=False, train_subset=3,
    )  # fmt: skip
    full = cls.from_config(dataclasses.replace(cfg, train_subset=0))
    subset = cls.from_config(cfg)
    assert len(subset.train_loader.dataset) == 3 < len(full.train_loader.dataset)
    assert len(subset.val_loader.dataset) == len(full.val_loader.dataset)
    again = cls.from_config(cfg)  # the same seed picks the same images
    first = [labels.tolist() for _, labels in subset.train_loader]
    assert first == [labels.tolist() for _, labels in again.train_loader]
    if name != "imagenet":  # ImageNet resizes to val_resize; the others evaluate as they are
        with pytest.raises(ConfigError, match="val_resize"):
            cls.from_config(dataclasses.replace(cfg, val_resize=image_size + 8))
