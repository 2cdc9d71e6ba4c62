"""ConvFormer / CAFormer towers against timm's own models."""

from __future__ import annotations

import pytest
import timm
import torch

import vision_towers as vt
from vision_towers.metaformer import _CA_MIXERS, _CA_NORMS, MetaFormerTower

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["convformer_s18", "caformer_s18"])
def test_parity_with_timm(name: str) -> None:
    ours = vt.create_tower(name).eval()
    ref = timm.create_model(name, pretrained=False).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    ours.load_state_dict(ref.state_dict(), strict=True)

    # Fully convolutional, so a small input keeps the check fast; 64 px still gives a 2 x 2 stage-4 map.
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        emb = ours(x)
        torch.testing.assert_close(ours.classify(emb), ref(x), rtol=0, atol=0)
        torch.testing.assert_close(emb, ref.forward_head(ref.forward_features(x), pre_logits=True), rtol=0, atol=0)


@pytest.mark.parametrize(("name", "params_m"), [("convformer_s18", 26.77), ("caformer_s18", 26.34)])
def test_published_param_counts(name: str, params_m: float) -> None:
    model = vt.create_tower(name)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.005)


@pytest.mark.parametrize(("attention", "params_m"), [(False, 0.44), (True, 0.42)])
def test_methods_test_config(attention: bool, params_m: float) -> None:
    """methods.md section 7: depths 1/1/2/1, widths 16/32/64/128 -> ConvFormer 0.44M, CAFormer 0.42M (no head)."""
    mixers = dict(token_mixers=_CA_MIXERS, norm_layers=_CA_NORMS) if attention else {}
    model = MetaFormerTower(img_size=64, num_classes=0, depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), **mixers)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.006)


def test_caformer_uses_attention_only_in_late_stages() -> None:
    model = vt.create_tower("caformer_fm")
    mixers = [type(stage.blocks[0].token_mixer).__name__ for stage in model.stages]
    assert mixers == ["SepConv", "SepConv", "Attention", "Attention"]
    assert [stage.blocks[0].token_mixer.num_heads for stage in model.stages[2:]] == [128 // 32, 192 // 32]


def test_tokens_are_the_normalised_last_feature_map() -> None:
    model = vt.create_tower("convformer_fm").eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        fmap = model.forward_features(x)  # (B, D, 2, 2)
        tokens = model.forward_tokens(x)
    assert tokens.shape == (2, 4, model.embed_dim)
    ref = torch.nn.functional.layer_norm(fmap.permute(0, 2, 3, 1), (model.embed_dim,), eps=model.head.norm.eps)
    ref = ref * model.head.norm.weight + model.head.norm.bias
    torch.testing.assert_close(tokens, ref.flatten(1, 2))
