import hashlib

import pytest
import torch

from stabletrain.data import ShapesSegmentation, make_loaders


def digest(ds):
    return hashlib.sha256(ds.images.numpy().tobytes() + ds.masks.numpy().tobytes()).hexdigest()


def test_same_seed_same_bytes():
    assert digest(ShapesSegmentation(16, 32, seed=3)) == digest(ShapesSegmentation(16, 32, seed=3))


def test_different_seed_or_split_differs():
    a = ShapesSegmentation(8, 32, seed=0)
    assert digest(a) != digest(ShapesSegmentation(8, 32, seed=1))
    assert digest(a) != digest(ShapesSegmentation(8, 32, seed=0, split="val"))


def test_samples_independent_of_dataset_size():
    small, large = ShapesSegmentation(4, 32), ShapesSegmentation(10, 32)
    assert torch.equal(small.images, large.images[:4])


def test_binary_and_multiclass_masks():
    binary = ShapesSegmentation(8, 32)
    assert binary.masks.shape == (8, 1, 32, 32) and binary.masks.dtype == torch.float32
    assert set(binary.masks.unique().tolist()) <= {0.0, 1.0}
    multi = ShapesSegmentation(32, 32, num_classes=4)
    assert multi.masks.shape == (32, 32, 32) and multi.masks.dtype == torch.int64
    assert set(multi.masks.unique().tolist()) == {0, 1, 2, 3}
    fg = ShapesSegmentation(8, 32, num_classes=2)
    assert set(fg.masks.unique().tolist()) == {0, 1}


def test_object_size_controls_imbalance():
    big = ShapesSegmentation(32, 64, object_size=(0.15, 0.25)).foreground_fraction()
    small = ShapesSegmentation(32, 64, object_size=(0.02, 0.04)).foreground_fraction()
    assert small < 0.02 < big


def test_loaders_shuffle_reproducibly():
    def first_batch(seed):
        train, _ = make_loaders(32, 8, 8, image_size=32, seed=seed)
        return next(iter(train))[0]

    assert torch.equal(first_batch(1), first_batch(1))
    train, val = make_loaders(32, 8, 8, image_size=32)
    assert isinstance(train.generator, torch.Generator)
    assert len(val.dataset) == 8


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_samples": -1}, "num_samples"),
        ({"num_samples": 0}, "num_samples"),
        ({"image_size": 8}, "image_size"),
        ({"num_classes": 3}, "num_classes"),
        ({"split": "dev"}, "split"),
        ({"shapes": ("hexagon",)}, "shapes"),
        ({"object_size": (0.3, 0.1)}, "object_size"),
        ({"noise_std": -0.1}, "noise_std"),
    ],
)
def test_bad_arguments(kwargs, name):
    args = {"num_samples": 4, **kwargs}
    with pytest.raises(ValueError, match=name):
        ShapesSegmentation(**args)


def test_negative_sample_count_in_loaders():
    with pytest.raises(ValueError, match="num_train must be >= 1"):
        make_loaders(num_train=-5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_samples": 4.0}, "num_samples must be an int"),
        ({"noise_std": "0.1"}, "noise_std must be a number"),
        ({"object_size": 0.1}, "object_size must be a pair"),
        ({"objects_per_image": (1.5, 2)}, r"objects_per_image\[0\] must be an int"),
    ],
)
def test_wrong_types(kwargs, name):
    with pytest.raises(TypeError, match=name):
        ShapesSegmentation(**{"num_samples": 4, **kwargs})
