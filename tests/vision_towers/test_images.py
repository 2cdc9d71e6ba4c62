"""prepare_images: uint8 Fashion-MNIST photos -> normalised tower input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from features.datasets.fashion_mnist import load_split
from vision_towers.images import FMNIST_MEAN, FMNIST_STD, prepare_images

pytestmark = pytest.mark.unit


def test_normalisation_constants_match_the_training_set() -> None:
    images, _ = load_split("train")
    # Exact moments from the 256-bin histogram: no float copy of the 47M pixels.
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = (counts * values).sum() / counts.sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    assert mean == pytest.approx(FMNIST_MEAN, abs=1e-4)
    assert std == pytest.approx(FMNIST_STD, abs=1e-4)


def test_grayscale_to_rgb_resized_matches_torchvision() -> None:
    images, _ = load_split("test")
    batch = images[:4]
    out = prepare_images(batch, in_chans=3, img_size=64)
    assert out.shape == (4, 3, 64, 64) and out.dtype == torch.float32
    scaled = (torch.from_numpy(batch.copy()).float().unsqueeze(1) / 255.0 - FMNIST_MEAN) / FMNIST_STD
    ref = TF.resize(scaled, [64, 64], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
    for c in range(3):
        torch.testing.assert_close(out[:, c : c + 1], ref)


def test_native_size_is_only_normalised() -> None:
    batch = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    out = prepare_images(batch, in_chans=1, img_size=28)
    torch.testing.assert_close(out, (batch.float() / 255.0 - FMNIST_MEAN) / FMNIST_STD)
    assert out.min() >= -FMNIST_MEAN / FMNIST_STD - 1e-6 and out.max() <= (1 - FMNIST_MEAN) / FMNIST_STD + 1e-6


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((2, 28, 28), dtype=np.float32), "uint8"),
        (np.zeros((28, 28), dtype=np.uint8), "B x H x W"),
        (np.zeros((2, 3, 28, 28), dtype=np.uint8), "in_chans=1"),
    ],
)
def test_rejects_bad_inputs(images: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        prepare_images(images, in_chans=1, img_size=32)
