"""EET: CTP token pruning against naive per-sample references, ViT parity with timm, MACs, discriminative transfer."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import vision_towers as vt
from vision_towers.eet import EETLoss, EETViT, mask_patches, token_importance

pytestmark = pytest.mark.unit


def _tiny(**overrides: object) -> EETViT:
    """methods.md section 7 test config: D 64, 6 blocks, 2 heads, 32 x 32 input, patch 8 (16 patches)."""
    cfg: dict[str, object] = dict(
        img_size=32, patch_size=8, in_chans=1, num_classes=3, embed_dim=64, depth=6, num_heads=2
    )
    return EETViT(**{**cfg, **overrides})


def _naive_importance(attn: torch.Tensor, heads: torch.Tensor) -> list[list[float]]:
    """m_i = sum_h (|o_i^h| / sum_h' |o_i^h'|) * A^h[cls, i], one sample and one token at a time."""
    B, H, N, _ = attn.shape
    out = []
    for b in range(B):
        row = []
        for i in range(1, N):
            norms = [float(heads[b, h, i].norm()) for h in range(H)]
            row.append(sum(norms[h] / sum(norms) * float(attn[b, h, 0, i]) for h in range(H)))
        out.append(row)
    return out


def test_token_importance_matches_naive_loop() -> None:
    attn = torch.rand(3, 2, 7, 7, dtype=torch.float64).softmax(-1)
    heads = torch.randn(3, 2, 7, 5, dtype=torch.float64)
    ref = torch.tensor(_naive_importance(attn, heads), dtype=torch.float64)
    torch.testing.assert_close(token_importance(attn, heads), ref)


def _naive_pruned_forward(model: EETViT, image: torch.Tensor) -> tuple[torch.Tensor, list[int], list[float]]:
    """One sample through the blocks; at pruning points keep CLS + the K best patches via Python sorting.

    Returns the final tokens, the kept original patch ids and the last block's scores of the kept tokens.
    """
    x = model._embed(image[None])
    idx = list(range(model.grid**2))
    for i, blk in enumerate(model.blocks, start=1):
        x, attn, heads = blk.forward_with_attention(x)
        scores = _naive_importance(attn, heads)[0]
        if i in model.keep_at:
            order = sorted(range(len(scores)), key=lambda j: -scores[j])[: model.keep_at[i]]
            x = torch.cat([x[:, :1], x[:, [1 + j for j in order]]], dim=1)
            idx = [idx[j] for j in order]
    return model.norm(x)[0], idx, scores


def test_pruning_keeps_exactly_the_top_k_plus_cls() -> None:
    model = _tiny(prune_after=(2, 4, 5), keep_tokens=(8, 4, 2)).double().eval()
    images = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        tokens, kept, importance = model.forward_pruned(images)
        assert tokens.shape == (4, 1 + 2, 64) and kept.shape == (4, 2) and importance.shape == (4, 2)
        for b in range(4):
            ref_tokens, ref_idx, ref_scores = _naive_pruned_forward(model, images[b])
            assert kept[b].tolist() == ref_idx
            torch.testing.assert_close(tokens[b], ref_tokens)
            torch.testing.assert_close(importance[b], torch.tensor(ref_scores, dtype=torch.float64))


def test_keeping_every_token_equals_the_unpruned_tower() -> None:
    model = _tiny(prune_after=(2, 4, 5), keep_tokens=(16, 16, 16)).double().eval()
    images = torch.randn(3, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        pruned, kept, _ = model.forward_pruned(images)
        full, full_idx, _ = model.forward_pruned(images, prune=False)
    assert torch.equal(full_idx, torch.arange(16).expand(3, -1))
    # Tokens come back sorted by score; undo the permutation before comparing.
    assert sorted(kept[0].tolist()) == list(range(16))
    torch.testing.assert_close(pruned[:, 0], full[:, 0])
    unpermuted = torch.empty_like(pruned[:, 1:]).scatter_(1, kept.unsqueeze(-1).expand(-1, -1, 64), pruned[:, 1:])
    torch.testing.assert_close(unpermuted, full[:, 1:])


def test_pruning_changes_the_output_when_it_drops_tokens() -> None:
    model = _tiny(prune_after=(1,), keep_tokens=(2,)).eval()
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(images), model.forward_pruned(images, prune=False)[0][:, 0], atol=1e-4)


def test_vit_s16_parity_with_timm() -> None:
    ours = vt.create_tower("vit_s16").eval()
    ref = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) == 22_050_664
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours.classify(ours(x)), ref(x), rtol=1e-4, atol=1e-5)


def _vit_macs(dim: int, tokens_per_block: list[int], patches: int, patch_pixels: int, classes: int) -> int:
    """Analytic MACs: patch embedding + per block 12 N D^2 (qkv, proj, MLP x4) + 2 N^2 D (scores, A v) + head."""
    blocks = sum(12 * n * dim * dim + 2 * n * n * dim for n in tokens_per_block)
    return patches * patch_pixels * dim + blocks + dim * classes


def test_eet_s16_macs_follow_the_token_schedule() -> None:
    """Pruned after blocks 4, 8, 10 to 98, 49, 12 patches: MACs match the analytic count for 197/99/50/13 tokens."""
    counts = {}
    for name in ("vit_s16", "eet_vit_s16"):
        model = vt.create_tower(name).eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model.classify(model(torch.randn(1, 3, 224, 224)))
        counts[name] = fc.get_total_flops() // 2
    assert counts["vit_s16"] == _vit_macs(384, [197] * 12, 196, 3 * 256, 1000)
    assert counts["eet_vit_s16"] == _vit_macs(384, [197] * 4 + [99] * 4 + [50] * 2 + [13] * 2, 196, 3 * 256, 1000)


def test_mask_patches_matches_naive_loop() -> None:
    images = torch.randn(2, 3, 12, 16)
    idx = torch.tensor([[0, 5], [11, 6]])  # grid 3 x 4
    ref = images.clone()
    for b in range(2):
        for i in idx[b].tolist():
            r, c = divmod(i, 4)  # row = i // G, col = i % G
            ref[b, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 0
    torch.testing.assert_close(mask_patches(images, idx, 4), ref)


def test_unpruned_importance_covers_every_patch_in_grid_order() -> None:
    """The teacher's region guide: last-block scores of all G*G patches, row-major (checked by the naive loop)."""
    model = _tiny(prune_after=(2,), keep_tokens=(4,)).double().eval()
    images = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        _, idx, importance = model.forward_pruned(images, prune=False)
        unpruned = copy.deepcopy(model)
        unpruned.keep_at = {}
        ref = torch.tensor([_naive_pruned_forward(unpruned, img)[2] for img in images], dtype=torch.float64)
    assert importance.shape == (2, 16) and torch.equal(idx, torch.arange(16).expand(2, -1))
    torch.testing.assert_close(importance, ref)


def test_eet_loss_components_and_gradients() -> None:
    torch.manual_seed(0)
    student = _tiny(prune_after=(2, 4), keep_tokens=(8, 4))
    teacher = _tiny(embed_dim=96, num_heads=3)
    images, labels = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 1])
    loss_fn = EETLoss(ce_weight=1.0, mask_weight=0.5, cos_weight=2.0, kl_weight=0.3, temperature=2.0, mask_top=3)
    total, parts = loss_fn(student, teacher, images, labels)
    assert set(parts) == {"ce", "mask_ce", "cos", "kl"}
    expected = parts["ce"] + 0.5 * parts["mask_ce"] + 2.0 * parts["cos"] + 0.3 * parts["kl"]
    torch.testing.assert_close(total.detach(), expected)

    # Independent recomputation of the distillation terms and of the masked-image CE.
    with torch.no_grad():
        z_s, z_t = student.classify(student(images)), teacher.classify(teacher(images))
        p_t = (z_t / 2).softmax(-1)
        kl = (p_t * (p_t.log() - (z_s / 2).log_softmax(-1))).sum(-1).mean() * 4
        cos = 1 - (z_s * z_t).sum(-1) / (z_s.norm(dim=-1) * z_t.norm(dim=-1))
        unpruned = copy.deepcopy(teacher)
        unpruned.keep_at = {}
        scores = [_naive_pruned_forward(unpruned, img)[2] for img in images]
        top = torch.tensor([sorted(range(16), key=lambda j: -sc[j])[:3] for sc in scores])
        z_m = student.classify(student(mask_patches(images, top, 8)))
    torch.testing.assert_close(parts["kl"], kl)
    torch.testing.assert_close(parts["cos"], cos.mean())
    torch.testing.assert_close(parts["mask_ce"], torch.nn.functional.cross_entropy(z_m, labels))

    total.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_distilling_from_an_identical_teacher_costs_nothing() -> None:
    student = _tiny().eval()
    teacher = copy.deepcopy(student)
    _, parts = EETLoss(kl_weight=1.0)(student, teacher, torch.randn(3, 1, 32, 32), torch.tensor([0, 1, 2]))
    assert parts["cos"].abs() < 1e-6 and parts["kl"].abs() < 1e-6
