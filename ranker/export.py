"""Exported models: an unsharded CPU state dict with everything needed to rebuild and feed the model.

Layout of an export directory::

    model.pt            state dict of the Ranker (torch.save; read back with weights_only=True)
    model_config.json   the ModelConfig
    train_config.json   the resolved training config (for the record)
    feature_map.json    + vocab/ : the fitted feature pipeline, so serving transforms exactly as training did
    items.parquet       item id -> image row, when the model has a vision tower
    images.npy          item photos, for a fine-tuned tower (it runs at serving time)
    item_embeddings.npy the catalogue embeddings of a frozen tower (the export holds neither photos nor tower)
    compression.json    what `ranker compress` applied (its dense dtype is applied on load), compressed exports only
    serve/              the served artefact (ranker.serving): model.pt2 (+ model_aoti.pt2) and serving.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp

from common.config import from_dict, to_dict
from features.images import IMAGES, ITEMS
from features.processor import FEATURE_MAP, TRAIN_ITEMS, TRAIN_VALUES, FeatureMap
from ranker.build import ModelConfig, build_ranker, replace_pretrained
from ranker.compress import apply_dense_dtype, quantize_tables, read_dtypes, restore_packed
from ranker.model import Ranker, RankerTrain

MODEL_FILE = "model.pt"
ITEM_EMBEDDINGS = "item_embeddings.npy"
_TRAIN_PREFIX = "model."  # RankerTrain wraps the Ranker as `.model`


def export_checkpoint(
    checkpoint: Path,
    fmap: FeatureMap,
    features_dir: Path,
    model_cfg: ModelConfig,
    train_cfg: dict[str, Any],
    out_dir: Path,
    item_embeddings: np.ndarray | None = None,
) -> Path:
    """Reads a (possibly sharded) DCP checkpoint of a ``RankerTrain`` into an unsharded CPU export.

    ``item_embeddings``: the frozen tower's catalogue embeddings the model was trained with (frozen towers only).
    The export is written into a temporary sibling folder and renamed onto ``out_dir`` only once complete, so a
    failure (a full disk) never leaves a folder that looks finished; a previous export stays until replaced.
    """
    partial = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        fine_tuned = model_cfg.vision is not None and not model_cfg.vision.frozen
        images = np.asarray(np.load(features_dir / IMAGES, mmap_mode="r")) if fine_tuned else None
        template = RankerTrain(build_ranker(fmap, model_cfg, images, item_embeddings=item_embeddings))
        state = {"model": template.state_dict()}
        # DCP reassembles table-/column-wise shards into the full tensors of the unsharded template.
        with warnings.catch_warnings():
            # DCP warns that it assumes a single-process load even when asked for exactly that (no_dist=True).
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)
        ranker_state = {k.removeprefix(_TRAIN_PREFIX): v for k, v in state["model"].items()}
        try:
            torch.save(ranker_state, partial / MODEL_FILE)
            (partial / "model_config.json").write_text(json.dumps(to_dict(model_cfg), indent=2) + "\n")
            (partial / "train_config.json").write_text(json.dumps(train_cfg, indent=2, default=str) + "\n")
            shutil.copyfile(features_dir / FEATURE_MAP, partial / FEATURE_MAP)
            # vocab/: the id mappings; train_values/: what a promotion gate calls a cold user or item.
            for folder in ("vocab", TRAIN_VALUES):
                if (features_dir / folder).exists():
                    shutil.copytree(features_dir / folder, partial / folder, dirs_exist_ok=True)
            for name in (TRAIN_ITEMS, ITEMS, *((IMAGES,) if fine_tuned else ())):
                if (features_dir / name).exists():
                    shutil.copyfile(features_dir / name, partial / name)
            if item_embeddings is not None:
                np.save(partial / ITEM_EMBEDDINGS, np.asarray(item_embeddings, dtype=np.float32))
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError of its writer
            free = shutil.disk_usage(partial).free
            raise OSError(
                f"export {out_dir}: could not be written ({type(err).__name__}: {str(err).splitlines()[0]}; "
                f"{free:,} bytes free on its file system); nothing was left there, a previous export is unchanged"
            ) from err
        if out_dir.exists():
            shutil.rmtree(out_dir)
        partial.rename(out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir


def export_digest(export_dir: str | Path, exclude: tuple[str, ...] = ()) -> str:
    """SHA-256 (16 hex digits) of every file's relative path and bytes: the same model wherever the folder lies.

    ``exclude``: top-level file names left out (a step manifest that records where the model was logged).
    """
    export_dir = Path(export_dir)
    h = hashlib.sha256()
    for path in sorted(
        p for p in export_dir.rglob("*") if p.is_file() and p.relative_to(export_dir).as_posix() not in exclude
    ):
        h.update(f"{path.relative_to(export_dir)}\0".encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def find_export(path: Path) -> Path | None:
    """The export folder of ``path``: ``path`` itself or ``path/export`` (a training run), whichever holds the model."""
    for candidate in (path, path / "export"):
        if (candidate / MODEL_FILE).is_file():
            return candidate
    return None


def load_exported(export_dir: str | Path) -> Ranker:
    """The exported model on CPU in eval mode."""
    export_dir = Path(export_dir)
    fmap = FeatureMap.load(export_dir)
    cfg = from_dict(ModelConfig, json.loads((export_dir / "model_config.json").read_text()), str(export_dir))
    # model.pt (or item_embeddings.npy) already holds the tower's trained weights; the pretraining file is not needed.
    cfg = replace_pretrained(cfg, None)
    state = _read_state(export_dir / MODEL_FILE)
    cfg = _with_saved_widths(cfg, state)
    images = embeddings = None
    if cfg.vision is not None and cfg.vision.frozen:
        embeddings = np.load(export_dir / ITEM_EMBEDDINGS)
    elif cfg.vision is not None:
        images = np.asarray(np.load(export_dir / IMAGES, mmap_mode="r"))
    model = build_ranker(fmap, cfg, images, item_embeddings=embeddings)
    dense_dtype, embedding_dtype = read_dtypes(export_dir)  # compression.json of `ranker compress`, if any
    if dense_dtype != "float32":
        apply_dense_dtype(model, dense_dtype)
    if embedding_dtype != "float32":
        quantize_tables(model, embedding_dtype)
    _check_names(state, set(model.state_dict()), export_dir / MODEL_FILE)
    model.load_state_dict(restore_packed(model, state), strict=True)
    return model.eval()


def _with_saved_widths(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> ModelConfig:
    """``cfg`` with Hiformer's value rank and FFN width read from the saved tensors where the config leaves them to
    the defaults: exports made before the 2·D defaults (2026-12) hold 4·D ones and must keep loading as they were."""
    kwargs = cfg.chosen_kwargs()
    if cfg.interaction != "hiformer" or {"rank_v", "ffn_hidden"} <= kwargs.keys():
        return cfg
    saved: dict[str, Any] = {}
    if "interaction.layers.0.value.proj.0.weight" in state:  # factorised: (rank_v, S·D)
        saved["rank_v"] = state["interaction.layers.0.value.proj.0.weight"].shape[0]
    elif "interaction.layers.0.value.proj.weight" in state:  # the full matrix
        saved["rank_v"] = None
    if "interaction.layers.0.ffn.fc1.weight" in state:  # (Q, D, hidden)
        saved["ffn_hidden"] = state["interaction.layers.0.ffn.fc1.weight"].shape[-1]
    widths = {k: v for k, v in saved.items() if k not in kwargs}
    return dataclasses.replace(cfg, interaction_kwargs={**cfg.interaction_kwargs, "hiformer": {**kwargs, **widths}})


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, refused with a clear ``ValueError`` unless it is a dict of tensors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never runs code from the file
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(f"{_not_model(path)}: it does not load as plain tensors ({str(err).splitlines()[0]})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{_not_model(path)}: it holds a {type(state).__name__}, not a state dict of tensors")
    return state


def _check_names(state: dict[str, torch.Tensor], expected: set[str], path: Path) -> None:
    """A clear ``ValueError`` unless ``state`` holds exactly the ``expected`` weight names."""
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{_not_model(path)}: {len(missing)} weight(s) missing {missing[:3]}, {len(unexpected)} unknown "
            f"{unexpected[:3]}"
        )


def _not_model(path: Path) -> str:
    return f"{path} is not the model file of this export"
