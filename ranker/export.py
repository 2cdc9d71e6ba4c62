"""Exported models: an unsharded CPU state dict with everything needed to rebuild and feed the model.

Layout of an export directory::

    model.pt            state dict of the Ranker (torch.save; read back with weights_only=True)
    model_config.json   the ModelConfig
    train_config.json   the resolved training config (for the record)
    feature_map.json    + vocab/ : the fitted feature pipeline, so serving transforms exactly as training did
    images.npy, items.parquet : item photos, when the model has a vision tower
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp

from features.images import IMAGES, ITEMS
from features.processor import FEATURE_MAP, TRAIN_ITEMS, FeatureMap
from features.strict_yaml import from_dict, to_dict
from ranker.build import ModelConfig, build_ranker
from ranker.model import Ranker, RankerTrain

MODEL_FILE = "model.pt"
_TRAIN_PREFIX = "model."  # RankerTrain wraps the Ranker as `.model`


def export_checkpoint(
    checkpoint: Path,
    fmap: FeatureMap,
    features_dir: Path,
    model_cfg: ModelConfig,
    train_cfg: dict[str, Any],
    out_dir: Path,
) -> Path:
    """Reads a (possibly sharded) DCP checkpoint of a ``RankerTrain`` into an unsharded CPU export."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = np.asarray(np.load(features_dir / IMAGES, mmap_mode="r")) if model_cfg.vision else None
    template = RankerTrain(build_ranker(fmap, model_cfg, images))
    state = {"model": template.state_dict()}
    # DCP reassembles table-/column-wise shards into the full tensors of the unsharded template.
    dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)
    ranker_state = {k.removeprefix(_TRAIN_PREFIX): v for k, v in state["model"].items()}
    torch.save(ranker_state, out_dir / MODEL_FILE)
    (out_dir / "model_config.json").write_text(json.dumps(to_dict(model_cfg), indent=2) + "\n")
    (out_dir / "train_config.json").write_text(json.dumps(train_cfg, indent=2, default=str) + "\n")
    shutil.copyfile(features_dir / FEATURE_MAP, out_dir / FEATURE_MAP)
    if (features_dir / "vocab").exists():
        shutil.copytree(features_dir / "vocab", out_dir / "vocab", dirs_exist_ok=True)
    for name in (TRAIN_ITEMS, IMAGES, ITEMS):
        if (features_dir / name).exists():
            shutil.copyfile(features_dir / name, out_dir / name)
    return out_dir


def load_exported(export_dir: str | Path) -> Ranker:
    """The exported model on CPU in eval mode."""
    export_dir = Path(export_dir)
    fmap = FeatureMap.load(export_dir)
    cfg = from_dict(ModelConfig, json.loads((export_dir / "model_config.json").read_text()), str(export_dir))
    if cfg.vision is not None:
        # model.pt already holds the tower's trained weights; the pretraining file is not needed any more.
        cfg = replace(cfg, vision=replace(cfg.vision, pretrained=None))
    images = np.asarray(np.load(export_dir / IMAGES, mmap_mode="r")) if cfg.vision else None
    model = build_ranker(fmap, cfg, images)
    state = torch.load(export_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
