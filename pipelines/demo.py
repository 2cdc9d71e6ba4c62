"""The default job (``make demo``): the main job (``ranker run``) on both built-in data sets.

1. ``configs/pipeline/demo-movielens.yaml``: MovieLens-100k, Hiformer over sharded embeddings trained on 2 processes,
   evaluated, compressed, both models registered and gated, the champion scoring the test split.
2. ``configs/pipeline/demo-fashion.yaml``: fashion-clicks with a CAFormer tower pretrained on Fashion-MNIST classes
   (frozen image tokens), the same steps; test AUC overall and on cold-start items against the generator's
   Bayes-optimal AUC.

Both pipelines are checked before either runs; every step is skipped on a re-run when unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines import steps
from pipelines.job.config import load_job
from pipelines.job.run import run_pipeline

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pipeline"
PIPELINES = {"movielens-100k": "demo-movielens", "fashion-clicks": "demo-fashion"}


def _metric(metrics: dict[str, Any], scope: str, task: str) -> float | None:
    entry = metrics["cold_warm"][scope]["tasks"][task] if scope != "overall" else metrics["overall"]["tasks"][task]
    return ((entry.get("metrics") or {}).get("auc") or {}).get("value")


def run_demo(data_dir: Path, runs_dir: Path, rows: int = 200_000, seed: int = 0, nproc: int = 2) -> dict[str, Any]:
    data_dir, runs_dir = Path(data_dir), Path(runs_dir)
    jobs = {}
    for dataset, name in PIPELINES.items():
        overrides: dict[str, Any] = {
            "work_dir": str(runs_dir / name),
            "data.out": str(data_dir / "raw" / dataset),
            "features.out": str(data_dir / "features" / dataset),
            "train.nproc": nproc,
            "train.set.seed": seed,
        }
        if dataset == "fashion-clicks":
            overrides |= {"data.rows": rows, "data.seed": seed, "tower.seed": seed}
        jobs[dataset] = load_job(CONFIGS / f"{name}.yaml", overrides)
    summary = {dataset: run_pipeline(job) for dataset, job in jobs.items()}

    fc = jobs["fashion-clicks"]
    evaluated = (steps.read_manifest(fc.work / "evaluate") or {})["results"]
    metrics = json.loads(Path(evaluated["metrics_json"]).read_text())
    bayes = (steps.read_manifest(fc.data) or {})["results"]["bayes_auc"]
    auc = {scope: _metric(metrics, scope, "click") for scope in ("overall", "cold", "warm")}
    summary["fashion-clicks"] |= {"auc": auc, "bayes_optimal_auc": bayes}

    print("\n[demo] results")
    m = summary["movielens-100k"]["metrics"]["like"]
    print(f"  movielens-100k  Hiformer test AUC {m['auc']:.4f}  GAUC {m['gauc']:.4f}  NE {m['ne']:.4f}")
    shown = {k: "n/a" if v is None else f"{v:.4f}" for k, v in auc.items()}
    tower = fc.cfg.tower.name if fc.cfg.tower else "no tower"
    print(
        f"  fashion-clicks  Hiformer + {tower} test AUC {shown['overall']} (Bayes-optimal {bayes['overall']:.4f}); "
        f"cold items {shown['cold']} (Bayes-optimal {bayes['cold']:.4f})"
    )
    for dataset, entry in summary.items():
        print(f"  {dataset}: summary {Path(entry['work_dir']) / 'summary.json'}")
    (runs_dir / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
