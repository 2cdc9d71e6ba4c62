"""The default job (``make demo``): data -> features -> train (2 ranks) -> evaluate -> report, on both data sets.

1. MovieLens-100k: Hiformer over sharded embeddings, trained with torchrun; test metrics; HTML report.
2. fashion-clicks: a CAFormer tower pretrained on Fashion-MNIST classes, then Hiformer with frozen image tokens;
   test AUC overall and on cold-start items against the generator's Bayes-optimal AUC; HTML report.

Every step is resumable: finished steps (same inputs and config) are skipped on a re-run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.config import parse_overrides, to_dict
from features.processor import FEATURE_MAP
from pipelines.build_features import build_features
from pipelines.data import build_dataset
from pipelines.evaluate import evaluate_model
from pipelines.launch import launch_training
from pipelines.train import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
TOWER = "caformer_fm"


def _train(config: Path, overrides: dict[str, str], nproc: int) -> dict[str, Any]:
    """Trains unless a finished run with the same resolved config and feature map exists; returns results.json."""
    sets = [f"{k}={v}" for k, v in overrides.items()]
    cfg = load_config(config, parse_overrides(sets))
    out = Path(cfg.out_dir)
    done = out / "results.json"
    saved = out / "export" / "train_config.json"
    same_config = saved.exists() and json.loads(saved.read_text()) == json.loads(json.dumps(to_dict(cfg)))
    map_now, map_then = Path(cfg.features) / FEATURE_MAP, out / "export" / FEATURE_MAP
    same_features = map_then.exists() and map_now.read_bytes() == map_then.read_bytes()
    if done.exists() and same_config and same_features:
        print(f"[demo] {out}: already trained with this config, skipping")
    else:
        launch_training(config, nproc, sets)  # raises ChildProcessError when the job fails
    return json.loads(done.read_text())


def _metric(metrics: dict[str, Any], scope: str, task: str) -> float | None:
    entry = metrics["cold_warm"][scope]["tasks"][task] if scope != "overall" else metrics["overall"]["tasks"][task]
    return ((entry.get("metrics") or {}).get("auc") or {}).get("value")


def run_demo(data_dir: Path, runs_dir: Path, rows: int = 200_000, seed: int = 0, nproc: int = 2) -> dict[str, Any]:
    data_dir, runs_dir = Path(data_dir), Path(runs_dir)
    summary: dict[str, Any] = {}
    bayes: dict[str, float] = {}
    for name in ("movielens-100k", "fashion-clicks"):
        raw = data_dir / "raw" / name
        manifest = build_dataset(name, raw, rows=rows, seed=seed, progress=True)
        if name == "fashion-clicks":
            bayes = manifest["results"]["bayes_auc"]
        feats = build_features(raw / "schema.yaml", data_dir / "features" / name)
        counts = {s: r["rows_out"] for s, r in feats["results"]["splits"].items()}
        print(f"[demo] {name}: processed rows {counts}")

    ml_features = data_dir / "features" / "movielens-100k"
    ml_overrides = {"features": str(ml_features), "out_dir": str(runs_dir / "demo-movielens"), "seed": str(seed)}
    ml = _train(CONFIGS / "movielens.yaml", ml_overrides, nproc)
    ml_eval = evaluate_model(runs_dir / "demo-movielens" / "export", ml_features, runs_dir / "demo-movielens" / "eval")
    summary["movielens-100k"] = {"test": ml["test"], "report": ml_eval["results"]["report"]}

    tower_ckpt = runs_dir / "towers" / f"{TOWER}.pt"
    if not tower_ckpt.exists():
        from vision_towers.pretrain import pretrain

        print(f"[demo] pretraining {TOWER} on Fashion-MNIST classes -> {tower_ckpt}")
        pretrain(TOWER, tower_ckpt, n_train=2000, epochs=1, seed=seed)
    fc_features = data_dir / "features" / "fashion-clicks"
    fc_run = runs_dir / "demo-fashion-image"
    fc_overrides = {
        "features": str(fc_features),
        "out_dir": str(fc_run),
        "seed": str(seed),
        "model.vision.pretrained": str(tower_ckpt),
    }
    fc = _train(CONFIGS / "fashion-image.yaml", fc_overrides, nproc)
    fc_eval = evaluate_model(fc_run / "export", fc_features, fc_run / "eval")
    metrics = json.loads(Path(fc_eval["results"]["metrics_json"]).read_text())
    summary["fashion-clicks"] = {
        "test": fc["test"],
        "auc": {scope: _metric(metrics, scope, "click") for scope in ("overall", "cold", "warm")},
        "bayes_optimal_auc": bayes,
        "report": fc_eval["results"]["report"],
    }

    print("\n[demo] results")
    m = ml["test"]
    print(f"  movielens-100k  Hiformer test AUC {m['like/auc']:.4f}  GAUC {m['like/gauc']:.4f}  NE {m['like/ne']:.4f}")
    auc = {k: "n/a" if v is None else f"{v:.4f}" for k, v in summary["fashion-clicks"]["auc"].items()}
    print(
        f"  fashion-clicks  Hiformer + {TOWER} test AUC {auc['overall']} (Bayes-optimal {bayes['overall']:.4f}); "
        f"cold items {auc['cold']} (Bayes-optimal {bayes['cold']:.4f})"
    )
    print(f"  reports: {summary['movielens-100k']['report']}\n           {summary['fashion-clicks']['report']}")
    (runs_dir / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
