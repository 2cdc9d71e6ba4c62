"""Model configs (typed, frozen, from YAML) and the builder that turns one into a :class:`Ranker`."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from features.images import IMAGES
from features.processor import FeatureMap
from ranker import interactions
from ranker.model import DenseArch, FrozenVisionArch, Ranker, SparseArch, TaskHeads, VisionArch
from vision_towers import create_tower, list_towers, prepare_images, tower_parameters

EMBEDDINGS_DIR = "image_embeddings"  # frozen towers' catalogue embeddings, under the features folder


@dataclass(frozen=True)
class VisionConfig:
    """Which image tower feeds the ranker, and how.

    ``overrides`` are the tower's constructor arguments (``vision_towers.tower_parameters(tower)``); unknown ones
    are rejected when the config is loaded.
    """

    tower: str
    tokens: int = 1  # image tokens per row
    frozen: bool = False  # fixed tower weights (e.g. after pretraining) vs fine-tuned with the ranker
    pretrained: str | None = None  # a state dict saved by vision_towers.pretrain
    overrides: dict[str, Any] = field(default_factory=dict)  # tower constructor overrides

    def __post_init__(self) -> None:
        if self.tower not in list_towers():
            raise ValueError(f"vision.tower: unknown tower {self.tower!r}; registered: {list_towers()}")
        if self.tokens < 1:
            raise ValueError(f"vision.tokens must be >= 1, got {self.tokens}")
        allowed = sorted(set(tower_parameters(self.tower)) - {"num_classes"})  # the ranker uses no classifier
        unknown = sorted(set(self.overrides) - set(allowed))
        if unknown:
            raise ValueError(f"vision.overrides: unknown key(s) {unknown} for tower {self.tower!r}; valid: {allowed}")


@dataclass(frozen=True)
class ModelConfig:
    """The ranker's architecture.

    ``interaction`` is a name from ``ranker.interactions.list_names()``. ``interaction_kwargs`` holds one section
    of hyper-parameters per interaction name (``{hiformer: {num_layers: 2}, dcnv2: {structure: parallel}}``);
    only the chosen interaction's section is used, so ``--set model.interaction=dcnv2`` switches models without
    editing the file. Every section is checked against its interaction's signature when the config is loaded.
    """

    interaction: str = "hiformer"
    embedding_dim: int = 16
    dense_tokens: int = 1
    head_hidden: int = 64
    interaction_kwargs: dict[str, Any] = field(default_factory=dict)  # interaction name -> its hyper-parameters
    vision: VisionConfig | None = None

    def __post_init__(self) -> None:
        names = interactions.list_names()
        if self.interaction not in names:
            raise ValueError(f"unknown interaction {self.interaction!r}; choose from {names}")
        for name, section in self.interaction_kwargs.items():
            if name not in names:
                raise ValueError(
                    f"interaction_kwargs: {name!r} is not an interaction; sections are keyed by interaction "
                    f"name ({', '.join(names)}), e.g. interaction_kwargs: {{hiformer: {{num_layers: 2}}}}"
                )
            if not isinstance(section, dict):
                raise ValueError(f"interaction_kwargs.{name}: expected a mapping of hyper-parameters, got {section!r}")
            valid = sorted(interactions.hyper_parameters(name))
            unknown = sorted(set(section) - set(valid))
            if unknown:
                raise ValueError(f"interaction_kwargs.{name}: unknown key(s) {unknown}; valid for {name!r}: {valid}")

    def chosen_kwargs(self) -> dict[str, Any]:
        """The hyper-parameters of the chosen interaction (its section of ``interaction_kwargs``)."""
        return dict(self.interaction_kwargs.get(self.interaction, {}))


def build_tower(cfg: VisionConfig) -> torch.nn.Module:
    """The tower without a classifier; weights from a ``vision_towers.pretrain`` checkpoint when given."""
    if not cfg.pretrained:
        return create_tower(cfg.tower, num_classes=0, **cfg.overrides)
    ckpt = torch.load(Path(cfg.pretrained), map_location="cpu", weights_only=True)
    if ckpt["tower"] != cfg.tower:
        raise ValueError(f"{cfg.pretrained}: a pretrained {ckpt['tower']!r}, but the config asks for {cfg.tower!r}")
    tower = create_tower(cfg.tower, num_classes=0, **{**ckpt["overrides"], **cfg.overrides})
    # The pretraining classifier is not part of the tower used here; every other weight must be there.
    tower.load_state_dict({k: v for k, v in ckpt["state_dict"].items() if k in tower.state_dict()}, strict=True)
    return tower


def num_tokens(fmap: FeatureMap, cfg: ModelConfig) -> int:
    """T: dense tokens + one per sparse feature + image tokens."""
    dense = cfg.dense_tokens if fmap.dense else 0
    image = cfg.vision.tokens if cfg.vision else 0
    return dense + len(fmap.sparse) + image


def build_ranker(
    fmap: FeatureMap,
    cfg: ModelConfig,
    images: np.ndarray | None = None,
    sparse_device: torch.device | None = None,
    item_embeddings: np.ndarray | torch.Tensor | None = None,
) -> Ranker:
    """Builds the model for a fitted feature map.

    Args:
        fmap: the feature map (tables, dense features, tasks, base rates).
        cfg: the architecture.
        images: ``n x C x H x W`` uint8 item photos, required for a fine-tuned tower (``vision.frozen: false``).
        sparse_device: device for the embedding tables; ``torch.device("meta")`` leaves them to be materialised
            by ``DistributedModelParallel`` (so a table never has to fit on one rank).
        item_embeddings: ``n x De`` catalogue embeddings of a frozen tower (:func:`cached_item_embeddings`),
            required when ``vision.frozen`` is true.
    """
    sparse = SparseArch(
        [(s.name, s.num_embeddings, s.kind == "multi") for s in fmap.sparse], cfg.embedding_dim, device=sparse_device
    )
    dense = DenseArch(len(fmap.dense), cfg.dense_tokens, cfg.embedding_dim) if fmap.dense else None
    vision: VisionArch | FrozenVisionArch | None = None
    if cfg.vision is not None and cfg.vision.frozen:
        if item_embeddings is None:
            raise ValueError(
                "a frozen vision tower needs its catalogue embeddings (ranker.build.cached_item_embeddings)"
            )
        table = torch.as_tensor(np.asarray(item_embeddings, dtype=np.float32))
        vision = FrozenVisionArch(table, cfg.vision.tokens, cfg.embedding_dim)
    elif cfg.vision is not None:
        if images is None:
            raise ValueError("the model config has a fine-tuned vision tower but no item images were given")
        photos = torch.from_numpy(np.array(images))  # a writable in-memory copy of a possibly mapped file
        vision = VisionArch(build_tower(cfg.vision), photos, cfg.vision.tokens, cfg.embedding_dim)
    interaction = interactions.create(
        cfg.interaction,
        num_tokens=num_tokens(fmap, cfg),
        dim=cfg.embedding_dim,
        num_tasks=len(fmap.labels),
        **cfg.chosen_kwargs(),
    )
    heads = TaskHeads(int(interaction.out_dim), cfg.head_hidden, [fmap.positive_rate[t] for t in fmap.labels])
    return Ranker(sparse, dense, vision, interaction, heads)


@torch.no_grad()
def frozen_item_embeddings(cfg: VisionConfig, images: np.ndarray, chunk: int = 512) -> torch.Tensor:
    """``n x De`` embeddings of every item photo (``n x C x H x W`` uint8) by the frozen tower of ``cfg``.

    A tower without ``pretrained`` weights is initialised from the global torch RNG (seed it first).
    """
    tower = build_tower(cfg).eval()
    parts = []
    for start in range(0, len(images), chunk):
        pixels = prepare_images(np.asarray(images[start : start + chunk]), int(tower.in_chans), int(tower.img_size))
        parts.append(tower(pixels))
    return torch.cat(parts) if parts else torch.zeros(0, int(tower.embed_dim))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_item_embeddings(cfg: VisionConfig, features_dir: Path, seed: int) -> np.ndarray:
    """A frozen tower's catalogue embeddings, computed once per tower version and item photos.

    Stored in ``features_dir/image_embeddings/<tower>-<key>.npy``; the key digests the tower name and overrides,
    the pretrained weights file (or, without one, the initialisation ``seed``) and the photos file, so a new
    tower version or a new catalogue gets a new table. Written atomically: concurrent or interrupted writers
    never leave a partial table behind.
    """
    images_path = features_dir / IMAGES
    if not images_path.exists():
        raise FileNotFoundError(f"{images_path}: the features have no item images, but the model has a vision tower")
    weights = _file_digest(Path(cfg.pretrained)) if cfg.pretrained else f"init-seed-{seed}"
    key_source = json.dumps(
        {"tower": cfg.tower, "overrides": cfg.overrides, "weights": weights, "images": _file_digest(images_path)},
        sort_keys=True,
        default=str,
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    path = features_dir / EMBEDDINGS_DIR / f"{cfg.tower}-{key}.npy"
    if path.exists():
        return np.load(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        table = frozen_item_embeddings(cfg, np.load(images_path, mmap_mode="r")).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with partial.open("wb") as f:
        np.save(f, table)
    os.replace(partial, path)
    return table


def check_model_config(fmap: FeatureMap, cfg: ModelConfig, features_dir: Path | None = None) -> None:
    """Builds the model on the ``meta`` device so that a bad value fails here, with a message, not on every rank.

    Also checks that the data has item photos when the model has a tower, and that a pretrained tower file
    exists and holds that tower. Raises ``ValueError`` naming the config key.
    """
    if cfg.vision is not None:
        if fmap.image_shape is None:
            where = f"{features_dir}: the features" if features_dir else "the features"
            raise ValueError(f"model.vision: {where} have no item images (the schema has no `image:` section)")
        if cfg.vision.pretrained:
            _check_pretrained(cfg.vision)
    with torch.device("meta"):
        try:
            if cfg.vision is not None:
                embed_dim = int(create_tower(cfg.vision.tower, num_classes=0, **cfg.vision.overrides).embed_dim)
            else:
                embed_dim = 0
            images = np.zeros((1, *(fmap.image_shape or (1,))), dtype=np.uint8)
            build_ranker(fmap, replace_pretrained(cfg, None), images, item_embeddings=np.zeros((1, embed_dim)))
        except (TypeError, ValueError, RuntimeError, AssertionError) as err:
            raise ValueError(f"model: cannot build {cfg.interaction!r} with this config: {err}") from err


def replace_pretrained(cfg: ModelConfig, pretrained: str | None) -> ModelConfig:
    """``cfg`` with its tower's ``pretrained`` file replaced (the exported weights already hold the tower)."""
    if cfg.vision is None:
        return cfg
    return replace(cfg, vision=replace(cfg.vision, pretrained=pretrained))


def _check_pretrained(cfg: VisionConfig) -> None:
    path = Path(cfg.pretrained or "")
    if not path.is_file():
        raise ValueError(
            f"model.vision.pretrained: {path} not found; "
            f"pretrain it with `ranker pretrain-tower {cfg.tower} --out {path}`"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "tower" not in ckpt:
        raise ValueError(f"model.vision.pretrained: {path} is not a tower checkpoint of `ranker pretrain-tower`")
    if ckpt["tower"] != cfg.tower:
        raise ValueError(
            f"model.vision.pretrained: {path} holds a {ckpt['tower']!r}, but the config asks for {cfg.tower!r}"
        )
