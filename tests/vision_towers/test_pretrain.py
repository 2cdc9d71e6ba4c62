"""Pretraining utility: seeded training on real Fashion-MNIST photos, weights-only save/load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vision_towers import create_tower
from vision_towers.pretrain import evaluate, fmnist_subset, load_pretrained, pretrain, train_classifier

pytestmark = pytest.mark.unit

# A small ConvFormer so a few hundred photos train in seconds; the overrides also exercise checkpointing them.
TINY = dict(img_size=32, dims=(16, 32, 32, 64), depths=(1, 1, 1, 1))


def test_round_trip_frozen_and_trainable(tmp_path: Path) -> None:
    path = tmp_path / "tower.pt"
    tower = pretrain("convformer_fm", path, n_train=300, epochs=1, batch_size=50, **TINY)

    ckpt = torch.load(path, weights_only=True)
    assert ckpt["tower"] == "convformer_fm" and ckpt["num_classes"] == 10 and ckpt["overrides"] == TINY

    images, labels = fmnist_subset("test", 64, seed=1)
    frozen = load_pretrained(path)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    trainable = load_pretrained(path, freeze=False)
    assert all(p.requires_grad for p in trainable.parameters())
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        for loaded in (frozen, trainable.eval()):
            torch.testing.assert_close(loaded.classify(loaded(x)), tower.classify(tower(x)), rtol=0, atol=0)
    assert evaluate(frozen, images, labels) == evaluate(tower, images, labels)


def test_training_is_seeded() -> None:
    runs = [pretrain("convformer_fm", None, n_train=100, epochs=1, batch_size=50, seed=3, **TINY) for _ in range(2)]
    for (k, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_training_fits_a_few_hundred_photos() -> None:
    """Sanity: loss falls and training accuracy beats chance (10%) by a wide margin after a few epochs."""
    torch.manual_seed(0)
    tower = create_tower("convformer_fm", num_classes=10, **TINY)
    images, labels = fmnist_subset("train", 256)
    losses = train_classifier(tower, images, labels, epochs=4, batch_size=32, lr=3e-3)
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:8]) / 8
    assert evaluate(tower, images, labels) > 0.5
