"""Fashion-MNIST: IDX files (gz or not) from data_dir or the Debian folder, padding, subsets."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import data.fashion_mnist as fashion_module
from data.fashion_mnist import FashionMNIST
from data.idx import read_idx, write_idx
from genutil.errors import ConfigError, DataError
from tests.data.fakes import fashion_mnist_arrays, make_fashion_mnist

N = 30
MEAN, STD = 0.2860, 0.3530
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def no_system_folder(tmp_path, monkeypatch):
    """Tests see only their own files, whether or not the Debian package is installed."""
    monkeypatch.setattr(fashion_module, "SYSTEM_DIRS", (str(tmp_path / "no-system-dir"),))


def _build(data_dir, **overrides) -> FashionMNIST:
    kwargs = {"batch_size": 8, "test_batch_size": 10, "workers": 0, "seed": 0, "download": False}
    kwargs.update(overrides)
    return FashionMNIST(data_dir=str(data_dir), **kwargs)


@pytest.mark.parametrize("dtype", ["uint8", "int8", ">i2", "int32", "float32", "float64"])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, compress):
    lowest = 0 if dtype == "uint8" else -5  # signed types get negative values too
    array = np.arange(lowest, lowest + 24).reshape(2, 3, 4).astype(dtype)
    write_idx(tmp_path / "f", array, compress=compress)
    assert (tmp_path / "f").read_bytes()[:2] == (b"\x1f\x8b" if compress else b"\x00\x00")
    back = read_idx(tmp_path / "f")
    assert back.shape == (2, 3, 4) and np.array_equal(back, array)
    assert back.dtype.isnative


def test_idx_header_is_big_endian(tmp_path):
    write_idx(tmp_path / "f", np.zeros((2, 300), np.uint8))
    assert (tmp_path / "f").read_bytes()[:12] == bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 1, 44])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x00\x77\x01\x00\x00\x00\x01x", "bad header"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "needs 5"),
        (b"\x1f\x8b broken gzip", "damaged gzip"),
    ],
)
def test_bad_idx_files_are_named(tmp_path, content, message):
    (tmp_path / "f").write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_idx(tmp_path / "f")
    assert str(tmp_path / "f") in str(info.value)


@pytest.mark.parametrize("compress", [True, False])
def test_pads_to_32_and_repeats_channels(tmp_path, compress):
    make_fashion_mnist(tmp_path, n=N, n_test=20, compress=compress)
    fashion = _build(tmp_path)
    assert len(fashion.train_dataset) == N and len(fashion.val_dataset) == 20
    assert fashion.num_classes == 10 and len(fashion.classes) == 10
    image, label = fashion.val_dataset[3]
    pixels, labels = fashion_mnist_arrays(20, seed=0)
    assert image.shape == (3, 32, 32) and label == int(labels[3])
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    background = torch.full((32, 32), (0 - MEAN) / STD)
    inside = (torch.from_numpy(pixels[3]).float() / 255 - MEAN) / STD
    background[2:30, 2:30] = inside
    assert torch.allclose(image[0], background, atol=1e-6)
    images, batch_labels = next(iter(fashion.val_loader))
    assert images.shape == (10, 3, 32, 32) and batch_labels.tolist() == labels[:10].tolist()


def test_native_size_single_channel(tmp_path):
    make_fashion_mnist(tmp_path, n=N)
    fashion = _build(tmp_path, image_size=28, in_channels=1)
    assert fashion.val_dataset[0][0].shape == (1, 28, 28)


def test_train_augmentation_is_only_a_flip(tmp_path):
    make_fashion_mnist(tmp_path, n=N)
    fashion = _build(tmp_path)
    plain = fashion.val_dataset.transform(fashion.train_dataset.images[0])
    torch.manual_seed(0)
    samples = [fashion.train_dataset[0][0] for _ in range(20)]
    flipped = [torch.equal(s, plain.flip(-1)) for s in samples]
    assert all(f or torch.equal(s, plain) for f, s in zip(flipped, samples))
    assert any(flipped) and not all(flipped)


def test_train_subset_is_seeded(tmp_path):
    make_fashion_mnist(tmp_path, n=N)
    subset = _build(tmp_path, train_subset=7, seed=4)
    expected = torch.randperm(N, generator=torch.Generator().manual_seed(4))[:7].sort().values
    _, labels = fashion_mnist_arrays(N, seed=1)
    assert subset.train_dataset.labels.tolist() == labels[expected.numpy()].tolist()
    assert len(subset.train_dataset) == 7 and len(subset.val_dataset) == N
    same = _build(tmp_path, train_subset=7, seed=4)
    assert torch.equal(same.train_dataset.images, subset.train_dataset.images)
    other = _build(tmp_path, train_subset=7, seed=5)
    assert not torch.equal(other.train_dataset.images, subset.train_dataset.images)


def test_train_subset_bounds(tmp_path):
    make_fashion_mnist(tmp_path, n=N)
    with pytest.raises(DataError, match=f"train_subset=31 exceeds the {N}"):
        _build(tmp_path, train_subset=N + 1)
    with pytest.raises(ConfigError, match="negative"):
        _build(tmp_path, train_subset=-1)
    with pytest.raises(ConfigError, match="below"):
        _build(tmp_path, image_size=20)


def test_missing_everywhere_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as info:
        _build(tmp_path)
    message = str(info.value)
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert str(tmp_path / "fashion-mnist") in message and "\n" not in message


def test_failed_download_is_data_error(tmp_path, monkeypatch):
    def offline(root):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(fashion_module, "_download", offline)
    with pytest.raises(DataError, match="download failed.*apt-get install"):
        _build(tmp_path, download=True)


def test_downloaded_files_are_found(tmp_path, monkeypatch):
    def fake_download(root):
        folder = make_fashion_mnist(tmp_path / "staging", n=10)
        os.makedirs(root / "FashionMNIST")
        folder.rename(root / "FashionMNIST" / "raw")

    monkeypatch.setattr(fashion_module, "_download", fake_download)
    assert len(_build(tmp_path, download=True).train_dataset) == 10


def test_partial_folder_names_the_missing_file(tmp_path):
    folder = make_fashion_mnist(tmp_path, n=N)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        _build(tmp_path)


def test_labels_must_match_images(tmp_path):
    folder = make_fashion_mnist(tmp_path, n=N, compress=False)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(N - 1, np.uint8))
    with pytest.raises(DataError, match="one label per image"):
        _build(tmp_path)


def test_system_folder_is_used(tmp_path, monkeypatch):
    system = make_fashion_mnist(tmp_path / "usr-share", n=10)
    monkeypatch.setattr(fashion_module, "SYSTEM_DIRS", (str(system),))
    fashion = _build(tmp_path / "empty-data-dir")
    assert len(fashion.train_dataset) == 10


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="package dataset-fashion-mnist not installed")
def test_debian_package_files(tmp_path, monkeypatch):
    """The real files the Debian package ships: gzipped IDX, 60000 + 10000 images."""
    monkeypatch.setattr(fashion_module, "SYSTEM_DIRS", (str(DEBIAN_DIR),))
    with gzip.open(DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz") as handle:
        assert handle.read(8) == bytes([0, 0, 8, 1, 0, 0, 0x27, 0x10])
    fashion = _build(tmp_path, train_subset=100)
    assert len(fashion.train_dataset) == 100 and len(fashion.val_dataset) == 10000
    assert fashion.val_dataset[0][0].shape == (3, 32, 32)
    assert sorted(set(fashion.val_dataset.labels.tolist())) == list(range(10))
    # the documented statistics belong to these files
    train = read_idx(DEBIAN_DIR / "train-images-idx3-ubyte.gz").astype(np.float64) / 255
    assert abs(train.mean() - MEAN) < 5e-4 and abs(train.std() - STD) < 5e-4
