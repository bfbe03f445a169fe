"""Image augmentation in torch, and a tensor dataset that applies it (training splits only).

:class:`RandomCropFlip` is the usual CIFAR augmentation: pad by ``padding`` pixels (zeros),
crop a random window of the original size, flip horizontally with probability 1/2. It works on
one image ``[C, H, W]`` or a batch ``[B, C, H, W]`` (every image its own offset and flip), drawing
from torch's global generator (seeded by ``bd.fit``) or from ``generator``.

:class:`AugmentedTensors` holds ``(inputs, targets)`` like a ``TensorDataset`` (its ``tensors``
are the raw data, which ``DatasetBundle.tensors`` returns) and applies the transform whenever
examples are read; ``__getitems__`` augments a whole batch in one vectorized call (the
``DataLoader`` uses it). It is deliberately not a ``TensorDataset``: the training engine slices
``TensorDataset`` s directly on the device and would skip the augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["RandomCropFlip", "AugmentedTensors"]


class RandomCropFlip:
    """Random crop after zero padding, and a random horizontal flip (see the module docstring)."""

    def __init__(self, padding: int = 4, flip: bool = True):
        if int(padding) < 0:
            raise ValueError(f"RandomCropFlip: padding must be >= 0, got {padding}")
        self.padding, self.flip = int(padding), bool(flip)

    def __call__(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        single = x.dim() == 3
        batch = x.unsqueeze(0) if single else x
        if batch.dim() != 4:
            raise ValueError(f"RandomCropFlip expects [C, H, W] or [B, C, H, W] images, got shape {tuple(x.shape)}")
        b, _, h, w = batch.shape
        p = self.padding
        if p:
            padded = F.pad(batch, (p, p, p, p))
            off = torch.randint(0, 2 * p + 1, (b, 2), generator=generator)
            rows = (off[:, :1] + torch.arange(h)).to(batch.device)  # [B, H]
            cols = (off[:, 1:] + torch.arange(w)).to(batch.device)  # [B, W]
            idx = torch.arange(b, device=batch.device)[:, None, None]
            batch = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.flip:
            flip = (torch.rand(b, generator=generator) < 0.5).to(batch.device)
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        return batch[0] if single else batch.contiguous()

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


class AugmentedTensors(Dataset):
    """``(inputs, targets)`` whose inputs pass through ``transform`` when read (see the module docstring)."""

    def __init__(self, inputs: Tensor, targets: Tensor, transform: Callable[[Tensor], Tensor]):
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(f"AugmentedTensors: {inputs.shape[0]} inputs but {targets.shape[0]} targets")
        self.tensors = (inputs, targets)
        self.transform = transform

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.tensors[0][i]), self.tensors[1][i]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        x = self.transform(self.tensors[0][idx])
        return list(zip(x.unbind(0), self.tensors[1][idx].unbind(0)))

    def subset(self, indices: Tensor) -> "AugmentedTensors":
        """The examples ``indices``, with the same transform."""
        return AugmentedTensors(self.tensors[0][indices], self.tensors[1][indices], self.transform)

    def __repr__(self) -> str:
        return f"AugmentedTensors({len(self)} examples, transform={self.transform!r})"
