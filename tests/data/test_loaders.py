"""Loaders: epoch e's order and augmentation depend on (seed, e) only, so resume is exact."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from data.loaders import (
    EpochShuffleSampler,
    SeededLoader,
    ShardSampler,
    build_loader,
    epoch_seed,
    set_epoch,
)


class _RandomDraws(Dataset):
    """Item i = (i, a torch draw, a numpy draw): stands in for random augmentation."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int):
        return index, torch.rand(()), float(np.random.rand())


def _epoch(loader: DataLoader, epoch: int):
    set_epoch(loader, epoch)
    indices, torch_draws, numpy_draws = zip(*[tuple(batch) for batch in loader])
    return torch.cat(indices).tolist(), torch.cat(torch_draws), torch.cat(numpy_draws)


def _loader(workers: int, seed: int = 5, persistent: bool = False) -> SeededLoader:
    return build_loader(
        _RandomDraws(),
        batch_size=4,
        shuffle=True,
        workers=workers,
        pin_memory=False,
        seed=seed,
        persistent_workers=persistent,
    )


def test_epoch_shuffle_sampler_is_randperm_of_seed_plus_epoch():
    sampler = EpochShuffleSampler(50, seed=7)
    sampler.set_epoch(3)
    expected = torch.randperm(50, generator=torch.Generator().manual_seed(10)).tolist()
    assert list(sampler) == expected
    assert list(sampler) == expected  # iterating twice does not advance anything
    assert sorted(expected) == list(range(50))
    assert len(sampler) == 50
    sampler.set_epoch(4)
    assert list(sampler) != expected


def test_epoch_seed_is_fixed_and_distinct():
    assert epoch_seed(1, 2) == epoch_seed(1, 2)
    seeds = {epoch_seed(s, e) for s in range(4) for e in range(4)}
    assert len(seeds) == 16
    assert all(0 <= s < 2**63 for s in seeds)


def test_same_seed_same_order_other_epoch_other_order():
    first, second = _loader(0), _loader(0)
    assert _epoch(first, 0)[0] == _epoch(second, 0)[0]
    assert _epoch(first, 1)[0] != _epoch(first, 0)[0]
    assert _epoch(_loader(0, seed=6), 0)[0] != _epoch(first, 0)[0]


def test_unshuffled_loader_is_sequential():
    loader = build_loader(
        _RandomDraws(), batch_size=5, shuffle=False, workers=0, pin_memory=False, seed=0
    )
    assert _epoch(loader, 3)[0] == list(range(12))


def test_workers_resumed_epoch_equals_unbroken_epoch():
    """Order, torch draws and numpy draws of epoch 2 match whether epochs 0-1 ran or not."""
    unbroken = _loader(workers=2)
    for epoch in range(2):
        _epoch(unbroken, epoch)
    order, torch_draws, numpy_draws = _epoch(unbroken, 2)
    resumed_order, resumed_torch, resumed_numpy = _epoch(_loader(workers=2), 2)
    assert order == resumed_order
    assert torch.equal(torch_draws, resumed_torch)
    assert torch.equal(numpy_draws, resumed_numpy)
    # and the draws really change from epoch to epoch
    assert not torch.equal(_epoch(_loader(workers=2), 1)[1], torch_draws)


def test_no_workers_draws_follow_global_rng():
    """With workers=0 augmentation uses the global RNG, which the trainer checkpoints."""
    loader = _loader(workers=0)
    torch.manual_seed(0)
    np.random.seed(0)
    first = _epoch(loader, 1)
    torch.manual_seed(0)
    np.random.seed(0)
    again = _epoch(_loader(workers=0), 1)
    assert first[0] == again[0] and torch.equal(first[1], again[1])


def test_shard_sampler_covers_each_index_once_without_padding():
    shards = [list(ShardSampler(10, num_replicas=3, rank=r)) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert [len(ShardSampler(10, num_replicas=3, rank=r)) for r in range(3)] == [4, 3, 3]
    assert list(ShardSampler(4)) == [0, 1, 2, 3]  # no process group: one replica


def test_set_epoch_on_plain_loader_reaches_its_sampler():
    sampler = EpochShuffleSampler(6, seed=0)
    set_epoch(DataLoader(range(6), sampler=sampler), 9)
    assert sampler.epoch == 9


def test_distributed_loaders_use_seeded_samplers(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        train = build_loader(
            _RandomDraws(), batch_size=4, shuffle=True, workers=0, pin_memory=False, seed=3,
            distributed=True,
        )  # fmt: skip
        val = build_loader(
            _RandomDraws(), batch_size=4, shuffle=False, workers=0, pin_memory=False, seed=3,
            distributed=True,
        )  # fmt: skip
        assert isinstance(train.sampler, DistributedSampler) and train.sampler.seed == 3
        assert isinstance(val.sampler, ShardSampler)
        order = _epoch(train, 4)[0]
        assert sorted(order) == list(range(12)) and order == _epoch(train, 4)[0]
        assert order != _epoch(train, 5)[0]
        assert _epoch(val, 4)[0] == list(range(12))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_settings(workers):
    loader = _loader(workers)
    assert loader.persistent_workers is False  # by default: persistent workers break resume
    assert loader.generator is not None and loader.seed == 5
    assert (loader.worker_init_fn is not None) == (workers > 0)


def test_persistent_workers_keep_the_order_and_their_processes():
    """Asked for, workers live across epochs; the order of each epoch is still (seed, epoch)'s,
    the augmentation draws of a resumed epoch are not (the documented price)."""
    persistent = _loader(workers=2, persistent=True)
    assert persistent.persistent_workers is True
    epochs = [_epoch(persistent, epoch) for epoch in range(3)]
    iterator = persistent._iterator
    assert iterator is not None  # kept between epochs
    _epoch(persistent, 3)
    assert persistent._iterator is iterator  # the same worker processes served epoch 3
    for epoch, (order, _, _) in enumerate(epochs):
        assert order == _epoch(_loader(workers=2), epoch)[0]
    assert not torch.equal(epochs[2][1], _epoch(_loader(workers=2, persistent=True), 2)[1])
    assert _loader(workers=0, persistent=True).persistent_workers is False  # needs workers
