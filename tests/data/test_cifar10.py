"""CIFAR-10: our reader of the python-batch format, the original augmentation, clear errors."""

import pickle

import numpy as np
import pytest
import torch

import data.cifar10 as cifar10_module
from data.cifar10 import CIFAR10, CIFAR10_MEAN, CIFAR10_STD, read_cifar_batch
from data.loaders import set_epoch
from genutil.config import Config
from genutil.errors import ConfigError, DataError
from tests.data.fakes import CIFAR10_LABEL_NAMES, cifar10_arrays, make_cifar10, write_cifar_batch

N = 20  # images per batch file


def _build(data_dir, **overrides) -> CIFAR10:
    kwargs = {"batch_size": 8, "test_batch_size": 16, "workers": 0, "seed": 1, "download": False}
    kwargs.update(overrides)
    return CIFAR10(data_dir=str(data_dir), **kwargs)


@pytest.fixture
def data_dir(tmp_path):
    make_cifar10(tmp_path, n_per_batch=N)
    return tmp_path


def _normalized(pixels: np.ndarray, side: int = 32) -> torch.Tensor:
    image = torch.from_numpy(pixels.reshape(3, side, side)).float() / 255
    mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
    return (image - mean[:, None, None]) / std[:, None, None]


def test_sizes_labels_and_classes(data_dir):
    cifar = _build(data_dir)
    assert len(cifar.train_dataset) == 5 * N and len(cifar.val_dataset) == N
    assert cifar.num_classes == 10 and cifar.classes == CIFAR10_LABEL_NAMES
    expected_train = [label for k in range(1, 6) for label in cifar10_arrays(N, seed=k)[1]]
    assert cifar.train_dataset.labels.tolist() == expected_train
    images, labels = next(iter(cifar.val_loader))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert labels.tolist() == cifar10_arrays(N, seed=0)[1][:16]


def test_val_is_exact_normalisation_of_the_pixels(data_dir):
    cifar = _build(data_dir)
    pixels, _ = cifar10_arrays(N, seed=0)
    for index in (0, 7, N - 1):
        image, _ = cifar.val_dataset[index]
        assert torch.allclose(image, _normalized(pixels[index]), atol=1e-6)


def test_train_augmentation_is_padded_crop_and_flip(data_dir):
    """Every train sample is one of the 9x9 crops of the 4-pixel zero-padded image, maybe
    flipped, and all offsets (0 to 8) occur."""
    cifar = _build(data_dir)
    pixels, _ = cifar10_arrays(N, seed=1)
    padded_pixels = np.pad(pixels[0].reshape(3, 32, 32), ((0, 0), (4, 4), (4, 4)))
    padded = _normalized(padded_pixels.reshape(-1), side=40)
    offsets = [(top, left, flip) for top in range(9) for left in range(9) for flip in (0, 1)]
    candidates = torch.stack([_crop(padded, *offset) for offset in offsets])  # [162, 3, 32, 32]
    torch.manual_seed(0)
    seen = set()
    for _ in range(120):
        sample, _ = cifar.train_dataset[0]
        distance = (candidates - sample).abs().flatten(1).amax(1)
        matches = (distance < 1e-6).nonzero().flatten().tolist()
        assert len(matches) == 1, "sample is not a padded crop (or flip) of the image"
        seen.add(offsets[matches[0]])
    assert {flip for _, _, flip in seen} == {0, 1}
    assert {top for top, _, _ in seen} == set(range(9))
    assert {left for _, left, _ in seen} == set(range(9))


def _crop(image: torch.Tensor, top: int, left: int, flip: int) -> torch.Tensor:
    crop = image[:, top : top + 32, left : left + 32]
    return crop.flip(-1) if flip else crop


def test_same_seed_same_batches_other_epoch_other_order(data_dir):
    def epoch(cifar, e):
        set_epoch(cifar.train_loader, e)
        torch.manual_seed(123)  # workers=0: augmentation uses the global RNG
        return [(x, y) for x, y in cifar.train_loader]

    first, second = epoch(_build(data_dir), 0), epoch(_build(data_dir), 0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    other = epoch(_build(data_dir), 1)
    assert torch.cat([y for _, y in other]).tolist() != torch.cat([y for _, y in first]).tolist()
    other_seed = epoch(_build(data_dir, seed=2), 0)
    assert (
        torch.cat([y for _, y in other_seed]).tolist() != torch.cat([y for _, y in first]).tolist()
    )


def test_resumed_epoch_matches_unbroken_run_with_workers(data_dir):
    def epoch(cifar, e):
        set_epoch(cifar.train_loader, e)
        return torch.cat([x for x, _ in cifar.train_loader])

    unbroken = _build(data_dir, workers=2)
    epoch(unbroken, 0)
    assert torch.equal(epoch(unbroken, 1), epoch(_build(data_dir, workers=2), 1))


def test_accepts_batches_folder_directly_under_data_dir(tmp_path):
    make_cifar10(tmp_path / "elsewhere", n_per_batch=10)
    (tmp_path / "elsewhere" / "cifar10" / "cifar-10-batches-py").rename(
        tmp_path / "cifar-10-batches-py"
    )
    assert len(_build(tmp_path).train_dataset) == 50


def test_missing_folder_names_path_and_url(tmp_path):
    with pytest.raises(DataError) as info:
        _build(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar10" / "cifar-10-batches-py") in message
    assert cifar10_module.CIFAR10_URL in message and "\n" not in message


def test_failed_download_is_one_line_data_error(tmp_path, monkeypatch):
    def offline(root):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>\nmore")

    monkeypatch.setattr(cifar10_module, "_download", offline)
    with pytest.raises(DataError, match="download failed") as info:
        _build(tmp_path, download=True)
    assert str(tmp_path / "cifar10") in str(info.value) and "\n" not in str(info.value)


def test_download_fills_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar10_module, "_download", lambda root: make_cifar10(root.parent, 10))
    assert len(_build(tmp_path, download=True).val_dataset) == 10


def test_missing_batch_file_is_named(data_dir):
    (data_dir / "cifar10" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        _build(data_dir)


@pytest.mark.parametrize(
    "content",
    [b"not a pickle at all", pickle.dumps([1, 2, 3], protocol=2), pickle.dumps({b"x": 1})],
    ids=["garbage", "list", "wrong-keys"],
)
def test_corrupt_batch_is_named(data_dir, content):
    (data_dir / "cifar10" / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    with pytest.raises(DataError, match="test_batch"):
        _build(data_dir)


def test_wrong_array_size_is_named(data_dir):
    path = data_dir / "cifar10" / "cifar-10-batches-py" / "data_batch_2"
    write_cifar_batch(path, np.zeros((N, 1024), np.uint8), [0] * N, "bad")
    with pytest.raises(DataError, match="data_batch_2.*1024 values per image"):
        _build(data_dir)


def test_label_count_mismatch_and_range(tmp_path):
    path = tmp_path / "batch"
    write_cifar_batch(path, np.zeros((3, 3072), np.uint8), [0, 1], "bad")
    with pytest.raises(DataError, match="3 images but 2 labels"):
        read_cifar_batch(path)
    write_cifar_batch(path, np.zeros((2, 3072), np.uint8), [0, 10], "bad")
    with pytest.raises(DataError, match="labels outside"):
        read_cifar_batch(path)


def test_planted_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refused global"):
        read_cifar_batch(path)
    assert not marker.exists()


@pytest.mark.parametrize("core", [b"numpy.core", b"numpy._core"])
def test_reads_pickles_of_either_numpy_and_str_keys(tmp_path, core):
    """numpy 1 writes numpy.core.multiarray, numpy 2 numpy._core; Python 2 files have str keys."""
    data, labels = cifar10_arrays(4, seed=3)
    raw = pickle.dumps({"data": data, "labels": labels}, protocol=2)
    raw = raw.replace(b"numpy._core.", b"numpy.core.").replace(b"numpy.core.", core + b".")
    assert core + b".multiarray\n_reconstruct" in raw
    (tmp_path / "batch").write_bytes(raw)
    images, read_labels = read_cifar_batch(tmp_path / "batch")
    assert np.array_equal(images.reshape(4, -1), data) and read_labels.tolist() == labels


def test_reads_protocol_5_pickles_into_writable_arrays(tmp_path):
    """Protocol 5 rebuilds arrays with _frombuffer (read-only); torch needs them writable."""
    data, labels = cifar10_arrays(3, seed=4)
    (tmp_path / "batch").write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=5))
    images, _ = read_cifar_batch(tmp_path / "batch")
    assert images.flags.writeable and images.flags.c_contiguous
    assert np.array_equal(images.reshape(3, -1), data)


def test_wrong_image_size_is_config_error(data_dir):
    with pytest.raises(ConfigError, match="image_size: 32"):
        _build(data_dir, image_size=64)


def test_from_config_reads_the_keys(data_dir):
    cfg = Config(
        data_dir=str(data_dir), batch_size=4, test_batch_size=10, workers=0, seed=3, download=False
    )
    cifar = CIFAR10.from_config(cfg)
    assert cifar.train_loader.batch_size == 4 and cifar.val_loader.batch_size == 10
    assert cifar.train_loader.seed == 3


def test_codecs_other_than_latin1_are_refused(tmp_path):
    (tmp_path / "batch").write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(DataError, match="refused _codecs.encode"):
        read_cifar_batch(tmp_path / "batch")
