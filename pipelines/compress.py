"""The compression step: ``ranker compress --model RUN/export --config compress.yaml --out DIR``.

Reads an export, applies the techniques of a :class:`ranker.compress.CompressConfig` (typed, frozen, unknown keys
rejected), and writes a new export (same layout: ``ranker.export.load_exported`` and ``ranker evaluate`` take it
unchanged) with ``compression.json`` (what was applied), the served artefact under ``serve/`` and a step
``manifest.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from common.config import from_dict, load_yaml, to_dict
from features.processor import FeatureMap
from pipelines import steps
from ranker.build import ModelConfig, build_ranker, replace_pretrained
from ranker.compress import CompressConfig, compress_model, count_parameters, plain_state, write_compression
from ranker.export import ITEM_EMBEDDINGS, MODEL_FILE, load_exported

STEP = "compress"
_NOT_COPIED = {MODEL_FILE, "model_config.json", steps.MANIFEST, "serve", "compression.json"}


def load_compress_config(path: str | Path, overrides: dict[str, Any] | None = None) -> CompressConfig:
    return load_yaml(CompressConfig, path, overrides)


def compress_export(model_dir: Path, cfg: CompressConfig, out_dir: Path, force: bool = False) -> dict[str, Any]:
    """Compresses the export ``model_dir`` into the export ``out_dir``; returns the step manifest."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / MODEL_FILE).exists():
        raise FileNotFoundError(f"{model_dir}: not an export (no {MODEL_FILE}); pass RUN/export")
    if (model_dir / "compression.json").exists():
        raise ValueError(f"{model_dir}: already compressed; compress the original export instead")
    inputs = [model_dir] + [Path(part.features) for part in (cfg.prune, cfg.finetune) if part is not None]
    fp = steps.fingerprint({"config": to_dict(cfg)}, inputs)
    if not force and steps.is_complete(out_dir, STEP, fp):
        return steps.read_manifest(out_dir) or {}
    started = time.time()
    fmap = FeatureMap.load(model_dir)
    model_cfg = from_dict(ModelConfig, json.loads((model_dir / "model_config.json").read_text()), str(model_dir))
    model = load_exported(model_dir)
    embeddings = model.vision_arch.item_embeddings if model.vision_arch is not None and hasattr(
        model.vision_arch, "item_embeddings") else None  # fmt: skip
    images = model.vision_arch.images.numpy() if model.vision_arch is not None and embeddings is None else None

    def build(c: ModelConfig) -> Any:
        return build_ranker(fmap, replace_pretrained(c, None), images, item_embeddings=embeddings)

    torch.manual_seed(0)
    compressed, new_cfg, applied = compress_model(model, model_cfg, cfg, build, fmap)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for entry in model_dir.iterdir():
        if entry.name in _NOT_COPIED:
            continue
        (shutil.copytree if entry.is_dir() else shutil.copyfile)(entry, out_dir / entry.name)
    torch.save(plain_state(compressed), out_dir / MODEL_FILE)
    (out_dir / "model_config.json").write_text(json.dumps(to_dict(new_cfg), indent=2) + "\n")
    write_compression(out_dir, cfg, applied)
    results: dict[str, Any] = {
        "source": str(model_dir),
        "applied": applied,
        "parameters": count_parameters(compressed),
        "model_bytes": (out_dir / MODEL_FILE).stat().st_size,
        "source_model_bytes": (model_dir / MODEL_FILE).stat().st_size,
    }
    if (out_dir / ITEM_EMBEDDINGS).exists():
        results["item_embeddings_bytes"] = (out_dir / ITEM_EMBEDDINGS).stat().st_size
    if cfg.serve.program or cfg.serve.aoti:
        from ranker.serving import write_served

        served = load_exported(out_dir)  # serve exactly what load_exported gives
        results["serve"] = write_served(served, out_dir, aoti=cfg.serve.aoti)
    manifest = steps.write_manifest(out_dir, STEP, fp, to_dict(cfg), results, started)
    if (model_dir.parent / "results.json").exists():
        from pipelines import tracking

        line = tracking.log_to_training_run(
            model_dir.parent, {}, [out_dir / "compression.json"], f"compress-{out_dir.name}"
        )
        if line:
            print(f"[compress] {line}", flush=True)
    return manifest
