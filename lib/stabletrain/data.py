"""A deterministic synthetic segmentation dataset: shapes on a noisy background. Sample ``i``
comes from ``numpy.random.default_rng([seed, split, i])``. Masks: ``num_classes=1`` float
``(1, H, W)`` in {0, 1}; ``2`` int ``(H, W)`` (1 any shape); ``len(shapes) + 1`` int ``(H, W)``,
``1 + k`` for the k-th shape kind."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .checks import check_bool, check_choice, check_float, check_int, check_range
from .distributed import is_distributed, rank, world_size

SHAPES = ("circle", "rectangle", "triangle")
_SPLITS = {"train": 0, "val": 1, "test": 2}


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(2 * sigma)))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image, radius, mode="reflect")
    rows = sum(k * padded[:, i : i + image.shape[1]] for i, k in enumerate(kernel))
    return sum(k * rows[i : i + image.shape[0], :] for i, k in enumerate(kernel))


class ShapesSegmentation(Dataset):
    """Synthetic shapes data, generated once; ``images`` ``(N, 1, H, W)``, ``masks`` as above.
    ``object_size``: radius range (fraction of ``image_size``); ``contrast``: range of
    object-minus-background intensity."""

    def __init__(
        self,
        num_samples: int,
        image_size: int = 64,
        num_classes: int = 1,
        seed: int = 0,
        *,
        split: str = "train",
        shapes: Sequence[str] = SHAPES,
        objects_per_image: tuple[int, int] = (1, 4),
        object_size: tuple[float, float] = (0.08, 0.2),
        noise_std: float = 0.1,
        blur_sigma: float = 0.7,
        contrast: tuple[float, float] = (0.3, 1.0),
    ) -> None:
        self.num_samples = num_samples = check_int("num_samples", num_samples, min=1)
        self.image_size = image_size = check_int("image_size", image_size, min=16)
        self.split = check_choice("split", split, tuple(_SPLITS))
        self.shapes = shapes = tuple(shapes)
        if not shapes or any(s not in SHAPES for s in shapes) or len(set(shapes)) != len(shapes):
            raise ValueError(f"shapes must be distinct names from {SHAPES}, got {shapes!r}")
        self.num_classes = check_choice("num_classes", num_classes, sorted({1, 2, len(shapes) + 1}))
        per_image = check_range("objects_per_image", objects_per_image, min=1, integer=True)
        self.objects_per_image = per_image
        self.object_size = check_range("object_size", object_size, min=0.005, max=0.5)
        self.contrast = check_range("contrast", contrast, min=0.0, max=10.0)
        self.noise_std = check_float("noise_std", noise_std, min=0)
        self.blur_sigma = check_float("blur_sigma", blur_sigma, min=0)
        self.seed = check_int("seed", seed, min=0)
        images, labels = map(np.stack, zip(*(self._draw(i) for i in range(num_samples))))
        self.images = torch.from_numpy(images)
        if num_classes <= 2:  # any shape is the foreground
            labels = labels > 0
        masks = labels.astype(np.float32)[:, None] if num_classes == 1 else labels.astype(np.int64)
        self.masks = torch.from_numpy(masks)

    def _draw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        n = self.image_size
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
        background = rng.uniform(0.0, 0.3)
        image, labels = np.full((n, n), background), np.zeros((n, n), dtype=np.int64)
        for _ in range(rng.integers(self.objects_per_image[0], self.objects_per_image[1] + 1)):
            kind = int(rng.integers(len(self.shapes)))
            radius = rng.uniform(*self.object_size) * n
            cy, cx = rng.uniform(radius, n - radius, size=2)
            shape = self.shapes[kind]
            if shape == "circle":
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            elif shape == "rectangle":
                h, w = radius, radius * rng.uniform(0.5, 1.0)
                h, w = (w, h) if rng.random() >= 0.5 else (h, w)
                inside = (np.abs(yy - cy) <= h) & (np.abs(xx - cx) <= w)
            else:  # triangle: three vertices on the circle of this radius
                angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.0, 4.0]) * np.pi / 3
                vy = (cy + radius * np.sin(angles))[:, None, None]
                vx = (cx + radius * np.cos(angles))[:, None, None]
                wy, wx = np.roll(vy, -1, axis=0), np.roll(vx, -1, axis=0)
                sides = (vx - xx) * (wy - yy) - (vy - yy) * (wx - xx)  # (3, n, n)
                inside = (sides >= 0).all(0) | (sides <= 0).all(0)
            image[inside] = background + rng.uniform(*self.contrast)
            labels[inside] = kind + 1 if self.num_classes > 2 else 1
        image = _blur(image, self.blur_sigma) if self.blur_sigma > 0 else image
        image = image + rng.normal(0.0, self.noise_std, size=image.shape)
        return image.astype(np.float32)[None], labels

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.masks[index]

    def foreground_fraction(self) -> float:
        """Fraction of pixels that belong to any object (the class balance)."""
        return float((self.masks > 0.5).float().mean())


def make_loaders(
    num_train: int = 256,
    num_val: int = 64,
    batch_size: int = 16,
    *,
    image_size: int = 64,
    num_classes: int = 1,
    seed: int = 0,
    num_workers: int = 0,
    distributed: bool = False,
    **dataset_kwargs,
) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled by ``train_loader.generator``, seeded) and val loaders; kwargs go to both.
    ``distributed`` (in a process group): ``batch_size`` is per rank, a ``DistributedSampler``
    shuffles by ``seed`` and epoch, each rank validates on every ``world``-th sample, unpadded."""
    check_int("num_train", num_train, min=1), check_int("num_val", num_val, min=1)
    workers = check_int("num_workers", num_workers, min=0)
    options = {"batch_size": check_int("batch_size", batch_size, min=1), "num_workers": workers}
    train, val = (
        ShapesSegmentation(n, image_size, num_classes, seed, split=split, **dataset_kwargs)
        for n, split in ((num_train, "train"), (num_val, "val"))
    )
    if check_bool("distributed", distributed) and is_distributed():
        sampler = DistributedSampler(train, shuffle=True, seed=seed)
        shard = Subset(val, range(rank(), len(val), world_size()))
        return DataLoader(train, sampler=sampler, **options), DataLoader(shard, **options)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, shuffle=True, generator=generator, **options)
    return train_loader, DataLoader(val, shuffle=False, **options)
