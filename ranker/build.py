"""Model configs (typed, frozen, from YAML) and the builder that turns one into a :class:`Ranker`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from features.processor import FeatureMap
from ranker import interactions
from ranker.model import DenseArch, Ranker, SparseArch, TaskHeads, VisionArch
from vision_towers import create_tower, list_towers, tower_parameters


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
    interaction_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
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
            valid = sorted(interactions.hyper_parameters(name))
            unknown = sorted(set(section) - set(valid))
            if unknown:
                raise ValueError(f"interaction_kwargs.{name}: unknown key(s) {unknown}; valid for {name!r}: {valid}")

    def chosen_kwargs(self) -> dict[str, Any]:
        """The hyper-parameters of the chosen interaction (its section of ``interaction_kwargs``)."""
        return dict(self.interaction_kwargs.get(self.interaction, {}))


def _tower(cfg: VisionConfig) -> torch.nn.Module:
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
) -> Ranker:
    """Builds the model for a fitted feature map.

    Args:
        fmap: the feature map (tables, dense features, tasks, base rates).
        cfg: the architecture.
        images: ``n x C x H x W`` uint8 item photos, required when ``cfg.vision`` is set.
        sparse_device: device for the embedding tables; ``torch.device("meta")`` leaves them to be materialised
            by ``DistributedModelParallel`` (so a table never has to fit on one rank).
    """
    sparse = SparseArch(
        [(s.name, s.num_embeddings, s.kind == "multi") for s in fmap.sparse], cfg.embedding_dim, device=sparse_device
    )
    dense = DenseArch(len(fmap.dense), cfg.dense_tokens, cfg.embedding_dim) if fmap.dense else None
    vision = None
    if cfg.vision is not None:
        if images is None:
            raise ValueError("the model config has a vision tower but the data set has no images")
        tower = _tower(cfg.vision)
        vision = VisionArch(tower, torch.from_numpy(np.ascontiguousarray(images)), cfg.vision.tokens,
                            cfg.embedding_dim, cfg.vision.frozen)  # fmt: skip
    interaction = interactions.create(
        cfg.interaction,
        num_tokens=num_tokens(fmap, cfg),
        dim=cfg.embedding_dim,
        num_tasks=len(fmap.labels),
        **cfg.chosen_kwargs(),
    )
    heads = TaskHeads(int(interaction.out_dim), cfg.head_hidden, [fmap.positive_rate[t] for t in fmap.labels])
    return Ranker(sparse, dense, vision, interaction, heads)
