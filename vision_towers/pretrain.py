"""Pretrain towers as Fashion-MNIST classifiers (no downloadable weights offline) and load them back.

A checkpoint is a plain dict, loadable with ``torch.load(..., weights_only=True)``::

    {"tower": name, "overrides": {...plain values...}, "num_classes": 10, "state_dict": {...}, "meta": {...}}

With ``teacher=`` (a checkpoint of an EET ViT), the student is trained with EET's discriminative transfer
(``vision_towers.eet.EETLoss``) instead of plain cross-entropy; the teacher and the loss weights go into ``meta``.

Example::

    tower = pretrain("efficientmod_fm", "ckpt/efficientmod_fm.pt", n_train=3000, epochs=1)
    frozen = load_pretrained("ckpt/efficientmod_fm.pt")  # eval mode, requires_grad=False
    pretrain("vit_fm_teacher", "ckpt/teacher.pt", n_train=3000, epochs=6)
    pretrain("eet_vit_fm", "ckpt/eet_vit_fm.pt", n_train=3000, epochs=6, teacher="ckpt/teacher.pt")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from features.datasets.fashion_mnist import CLASS_NAMES, load_split

from ._registry import create_tower
from .eet import EETLoss, EETViT
from .images import prepare_images

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def classification_loss(tower: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``tower.classify(tower(images))``; images B x C x H x W, labels B."""
    return F.cross_entropy(tower.classify(tower(images)), labels)


def train_classifier(
    tower: nn.Module,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    loss_fn: LossFn = classification_loss,
) -> list[float]:
    """Trains ``tower`` in place with AdamW (weight decay 0.05) and a per-step cosine schedule; returns step losses.

    Args:
        tower: a registered tower built with ``num_classes > 0``.
        images_uint8: n x 28 x 28 uint8 photos (``prepare_images`` resizes them per batch).
        labels: n class ids.
        epochs: passes over the data, shuffled with ``seed``.
        batch_size: images per step.
        lr: peak learning rate.
        seed: seeds the parameter-independent randomness (shuffling, drop path).
        loss_fn: ``(tower, images B x C x H x W, labels B) -> scalar``; EET passes its distillation loss here.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW((p for p in tower.parameters() if p.requires_grad), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(labels) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    y_all = torch.tensor(labels, dtype=torch.long)
    losses = []
    tower.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=gen)
        for start in range(0, len(labels), batch_size):
            idx = order[start : start + batch_size]
            x = prepare_images(images_uint8[idx.numpy()], tower.in_chans, tower.img_size)
            loss = loss_fn(tower, x, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    tower.eval()
    return losses


@torch.no_grad()
def evaluate(tower: nn.Module, images_uint8: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``tower.classify(tower(images))`` on n x 28 x 28 uint8 photos."""
    tower.eval()
    y_all = torch.tensor(labels, dtype=torch.long)
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = prepare_images(images_uint8[start : start + batch_size], tower.in_chans, tower.img_size)
        pred = tower.classify(tower(x)).argmax(dim=-1)
        correct += int((pred == y_all[start : start + batch_size]).sum())
    return correct / len(labels)


def fmnist_subset(split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset of n Fashion-MNIST photos (n x 28 x 28 uint8) and labels."""
    images, labels = load_split(split)
    idx = np.random.default_rng(seed).permutation(len(labels))[:n]
    return images[idx], labels[idx]


def load_teacher(path: str | Path, student: nn.Module) -> tuple[str, EETViT]:
    """The frozen teacher of EET's discriminative transfer, checked against ``student`` before any training.

    Raises ``ValueError`` (one line naming the file) unless ``path`` is a ``pretrain`` checkpoint of an EET ViT
    (the teacher must expose its patch importance) with the student's classes and input (C x H x W), since the
    teacher scores and masks the very images the student sees. Returns (the teacher's tower name, the teacher).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--teacher {path}: not found; pretrain one with `ranker pretrain-tower vit_fm --out {path}`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: torch raises pickle/zip errors of many kinds
        raise ValueError(f"--teacher {path}: not a tower checkpoint of `ranker pretrain-tower` ({err})") from err
    if not isinstance(ckpt, dict) or not {"tower", "state_dict", "num_classes"} <= set(ckpt):
        raise ValueError(f"--teacher {path}: not a tower checkpoint of `ranker pretrain-tower`")
    teacher = load_pretrained(path)
    if not isinstance(teacher, EETViT):
        raise ValueError(
            f"--teacher {path}: holds a {ckpt['tower']!r}; EET's transfer needs an EET ViT teacher "
            "(vit_fm, vit_fm_teacher) for its patch importance"
        )
    want = (student.num_classes, student.in_chans, student.img_size)
    have = (teacher.num_classes, teacher.in_chans, teacher.img_size)
    if have != want:
        raise ValueError(
            f"--teacher {path}: a {ckpt['tower']!r} with {have[0]} classes at {have[1]}x{have[2]}x{have[2]}, "
            f"but the student needs {want[0]} classes at {want[1]}x{want[2]}x{want[2]}"
        )
    return ckpt["tower"], teacher


def pretrain(
    name: str,
    path: str | Path | None = None,
    n_train: int = 3000,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    teacher: str | Path | None = None,
    transfer: EETLoss | None = None,
    **overrides: Any,
) -> nn.Module:
    """Builds tower ``name`` with a 10-class head, trains it on a seeded Fashion-MNIST subset, saves it to ``path``.

    ``teacher``: a checkpoint of an EET ViT (see ``load_teacher``); the student is then trained with
    ``transfer`` (default ``EETLoss()``, the released code's weights) instead of cross-entropy.
    ``overrides`` go to ``create_tower`` and into the checkpoint, so they must be plain values (numbers, strings,
    tuples): ``weights_only`` loading refuses anything else.
    """
    torch.manual_seed(seed)
    tower = create_tower(name, num_classes=len(CLASS_NAMES), **overrides)
    meta: dict[str, Any] = {"n_train": n_train, "epochs": epochs, "seed": seed}
    loss_fn: LossFn = classification_loss
    if teacher is not None:
        teacher_name, frozen_teacher = load_teacher(teacher, tower)
        eet_loss = transfer or EETLoss()
        meta |= {"teacher": str(teacher), "teacher_tower": teacher_name, "transfer": eet_loss.settings()}

        def distil(student: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return eet_loss(student, frozen_teacher, images, labels)[0]

        loss_fn = distil

    images, labels = fmnist_subset("train", n_train, seed)
    losses = train_classifier(tower, images, labels, epochs, batch_size, lr, seed, loss_fn)
    if path is not None:
        save_checkpoint(tower, name, path, overrides, meta=meta | {"final_loss": losses[-1]})
    return tower


def save_checkpoint(
    tower: nn.Module, name: str, path: str | Path, overrides: dict[str, Any], meta: dict[str, Any] | None = None
) -> None:
    """Writes the weights-only checkpoint dict described in the module docstring."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "tower": name,
        "overrides": dict(overrides),
        "num_classes": tower.num_classes,
        "state_dict": tower.state_dict(),
        "meta": meta or {},
    }
    torch.save(ckpt, path)


def load_pretrained(path: str | Path, freeze: bool = True) -> nn.Module:
    """Rebuilds the checkpointed tower and loads its weights (strict).

    ``freeze=True``: every parameter gets ``requires_grad=False`` and the tower is put in eval mode (our towers have
    no dropout or batch norm, so a later ``.train()`` from an enclosing model changes nothing but drop path, which is
    0 in the registered configs). ``freeze=False``: trainable, for fine-tuning inside the ranker.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    tower = create_tower(ckpt["tower"], num_classes=ckpt["num_classes"], **ckpt["overrides"])
    tower.load_state_dict(ckpt["state_dict"], strict=True)
    tower.requires_grad_(not freeze)
    return tower.eval() if freeze else tower
