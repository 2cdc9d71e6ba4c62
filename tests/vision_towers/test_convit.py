"""ConViT towers: parity with timm and the GPSA local ("convolutional") initialisation."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import vision_towers as vt

pytestmark = pytest.mark.unit


def test_parity_with_timm_convit_tiny() -> None:
    ours = vt.create_tower("convit_tiny").eval()
    ref = timm.create_model("convit_tiny", pretrained=False).eval()
    n_params = sum(p.numel() for p in ours.parameters())
    assert n_params == sum(p.numel() for p in ref.parameters())
    assert n_params / 1e6 == pytest.approx(5.71, abs=0.005)  # methods.md section 4.2
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        emb = ours(x)
        logits = ours.classify(emb)
    assert counter.get_total_flops() / 2e9 == pytest.approx(1.25, rel=0.01)  # methods.md 4.2, FlopCounterMode
    with torch.no_grad():
        torch.testing.assert_close(logits, ref(x), rtol=0, atol=0)
        torch.testing.assert_close(ours.forward_tokens(x), ref.forward_features(x), rtol=0, atol=0)


def test_methods_test_config_param_count() -> None:
    """methods.md section 7: convit_tiny(img_size=64, depth=4, local_up_to_layer=3, num_classes=0) -> 1.93M."""
    model = vt.create_tower("convit_tiny", img_size=64, depth=4, local_up_to_layer=3, num_classes=0)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(1.93, abs=0.005)


def test_rejects_non_square_head_count() -> None:
    with pytest.raises(ValueError, match="perfect-square"):
        vt.create_tower("convit_fm", num_heads=6)


@pytest.mark.parametrize("num_heads", [4, 9])
def test_local_init_is_a_soft_kernel_around_each_head_centre(num_heads: int) -> None:
    """At init each head's positional attention is softmax_j(-|delta_ij - D_h|^2), D_h on a sqrt(H) grid.

    The kernel is recomputed here from patch coordinates (independent of timm's rel_indices), then the gate and
    the mixing formula of the full GPSA attention are checked against it.
    """
    tower = vt.create_tower("convit_fm", num_heads=num_heads)
    gpsa = tower.blocks[0].attn
    side = tower.img_size // 4  # 7 x 7 patch grid
    n = side * side
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pos = torch.stack([cols.flatten(), rows.flatten()], dim=-1).float()  # (N, 2) as (x, y)
    delta = pos[None, :, :] - pos[:, None, :]  # (N, N, 2): key minus query

    k = int(math.isqrt(num_heads))
    offsets = torch.arange(k) - (k - 1) / 2
    expected_centres = {(float(dx), float(dy)) for dx in offsets for dy in offsets}

    x = torch.randn(2, n, tower.embed_dim)
    with torch.no_grad():
        gpsa.rel_indices = gpsa.get_rel_indices(n)
        pos_attn = gpsa.pos_proj(gpsa.rel_indices).permute(0, 3, 1, 2).softmax(-1)[0]  # (H, N, N)
        full = gpsa.get_attention(x)  # (B, H, N, N)

    centres = set()
    for h in range(num_heads):
        # The centre is the offset that the weights encode: v_h = (2 D_x, 2 D_y, -1) * locality_strength.
        w = gpsa.pos_proj.weight[h].detach()
        assert w[2].item() == pytest.approx(-1.0)
        centre = (w[0].item() / 2, w[1].item() / 2)
        centres.add(centre)
        kernel = (-((delta - torch.tensor(centre)) ** 2).sum(-1)).softmax(-1)  # (N, N)
        torch.testing.assert_close(pos_attn[h], kernel, rtol=1e-5, atol=1e-6)
        # Concentration for an interior query: most of the mass within distance 1.5 of the centre.
        q = (side // 2) * side + side // 2
        near = ((delta[q] - torch.tensor(centre)).norm(dim=-1) <= 1.5).float()
        assert (pos_attn[h, q] * near).sum() > 0.75
    assert centres == expected_centres

    gate = torch.sigmoid(gpsa.gating_param.detach())
    torch.testing.assert_close(gate, torch.full((num_heads,), 0.7311), atol=1e-4, rtol=0)
    d = tower.embed_dim // num_heads
    qk = gpsa.qk(x).reshape(2, n, 2, num_heads, d).permute(2, 0, 3, 1, 4)  # (2, B, H, N, d)
    content = (qk[0] @ qk[1].transpose(-2, -1) / math.sqrt(d)).softmax(-1)
    g = gate.view(1, -1, 1, 1)
    torch.testing.assert_close(full, (1 - g) * content + g * pos_attn, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gpsa.v.weight.detach(), torch.eye(tower.embed_dim))


def test_class_token_joins_after_the_gpsa_blocks() -> None:
    tower = vt.create_tower("convit_fm")
    assert [type(b.attn).__name__ for b in tower.blocks] == ["GPSA"] * 4 + ["MHSA"] * 2
    assert tower.forward_tokens(torch.randn(1, 1, 28, 28)).shape == (1, 1 + 49, tower.embed_dim)
