"""ImageNet: class-folder trees load with the standard pipeline; bad layouts give one line."""

import shutil

import pytest
import torch

from data.imagenet import ImageNet
from genutil.errors import ConfigError, DataError
from tests.data.fakes import make_imagenet

CLASSES = ("n01440764", "n01443537", "n01484850")


def _build(data_dir, **overrides) -> ImageNet:
    kwargs = {"batch_size": 4, "test_batch_size": 5, "workers": 0, "image_size": 16, "seed": 0}
    kwargs.update(overrides)
    return ImageNet(data_dir=str(data_dir), **kwargs)


@pytest.fixture
def data_dir(tmp_path):
    make_imagenet(tmp_path, classes=CLASSES, per_class=3, val_per_class=2)
    return tmp_path


def test_loads_train_and_val(data_dir):
    imagenet = _build(data_dir)
    assert imagenet.num_classes == 3 and imagenet.classes == list(CLASSES)
    assert len(imagenet.train_dataset) == 9 and len(imagenet.val_dataset) == 6
    images, _ = next(iter(imagenet.train_loader))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    val_images, val_labels = next(iter(imagenet.val_loader))
    assert val_images.shape == (5, 3, 16, 16)
    assert val_labels.tolist() == [0, 0, 1, 1, 2]  # sorted folder order, sequential val
    train_labels = torch.cat([labels for _, labels in imagenet.train_loader]).tolist()
    assert sorted(train_labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_full_size_crops_are_224(data_dir):
    imagenet = _build(data_dir, image_size=224)
    assert imagenet.train_dataset[0][0].shape == (3, 224, 224)
    assert imagenet.val_dataset[0][0].shape == (3, 224, 224)
    resize = imagenet.val_dataset.transform.transforms[0]
    assert resize.size == 256  # 224 / 0.875


def test_val_is_deterministic_and_normalised(data_dir):
    imagenet = _build(data_dir)
    first, again = imagenet.val_dataset[0][0], imagenet.val_dataset[0][0]
    assert torch.equal(first, again)
    # fake class-0 pixels lie in 16..127 of 255: about -1.7..0.2 after ImageNet normalisation
    assert -2.1 < float(first.min()) and float(first.max()) < 0.6


def test_missing_root_gives_layout(tmp_path):
    with pytest.raises(DataError) as info:
        _build(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "imagenet" / "train") in message
    assert "train/<class>/<image>.JPEG" in message and "\n" not in message


def test_missing_val_is_named(data_dir):
    shutil.rmtree(data_dir / "imagenet" / "val")
    with pytest.raises(DataError, match="not found: .*imagenet/val"):
        _build(data_dir)


def test_folder_without_class_folders(data_dir):
    shutil.rmtree(data_dir / "imagenet" / "train")
    (data_dir / "imagenet" / "train").mkdir()
    with pytest.raises(DataError, match="imagenet/train is unusable") as info:
        _build(data_dir)
    assert "\n" not in str(info.value)


def test_class_folder_without_images(data_dir):
    (data_dir / "imagenet" / "train" / "n09999999").mkdir()
    with pytest.raises(DataError, match="imagenet/train is unusable"):
        _build(data_dir)


def test_train_and_val_classes_must_agree(data_dir):
    shutil.rmtree(data_dir / "imagenet" / "val" / CLASSES[1])
    with pytest.raises(DataError, match=f"only in train: \\['{CLASSES[1]}'\\]"):
        _build(data_dir)


def test_grey_input_is_config_error(data_dir):
    with pytest.raises(ConfigError, match="in_channels=1"):
        _build(data_dir, in_channels=1)
