"""DataLoaders whose batches are a function of (seed, epoch) alone, so a resumed run sees the
same data as an unbroken one.

Two things decide what epoch ``e`` looks like:

- the order: :class:`EpochShuffleSampler` draws the permutation of epoch ``e`` from a generator
  seeded with ``seed + e`` (or torch's ``DistributedSampler(seed=seed)`` after ``set_epoch(e)``);
- the augmentation randomness: with ``workers > 0`` each epoch starts fresh worker processes whose
  torch/random/numpy seeds are ``base_seed + worker_id``, and ``base_seed`` is drawn from
  ``loader.generator``, which :func:`set_epoch` reseeds from ``(seed, e)``. With ``workers == 0``
  augmentation draws from the global torch RNG of the main process; the trainer stores that RNG
  state in checkpoints and restores it on resume, which makes the stream continue unchanged.

Workers are not persistent unless asked (``persistent_workers``): a persistent worker is seeded
once when it starts and keeps its RNG state across epochs (torch's ``_ResumeIteration`` does not
reseed it), so epoch ``e`` of a resumed run would get different crops and flips than epoch ``e``
of an unbroken run (the order of the samples stays the same: the sampler is in this process).
Restarting workers costs about a second per epoch; by default bitwise resume is worth more.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

__all__ = [
    "EpochShuffleSampler",
    "SeededLoader",
    "ShardSampler",
    "build_loader",
    "epoch_seed",
    "build_loaders",
    "set_epoch",
    "subset_indices",
    "check_val_resize",
]

logger = logging.getLogger(__name__)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A well-mixed 63-bit seed for ``loader.generator`` in ``epoch`` (differs from seed + epoch,
    so worker seeds never coincide with the shuffle permutation's seed). Under DDP each rank
    ``> 0`` folds its rank in, so the processes draw different augmentations."""
    entropy = [seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF] + ([rank] if rank else [])
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)
    return int(state[0]) & 0x7FFF_FFFF_FFFF_FFFF


class EpochShuffleSampler(Sampler[int]):
    """Random permutation of ``range(num_samples)``, drawn from ``torch.Generator`` seeded with
    ``seed + epoch``: the order of an epoch depends on nothing that happened before it."""

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation that the next ``iter()`` yields."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


class ShardSampler(Sampler[int]):
    """Evaluation sampler under DDP: rank ``r`` of ``w`` gets indices ``r, r + w, ...`` in order.

    Unlike ``DistributedSampler`` it never pads with repeated samples, so summing correct counts
    and sample counts over ranks gives the exact accuracy on the whole set.
    """

    def __init__(
        self, num_samples: int, *, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        self.num_samples = num_samples
        self.num_replicas = num_replicas
        self.rank = rank

    def set_epoch(self, epoch: int) -> None:
        """Evaluation order does not depend on the epoch; present so every sampler has it."""

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.num_replicas))


class SeededLoader(DataLoader):
    """A DataLoader that remembers the seed its epochs derive from (see :func:`set_epoch`)."""

    def __init__(self, dataset: Dataset, *, seed: int, rank: int = 0, **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(self)`` yield epoch ``epoch``: order and worker seeds."""
        sampler = self.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(epoch_seed(self.seed, epoch, self.rank))
        self.epoch = epoch


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from the torch seed the DataLoader gave it
    (``base_seed + worker_id``), so transforms using any of the three RNGs are reproducible."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    workers: int,
    pin_memory: bool,
    seed: int,
    distributed: bool = False,
    drop_last: bool = False,
    persistent_workers: bool = False,
) -> SeededLoader:
    """A DataLoader whose epoch ``e`` (after ``set_epoch(loader, e)``) is the same in every run.

    ``shuffle`` picks :class:`EpochShuffleSampler` (or ``DistributedSampler(seed=seed)`` when
    ``distributed``); without shuffle the order is sequential (or :class:`ShardSampler` when
    ``distributed``). Starts at epoch 0, so a loop that never calls ``set_epoch`` still gets a
    fixed first epoch. ``persistent_workers`` keeps the worker processes across epochs (faster
    epoch starts; see the module docstring for what that costs a resumed run).
    """
    num_samples = len(dataset)  # type: ignore[arg-type]
    sampler: Sampler[int] | None
    if distributed and shuffle:
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=drop_last)
    elif distributed:
        sampler = ShardSampler(num_samples)
    elif shuffle:
        sampler = EpochShuffleSampler(num_samples, seed)
    else:
        sampler = None  # DataLoader's SequentialSampler
    rank = dist.get_rank() if distributed and dist.is_initialized() else 0
    loader = SeededLoader(
        dataset,
        seed=seed,
        rank=rank,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=torch.Generator(),
        worker_init_fn=_seed_worker if workers > 0 else None,
        persistent_workers=persistent_workers and workers > 0,
    )
    loader.set_epoch(0)
    logger.debug(
        "loader: %d samples, batch %d, shuffle=%s, workers=%d, distributed=%s",
        num_samples,
        batch_size,
        shuffle,
        workers,
        distributed,
    )
    return loader


def subset_indices(num_samples: int, train_subset: int, seed: int) -> torch.Tensor:
    """The ``train_subset`` training images a run uses (config key ``train_subset``), in order:
    the first of a permutation drawn from a generator seeded with ``seed``, so the same seed
    picks the same images on every machine. A DataError if there are fewer images."""
    from genutil.errors import DataError  # noqa: PLC0415

    if train_subset > num_samples:
        raise DataError(
            f"train_subset={train_subset} exceeds the {num_samples} training images: set "
            "train_subset to at most that (0: all)"
        )
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(num_samples, generator=generator)[:train_subset].sort().values


def check_val_resize(name: str, val_resize: int, image_size: int) -> None:
    """Datasets that evaluate at ``image_size`` without a resize accept ``val_resize`` only as 0
    or ``image_size`` (the authors' files set it to the image size)."""
    from genutil.errors import ConfigError  # noqa: PLC0415

    if val_resize not in (0, image_size):
        raise ConfigError(
            f"val_resize={val_resize}: {name} evaluates at image_size={image_size} without a "
            f"resize: remove val_resize (or set it to {image_size})"
        )


def build_loaders(
    train: Dataset,
    val: Dataset,
    *,
    batch_size: int,
    test_batch_size: int,
    workers: int,
    pin_memory: bool,
    seed: int,
    distributed: bool = False,
    persistent_workers: bool = False,
    train_subset: int = 0,
) -> tuple[SeededLoader, SeededLoader]:
    """The (shuffled train, in-order val) pair every dataset class hands the trainer.
    ``train_subset > 0`` trains on that many images (``subset_indices``)."""
    if train_subset:
        train = Subset(train, subset_indices(len(train), train_subset, seed).tolist())
    common = dict(
        workers=workers,
        pin_memory=pin_memory,
        seed=seed,
        distributed=distributed,
        persistent_workers=persistent_workers,
    )
    return (
        build_loader(train, batch_size=batch_size, shuffle=True, **common),
        build_loader(val, batch_size=test_batch_size, shuffle=False, **common),
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Prepare ``loader`` for epoch ``epoch``; call it before iterating each epoch.

    For a :class:`SeededLoader` this sets the sampler's epoch and reseeds ``loader.generator``
    from ``(seed, epoch)``; for any other DataLoader it sets the sampler's epoch if it has one.
    """
    if isinstance(loader, SeededLoader):
        loader.set_epoch(epoch)
    elif hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
