"""Digits: scikit-learn's 8x8 images, a fixed 1438/359 split, resized and normalised tensors."""

import pytest
import torch

from data.digits import Digits, digits_split
from data.loaders import set_epoch


def _build(**overrides) -> Digits:
    kwargs = {"batch_size": 64, "test_batch_size": 100, "workers": 0, "seed": 0}
    kwargs.update(overrides)
    return Digits(**kwargs)


def test_split_sizes_and_shapes():
    digits = _build()
    assert len(digits.train_dataset) == 1438 and len(digits.val_dataset) == 359
    assert digits.num_classes == 10
    image, label = digits.val_dataset[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= label < 10
    images, labels = next(iter(digits.train_loader))
    assert images.shape == (64, 3, 32, 32) and labels.dtype == torch.int64
    assert len(digits.val_loader) == 4  # 359 images in batches of 100


def test_split_is_fixed_and_partitions_the_set():
    from sklearn.datasets import load_digits

    train_x, train_y, val_x, val_y = digits_split()
    again = digits_split()
    assert torch.equal(val_x, again[2]) and torch.equal(train_y, again[1])
    # train + val is exactly sklearn's set (as a multiset of image-label rows)
    full = load_digits()
    rows = torch.cat(
        [torch.as_tensor(full.images).flatten(1) / 16, torch.as_tensor(full.target)[:, None]], 1
    )
    split = torch.cat(
        [torch.cat([train_x, val_x]).flatten(1), torch.cat([train_y, val_y])[:, None]], 1
    )
    expected_rows, expected_counts = torch.unique(rows.float(), dim=0, return_counts=True)
    split_rows, split_counts = torch.unique(split.float(), dim=0, return_counts=True)
    assert torch.equal(expected_rows, split_rows) and torch.equal(expected_counts, split_counts)
    assert float(train_x.min()) == 0.0 and float(train_x.max()) == 1.0
    assert sorted(set(val_y.tolist())) == list(range(10))


def test_split_does_not_depend_on_the_seed():
    assert torch.equal(_build(seed=0).val_dataset.labels, _build(seed=9).val_dataset.labels)


def test_normalised_with_train_statistics():
    digits = _build()
    train = digits.train_dataset.images
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1) < 1e-3
    assert torch.equal(train[:, 0], train[:, 2])  # grey repeated


@pytest.mark.parametrize("image_size, in_channels", [(8, 1), (16, 3), (32, 2)])
def test_sizes_follow_arguments(image_size, in_channels):
    digits = _build(image_size=image_size, in_channels=in_channels)
    assert digits.train_dataset[0][0].shape == (in_channels, image_size, image_size)


def test_native_size_keeps_pixels():
    digits = _build(image_size=8, in_channels=1)
    raw = digits_split()[2][0]  # first val image, [1, 8, 8] in [0, 1]
    restored = digits.val_dataset[0][0] * digits.std + digits.mean
    assert torch.allclose(restored, raw, atol=1e-5)


def test_order_depends_on_seed_and_epoch():
    def order(digits, epoch):
        set_epoch(digits.train_loader, epoch)
        return torch.cat([y for _, y in digits.train_loader]).tolist()

    assert order(_build(seed=1), 0) == order(_build(seed=1), 0)
    assert order(_build(seed=1), 0) != order(_build(seed=1), 1)
    assert order(_build(seed=1), 0) != order(_build(seed=2), 0)
