"""Pretraining utility: seeded training on real Fashion-MNIST photos, weights-only save/load round trip, EET's
discriminative transfer from a teacher checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from features.processor import fit
from features.schema import load_schema
from pipelines.train import load_config
from ranker.build import build_ranker, check_model_config, frozen_item_embeddings
from tests.helpers import write_tiny_image_dataset
from vision_towers import create_tower, prepare_images
from vision_towers.pretrain import evaluate, fmnist_subset, load_pretrained, pretrain, train_classifier

DEMO_FASHION_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo" / "fashion-image.yaml"

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


SMALL = dict(n_train=64, epochs=1, batch_size=32)  # two optimiser steps: enough to move every weight


def test_teacher_distilled_pruned_tower_loads_into_the_ranker(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.pt"
    pretrain("vit_fm", teacher, **SMALL)
    student_path = tmp_path / "student.pt"
    student = pretrain("eet_vit_fm", student_path, teacher=teacher, **SMALL)

    meta = torch.load(student_path, weights_only=True)["meta"]
    assert meta["teacher"] == str(teacher) and meta["teacher_tower"] == "vit_fm"
    released = {"ce_weight": 0.1, "mask_weight": 0.1, "cos_weight": 1.0, "kl_weight": 0.0, "mask_top": 4}
    assert meta["transfer"] == {**released, "temperature": 1.0}
    # The teacher changed training: the same seed with plain cross-entropy gives other weights.
    plain = pretrain("eet_vit_fm", None, **SMALL)
    assert not torch.equal(plain.head.weight, student.head.weight)

    # Into the ranker through the demo's config key, model.vision.pretrained, like any other tower.
    photos, _ = fmnist_subset("test", 30, seed=2)
    schema = load_schema(write_tiny_image_dataset(tmp_path / "raw", photos, n=64))
    fmap = fit(schema, tmp_path / "features")
    overrides = {"model.vision.tower": "eet_vit_fm", "model.vision.pretrained": str(student_path)}
    cfg = load_config(DEMO_FASHION_CONFIG, overrides).model
    check_model_config(fmap, cfg)
    images = np.load(tmp_path / "features" / "images.npy")
    table = frozen_item_embeddings(cfg.vision, images)
    loaded = load_pretrained(student_path)
    with torch.no_grad():
        torch.testing.assert_close(table, loaded(prepare_images(images, 1, 28)), rtol=0, atol=0)
        torch.testing.assert_close(table, student(prepare_images(images, 1, 28)), rtol=0, atol=0)
    ranker = build_ranker(fmap, cfg, images, item_embeddings=table)
    assert ranker.vision_arch is not None and ranker.vision_arch.item_embeddings.shape == (30, 128)


def test_teacher_that_does_not_fit_is_a_clear_error(tmp_path: Path) -> None:
    conv = tmp_path / "conv.pt"
    pretrain("convformer_fm", conv, n_train=32, epochs=1, batch_size=32, **TINY)
    wide = tmp_path / "vit32.pt"
    pretrain("vit_fm", wide, n_train=32, epochs=1, batch_size=32, img_size=32)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    not_a_tower = tmp_path / "dict.pt"
    torch.save({"weights": torch.zeros(1)}, not_a_tower)
    cases = {
        conv: "holds a 'convformer_fm'; EET's transfer needs an EET ViT teacher",
        wide: "10 classes at 1x32x32, but the student needs 10 classes at 1x28x28",
        junk: "not a tower checkpoint",
        not_a_tower: "not a tower checkpoint",
        tmp_path / "missing.pt": "not found; pretrain one with `ranker pretrain-tower vit_fm",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=re.escape(f"--teacher {path}: ") + ".*" + re.escape(message)):
            pretrain("eet_vit_fm", tmp_path / "never.pt", teacher=path, **SMALL)
    assert not (tmp_path / "never.pt").exists()
