"""An in-memory image dataset over one tensor, plus the small transforms shared by the datasets
that hold their images as tensors (CIFAR-10, Fashion-MNIST, digits)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

__all__ = ["RepeatChannels", "TensorImageDataset"]


class TensorImageDataset(Dataset):
    """``(transform(images[i]), int(labels[i]))`` over images ``[N, C, H, W]`` and labels ``[N]``.

    Images stay in one tensor (uint8 for stored pixels) so forked workers share it without copying.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
            raise ValueError(
                f"images must be [N, C, H, W] and labels [N]; got {tuple(images.shape)} "
                f"and {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class RepeatChannels(torch.nn.Module):
    """Grey ``[1, H, W]`` -> ``[num_channels, H, W]`` by repeating the one channel (a class, not a
    lambda, so that transforms pickle for spawned workers)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.repeat(self.num_channels, 1, 1)

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}"
