"""The ranker's parts against naive references, over every registered interaction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from features.loader import RankLoader
from features.processor import FeatureMap, fit, processed_files, transform
from features.schema import load_schema
from ranker import interactions
from ranker.build import (
    ModelConfig,
    VisionConfig,
    build_ranker,
    cached_item_embeddings,
    frozen_item_embeddings,
    num_tokens,
)
from ranker.model import FrozenVisionArch, RankerTrain, TaskHeads, VisionArch
from tests.helpers import write_tiny_dataset, write_tiny_image_dataset
from vision_towers import create_tower, prepare_images

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureMap, Path]:
    root = tmp_path_factory.mktemp("model")
    schema = load_schema(write_tiny_dataset(root / "raw", n=300))
    fmap = fit(schema, root / "features")
    transform(schema, root / "features", "train", fmap)
    return fmap, root / "features"


def _batch(tiny: tuple[FeatureMap, Path], n: int = 24):
    fmap, features = tiny
    return next(iter(RankLoader(processed_files(features, "train"), fmap, n, prefetch=0)))


def test_sparse_arch_matches_naive_lookup(tiny) -> None:
    fmap, _ = tiny
    model = build_ranker(fmap, ModelConfig(embedding_dim=4))
    batch = _batch(tiny)
    got = model.sparse_arch(batch.sparse)  # (B, F, D)
    tables = model.sparse_arch.ebc.embedding_bags
    for f, state in enumerate(fmap.sparse):
        weight = tables[f"t_{state.name}"].weight
        jt = batch.sparse[state.name]
        offsets = jt.offsets().tolist()
        for row in range(batch.batch_size):
            ids = jt.values()[offsets[row] : offsets[row + 1]]
            rows = weight[ids]
            want = rows.mean(0) if state.kind == "multi" else rows.sum(0)
            torch.testing.assert_close(got[row, f], want)


@pytest.mark.parametrize("name", interactions.list_names())
def test_every_interaction_trains_in_the_ranker(tiny, name: str) -> None:
    fmap, _ = tiny
    torch.manual_seed(0)
    cfg = ModelConfig(interaction=name, embedding_dim=8)
    model = RankerTrain(build_ranker(fmap, cfg))
    batch = _batch(tiny)
    assert model.model.tokens(batch).shape == (batch.batch_size, num_tokens(fmap, cfg), 8)
    loss, (_, logits, labels) = model(batch)
    assert logits.shape == labels.shape == (batch.batch_size, 1)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert torch.isfinite(loss)


def test_heads_start_at_the_base_rate() -> None:
    heads = TaskHeads(6, 5, [0.2, 0.7])
    with torch.no_grad():
        for head in heads.heads:
            head[-1].weight.zero_()  # the head output is then its bias alone
    probs = torch.sigmoid(heads(torch.randn(3, 2, 6)))
    torch.testing.assert_close(probs, torch.tensor([[0.2, 0.7]]).expand(3, 2))


def test_padding_rows_do_not_count_in_the_loss(tiny) -> None:
    fmap, _ = tiny
    model = RankerTrain(build_ranker(fmap, ModelConfig(embedding_dim=4)))
    batch = _batch(tiny)
    loss_all, (_, logits, _) = model(batch)
    batch.weights[10:] = 0.0
    loss_part, _ = model(batch)
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits[:10], batch.labels[:10])
    torch.testing.assert_close(loss_part, want)
    assert not torch.isclose(loss_part, loss_all)


def test_fine_tuned_vision_dedup_matches_per_row() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    tower = create_tower("convformer_fm", num_classes=0, depths=(1, 1, 1, 1)).eval()
    arch = VisionArch(tower, images, num_tokens=2, dim=8)
    rows = torch.tensor([3, 1, 3, -1, 5, 1, 3])
    got = arch(rows)
    # Naive: the tower on each row's own image, one row at a time.
    for i, r in enumerate(rows.tolist()):
        if r < 0:
            torch.testing.assert_close(got[i], arch.no_image)
            continue
        emb = tower(prepare_images(images[r : r + 1], tower.in_chans, tower.img_size))
        torch.testing.assert_close(got[i], arch.proj(emb).view(2, 8), rtol=1e-4, atol=1e-5)


def test_fine_tuned_tower_runs_once_per_distinct_image() -> None:
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    tower = create_tower("convformer_fm", num_classes=0, depths=(1, 1, 1, 1))
    seen: list[int] = []
    tower.register_forward_hook(lambda _m, inputs, _o: seen.append(int(inputs[0].shape[0])))
    VisionArch(tower, images, 1, 4)(torch.tensor([2, 2, 2, 4, 4, 0, -1]))
    assert seen == [3]  # images 0, 2 and 4 (the -1 row needs no image)


def _pretrained_tower(path: Path, seed: int) -> VisionConfig:
    torch.manual_seed(seed)
    overrides = {"depths": [1, 1, 1, 1]}
    tower = create_tower("convformer_fm", num_classes=0, **overrides)
    torch.save({"tower": "convformer_fm", "overrides": overrides, "state_dict": tower.state_dict()}, path)
    return VisionConfig(tower="convformer_fm", frozen=True, pretrained=str(path), tokens=2)


def test_frozen_vision_uses_precomputed_embeddings_equal_to_the_tower(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (7, 1, 28, 28), dtype=np.uint8)
    cfg = _pretrained_tower(tmp_path / "tower.pt", seed=1)
    table = frozen_item_embeddings(cfg, images, chunk=3)  # chunks of 3 rows
    tower = create_tower("convformer_fm", num_classes=0, depths=(1, 1, 1, 1)).eval()
    ckpt = torch.load(tmp_path / "tower.pt", weights_only=True)
    tower.load_state_dict(ckpt["state_dict"])
    with torch.no_grad():
        for r in range(len(images)):  # naive: one photo at a time through the pretrained tower
            want = tower(prepare_images(torch.from_numpy(images[r : r + 1]), tower.in_chans, tower.img_size))
            torch.testing.assert_close(table[r : r + 1], want, rtol=1e-4, atol=1e-5)
    arch = FrozenVisionArch(table, num_tokens=2, dim=8)
    rows = torch.tensor([6, 0, -1, 6])
    got = arch(rows)
    torch.testing.assert_close(got[0], arch.proj(table[6]).view(2, 8))
    torch.testing.assert_close(got[2], arch.no_image)
    assert "item_embeddings" not in arch.state_dict() and not any("tower" in k for k in arch.state_dict())


def test_item_embeddings_are_cached_per_tower_version(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    first = _pretrained_tower(tmp_path / "a.pt", seed=1)
    table = cached_item_embeddings(first, tmp_path, seed=0)
    files = sorted((tmp_path / "image_embeddings").glob("*.npy"))
    assert len(files) == 1
    np.testing.assert_array_equal(np.load(files[0]), table)
    np.save(files[0], np.zeros_like(table))  # a cache hit must read the file, not recompute
    assert not cached_item_embeddings(first, tmp_path, seed=0).any()
    other = cached_item_embeddings(_pretrained_tower(tmp_path / "b.pt", seed=2), tmp_path, seed=0)
    assert len(list((tmp_path / "image_embeddings").glob("*.npy"))) == 2
    assert not np.allclose(other, table)


def test_vision_model_builds_and_trains(tmp_path: Path) -> None:
    photos = np.random.default_rng(0).integers(0, 255, (30, 28, 28), dtype=np.uint8)
    schema = load_schema(write_tiny_image_dataset(tmp_path / "raw", photos))
    fmap = fit(schema, tmp_path / "features")
    transform(schema, tmp_path / "features", "train", fmap)
    images = np.load(tmp_path / "features" / "images.npy")
    cfg = ModelConfig(
        embedding_dim=8, vision=VisionConfig(tower="convformer_fm", tokens=2, overrides={"depths": (1, 1, 1, 1)})
    )
    model = RankerTrain(build_ranker(fmap, cfg, images))
    batch = next(iter(RankLoader(processed_files(tmp_path / "features", "train"), fmap, 16, prefetch=0)))
    assert (batch.image_index >= 0).all()
    loss, _ = model(batch)
    loss.backward()
    assert model.model.vision_arch is not None
    assert model.model.vision_arch.proj.weight.grad is not None
    assert any(p.grad is not None for p in model.model.vision_arch.tower.parameters())


def test_exports_from_before_the_2d_default_widths_still_load(tmp_path: Path) -> None:
    """An export made with the old 4·D value rank and FFN width whose config left them to the defaults (as every
    default-config export before 2026-12 did) loads with its saved widths and scores as before."""
    import json

    from ranker.export import load_exported
    from tests.helpers import build_tiny_export

    old_widths = {"num_layers": 1, "rank_v": 32, "ffn_hidden": 32}  # 4·D at D = 8
    export_dir, _ = build_tiny_export(tmp_path, hiformer=old_widths)
    explicit = load_exported(export_dir)
    config_file = export_dir / "model_config.json"
    config = json.loads(config_file.read_text())
    config["interaction_kwargs"]["hiformer"] = {"num_layers": 1}  # as the old default config wrote it
    config_file.write_text(json.dumps(config))
    loaded = load_exported(export_dir)
    layer = loaded.interaction.layers[0]
    assert (layer.value.rank, layer.ffn.fc1.weight.shape[-1]) == (32, 32)
    for name, tensor in explicit.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
