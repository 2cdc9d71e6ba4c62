"""Built-in data sets: build the raw parquet and its schema YAML into a data directory (a resumable step)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from features.datasets import fashion_clicks, movielens
from pipelines import steps

DATASETS = ("movielens-100k", "fashion-clicks")
_SCHEMAS = Path(fashion_clicks.__file__).parent


def build_dataset(
    name: str,
    out_dir: Path,
    rows: int = 200_000,
    seed: int = 0,
    force: bool = False,
    progress: bool = False,
    *,
    rows_per_user: int | None = None,
    interaction_strength: float | None = None,
) -> dict[str, Any]:
    """Builds data set ``name`` into ``out_dir``: ``train/valid/test.parquet``, ``schema.yaml``, ``manifest.json``.

    ``rows``, ``seed``, ``rows_per_user`` and ``interaction_strength`` (None: the generator's default) apply to the
    simulated ``fashion-clicks``; MovieLens-100k is fixed real data.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; built-in data sets: {list(DATASETS)}")
    knobs = {"rows_per_user": rows_per_user, "interaction_strength": interaction_strength}
    given = {key: value for key, value in knobs.items() if value is not None}
    if name == "movielens-100k" and given:
        raise ValueError(f"{sorted(given)} apply to fashion-clicks only, not to {name}")
    params = fashion_clicks.SimParams(**given)
    out_dir = Path(out_dir)
    config: dict[str, Any] = {"name": name}
    if name == "fashion-clicks":
        config |= {"rows": rows, "seed": seed, **{key: getattr(params, key) for key in knobs}}
    fp = steps.fingerprint(config)
    if not force and steps.is_complete(out_dir, "data", fp):
        _copy_schema(name, out_dir)  # the data are unchanged, but the packaged schema may be newer
        return steps.read_manifest(out_dir) or {}
    started = time.time()
    if name == "movielens-100k":
        results: dict[str, Any] = movielens.build_movielens(out_dir)
    else:
        results = fashion_clicks.build_fashion_clicks(out_dir, rows=rows, seed=seed, progress=progress, params=params)
    _copy_schema(name, out_dir)
    return steps.write_manifest(out_dir, "data", fp, config, results, started)


def _copy_schema(name: str, out_dir: Path) -> None:
    """Writes the packaged schema beside the data, touching the file only when its content changed."""
    target = out_dir / "schema.yaml"
    source = _SCHEMAS / f"{name}.yaml"
    if not target.exists() or target.read_bytes() != source.read_bytes():
        shutil.copyfile(source, target)
