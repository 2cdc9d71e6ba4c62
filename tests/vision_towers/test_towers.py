"""Registry-parametrized interface tests for every small tower (the 224 px published configs are skipped here)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vision_towers as vt
from vision_towers._registry import register_tower

SMALL = vt.list_towers(published=False)
pytestmark = pytest.mark.unit

# Parameter counts (M, with the 1000-class head) of every published config: methods.md sections 2-6 / timm.
PUBLISHED_PARAMS_M = {
    "caformer_s18": 26.34,
    "convformer_s18": 26.77,
    "convit_tiny": 5.71,
    "efficientmod_s": 12.90,
    "efficientmod_xs": 6.63,
    "efficientmod_xxs": 4.74,
    "eet_vit_s16": 22.05,
    "vit_s16": 22.05,
}


def _images(tower: nn.Module, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, tower.in_chans, tower.img_size, tower.img_size)


def test_registry_lists_every_family() -> None:
    names = vt.list_towers()
    assert set(vt.list_towers(published=True)) | set(SMALL) == set(names)
    assert not set(vt.list_towers(published=True)) & set(SMALL)
    for family in ("efficientmod_", "convformer_", "caformer_", "convit_", "eet_vit_", "vit_"):
        assert any(n.startswith(family) for n in SMALL), family


def test_unknown_and_duplicate_names_raise() -> None:
    with pytest.raises(KeyError, match="unknown vision tower"):
        vt.create_tower("no_such_tower")
    with pytest.raises(ValueError, match="already registered"):

        @register_tower
        def efficientmod_fm() -> nn.Module:  # noqa: F811  (the clash is the point)
            return nn.Identity()


def test_overrides_reach_the_constructor() -> None:
    tower = vt.create_tower("efficientmod_fm", num_classes=7, in_chans=3)
    assert tower.in_chans == 3 and tower.num_classes == 7
    assert tower.classify(tower(_images(tower))).shape == (2, 7)


@pytest.mark.parametrize("name", vt.list_towers(published=True))
def test_published_configs_have_reference_sizes(name: str) -> None:
    """Every published config is 3 x 224 x 224 with 1000 classes and matches its reference parameter count."""
    assert name in PUBLISHED_PARAMS_M, f"add a reference parameter count for {name}"
    tower = vt.create_tower(name)
    assert (tower.in_chans, tower.img_size, tower.num_classes) == (3, 224, 1000)
    assert sum(p.numel() for p in tower.parameters()) / 1e6 == pytest.approx(PUBLISHED_PARAMS_M[name], abs=0.006)


@pytest.mark.parametrize("name", SMALL)
def test_forward_backward(name: str) -> None:
    tower = vt.create_tower(name, num_classes=5)
    x = _images(tower)
    emb = tower(x)
    tokens = tower.forward_tokens(x)
    logits = tower.classify(emb)
    assert emb.shape == (2, tower.embed_dim)
    assert tokens.ndim == 3 and tokens.shape[0] == 2 and tokens.shape[2] == tower.embed_dim
    assert logits.shape == (2, 5)
    assert torch.isfinite(emb).all() and torch.isfinite(tokens).all() and torch.isfinite(logits).all()

    (logits.square().mean() + tokens.square().mean()).backward()
    for n, p in tower.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {n}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {n}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {n}"


@pytest.mark.parametrize("name", SMALL)
def test_embedding_is_independent_of_the_rest_of_the_batch(name: str) -> None:
    tower = vt.create_tower(name).eval()
    x = _images(tower, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(tower(x)[1:2], tower(x[1:2]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in SMALL if n.startswith(("efficientmod_", "convit_", "eet_vit_", "vit_"))])
def test_pooled_embedding_matches_tokens(name: str) -> None:
    """Conv towers whose norm precedes pooling: embedding = token mean; ViT-style: embedding = CLS token."""
    tower = vt.create_tower(name).eval()
    x = _images(tower)
    with torch.no_grad():
        tokens, emb = tower.forward_tokens(x), tower(x)
    expected = tokens.mean(1) if name.startswith("efficientmod_") else tokens[:, 0]
    torch.testing.assert_close(emb, expected)


@pytest.mark.parametrize("name", vt.list_towers())
def test_builds_on_the_meta_device(name: str) -> None:
    """The ranker's preflight builds its tower on the meta device (no memory, no weights): every tower must allow it."""
    with torch.device("meta"):
        tower = vt.create_tower(name, num_classes=0)
    assert tower.embed_dim > 0 and all(p.is_meta for p in tower.parameters())
