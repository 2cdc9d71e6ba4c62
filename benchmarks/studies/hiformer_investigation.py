"""Hiformer vs DCN-v2 on movielens-100k: diagnosis and an equal extra tuning budget.

A follow-up of ``benchmarks/results/studies/model_quality_before_sparse_fix.md``.

Protocol (everything else as in ``benchmarks/model_quality.py``: ``configs/train/bench-movielens.yaml``,
``--nproc 2``, dense lr 0.003, which both models picked there):

1. tune: seed 0, the registered defaults (reused from the model_quality runs) plus the SAME number of extra
   interaction configurations for each model (``TUNE``); the configuration with the best **validation** AUC
   (best checkpoint) is kept. Test metrics are not looked at for the choice.
2. seeds: the kept configuration at seeds 0, 1, 2; test AUC / logloss mean ± sample std.
3. diagnose: every kept run and the defaults are scored on valid and test (``pipelines.evaluate.score_split``,
   same row order as the processed parquet); AUC, logloss and calibration (mean prediction / mean label) overall,
   on warm users (user_id in the training vocabulary) and on cold users (user_id == 1, the OOV id).

Usage::

    python benchmarks/studies/hiformer_investigation.py --data-dir /tmp/qb                 # all phases
    python benchmarks/studies/hiformer_investigation.py --data-dir /tmp/qb --phases tune

Finished runs (``<runs>/<name>/results.json``) are reused, so the script can be stopped and rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.model_quality import train_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DATASET = "movielens-100k"
CONFIG = "configs/train/bench-movielens.yaml"
DENSE_LR = 3e-3
SEEDS = (0, 1, 2)
NPROC = 2
OOV_ID = 1
MODELS = ("hiformer", "dcnv2")
ROUND1 = 4  # the first 4 extra configurations of each model form round 1; the next 4 round 2
# Extra configurations, the same number per model (interaction kwargs on top of the registered defaults).
TUNE: dict[str, dict[str, dict[str, Any]]] = {
    "hiformer": {
        "dropout0.1": {"dropout": 0.1},
        "composite": {"query_mode": "composite"},
        "layers1": {"num_layers": 1},
        "rank16-32": {"rank_k": 16, "rank_v": 32},
        # round 2 (chosen after round 1's validation AUCs only)
        "heads4": {"num_heads": 4},
        "ffn32": {"ffn_hidden": 32},
        "postnorm": {"norm": "post"},
        "fullrank": {"rank_k": None, "rank_v": None},
    },
    "dcnv2": {
        "cross2": {"num_cross_layers": 2},
        "cross4": {"num_cross_layers": 4},
        "lowrank32": {"low_rank": 32},
        "parallel": {"structure": "parallel"},
        # round 2 (chosen after round 1's validation AUCs only)
        "cross1": {"num_cross_layers": 1},
        "parallel-cross2": {"structure": "parallel", "num_cross_layers": 2},
        "parallel-lowrank32": {"structure": "parallel", "low_rank": 32},
        "mlp512-256": {"hidden": [512, 256]},
    },
}


def run_dir(runs: Path, model: str, variant: str, seed: int) -> Path:
    """The defaults reuse the model_quality runs (same command); the variants get their own directories."""
    if variant == "default":
        return runs.parent / "model_quality" / DATASET / f"{model}-lr{DENSE_LR:g}-s{seed}"
    return runs / f"{model}-{variant}-s{seed}"


def kept_variants(report: dict[str, Any], model: str) -> list[str]:
    """Defaults, the round-1 and the final (round 1 + 2) valid-selected configurations of ``model``."""
    picks = {"default", report.get("selected_round1", {}).get(model, "default")}
    return sorted(picks | {report.get("selected", {}).get(model, "default")})


def kwargs_of(model: str, variant: str) -> dict[str, Any]:
    return {} if variant == "default" else TUNE[model][variant]


def run(model: str, variant: str, seed: int, runs: Path, data_dir: Path) -> dict[str, Any]:
    """Trains one configuration unless its results exist; returns its summary."""
    out_dir = run_dir(runs, model, variant, seed)
    cmd = train_command(DATASET, model, DENSE_LR, seed, out_dir, data_dir, kwargs_of(model, variant))
    result_file = out_dir / "results.json"
    if not result_file.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"[hiformer-inv] {shlex.join(cmd)}", flush=True)
        started = time.time()
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        with (out_dir / "train.log").open("w") as log:
            code = subprocess.call([sys.executable, *cmd[1:]], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        if code != 0 or not result_file.exists():
            raise RuntimeError(f"{out_dir.name} failed ({code}); see {out_dir / 'train.log'}")
        print(f"[hiformer-inv]   done in {time.time() - started:.0f} s", flush=True)
    res = json.loads(result_file.read_text())
    task = next(iter(res["test"])).split("/")[0]
    return {
        "model": model,
        "variant": variant,
        "kwargs": kwargs_of(model, variant),
        "seed": seed,
        "run_dir": str(out_dir),
        "command": shlex.join(cmd),
        "best_valid_auc": res["best_valid_auc"],
        "best_step": res["best_step"],
        "steps": res["steps"],
        "train_seconds": res.get("train_seconds"),
        "test": {m: res["test"][f"{task}/{m}"] for m in ("auc", "gauc", "logloss", "calibration")},
        "history": res["history"],
        "export_dir": res.get("export_dir", str(out_dir / "export")),
    }


def fashion_check(seed: int, runs: Path, data_dir: Path) -> dict[str, Any]:
    """Out-of-protocol check: the movielens pick (Hiformer, post-LN) on fashion-clicks, no selection there."""
    from benchmarks.model_quality import cold_warm_auc

    out_dir = runs / f"fashion-hiformer-postnorm-s{seed}"
    cmd = ["python", "-m", "pipelines.cli", "train", "--config", "configs/train/bench-fashion.yaml", "--nproc", "2"]
    for key, value in {
        "features": str(data_dir / "features" / "fashion-clicks"),
        "out_dir": str(out_dir),
        "model.interaction": "hiformer",
        "optim.dense_lr": f"{DENSE_LR:g}",
        "seed": str(seed),
        "model.interaction_kwargs.hiformer.norm": "post",
    }.items():
        cmd += ["--set", f"{key}={value}"]
    if not (out_dir / "results.json").exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"[hiformer-inv] {shlex.join(cmd)}", flush=True)
        with (out_dir / "train.log").open("w") as log:
            code = subprocess.call(
                [sys.executable, *cmd[1:]],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ | {"OMP_NUM_THREADS": "1"},
            )
        if code != 0:
            raise RuntimeError(f"{out_dir.name} failed ({code})")
    res = json.loads((out_dir / "results.json").read_text())
    items = cold_warm_auc(Path(res["export_dir"]), data_dir / "features" / "fashion-clicks")
    return {
        "seed": seed,
        "command": shlex.join(cmd),
        "best_valid_auc": res["best_valid_auc"],
        "best_step": res["best_step"],
        "steps": res["steps"],
        "test_auc": res["test"]["click/auc"],
        "test": res["test"],
        "auc_warm_items": items["warm"],
        "auc_cold_items": items["cold"],
    }


def segment_metrics(run_summary: dict[str, Any], data_dir: Path, scratch: Path) -> dict[str, dict[str, Any]]:
    """AUC / logloss / calibration of the exported best checkpoint on valid and test: all, warm and cold users."""
    import polars as pl

    from features.processor import processed_files
    from pipelines import metrics
    from pipelines.evaluate import score_split

    features = data_dir / "features" / DATASET
    out: dict[str, dict[str, Any]] = {}
    for split in ("valid", "test"):
        pred_path = scratch / f"{Path(run_summary['run_dir']).name}-{split}.parquet"
        if not pred_path.exists():
            score_split(Path(run_summary["export_dir"]), features, split, pred_path)
        pred = pl.read_parquet(pred_path)
        users = pl.concat([pl.read_parquet(f, columns=["user_id"]) for f in processed_files(features, split)])
        if users.height != pred.height:
            raise RuntimeError(f"{split}: {users.height} processed rows vs {pred.height} predictions")
        p = pred["score_like"].to_numpy().astype(np.float64)
        y = pred["label_like"].to_numpy().astype(np.float64)
        cold = users["user_id"].to_numpy() == OOV_ID
        seg: dict[str, Any] = {}
        for name, mask in (("all", np.ones_like(cold)), ("warm", ~cold), ("cold", cold)):
            pp, yy = np.clip(p[mask], 1e-7, 1 - 1e-7), y[mask]
            seg[name] = {
                "rows": int(mask.sum()),
                "positive_rate": float(yy.mean()),
                "mean_pred": float(pp.mean()),
                "calibration": float(pp.mean() / yy.mean()),
                "auc": float(metrics.auc(pp, yy)),
                "logloss": float(-np.mean(yy * np.log(pp) + (1 - yy) * np.log(1 - pp))),
            }
        out[split] = seg
    return out


def paired_gap(
    scratch: Path, data_dir: Path, a: list[str], b: list[str], split: str = "test", n_boot: int = 300
) -> dict[str, Any]:
    """AUC(a) - AUC(b) per user segment, averaged over seeds, with a paired row bootstrap (same rows for both).

    ``a`` and ``b`` are run directory names whose ``<name>-<split>.parquet`` predictions exist in ``scratch``.
    """
    import polars as pl

    from features.processor import processed_files
    from pipelines import metrics

    features = data_dir / "features" / DATASET
    users = pl.concat([pl.read_parquet(f, columns=["user_id"]) for f in processed_files(features, split)])
    cold = users["user_id"].to_numpy() == OOV_ID
    y = pl.read_parquet(scratch / f"{a[0]}-{split}.parquet")["label_like"].to_numpy()

    def scores(names: list[str]) -> list[np.ndarray]:
        return [pl.read_parquet(scratch / f"{n}-{split}.parquet")["score_like"].to_numpy() for n in names]

    sa, sb = scores(a), scores(b)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for name, mask in (("all", np.ones_like(cold)), ("warm", ~cold), ("cold", cold)):
        idx = np.flatnonzero(mask)

        def gap(rows: np.ndarray) -> float:
            return float(
                np.mean([metrics.auc(s[rows], y[rows]) for s in sa])
                - np.mean([metrics.auc(s[rows], y[rows]) for s in sb])
            )

        boot = [gap(rng.choice(idx, size=idx.size)) for _ in range(n_boot)]
        out[name] = {"gap": gap(idx), "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]}
    return out


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/qb"))
    parser.add_argument("--runs", type=Path, default=None, help="default: DATA_DIR/runs/hiformer_investigation")
    parser.add_argument("--phases", nargs="+", default=["tune", "seeds", "diagnose"])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "studies" / "hiformer_investigation.json"
    )
    args = parser.parse_args()
    runs = args.runs or args.data_dir / "runs" / "hiformer_investigation"
    runs.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    report["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "note": "CPU only, 2 cores shared with other jobs' training runs",
    }
    report["protocol"] = {"dataset": DATASET, "config": CONFIG, "dense_lr": DENSE_LR, "nproc": NPROC, "tune": TUNE}

    if "tune" in args.phases or "seeds" in args.phases:
        tune: dict[str, list[dict[str, Any]]] = {m: [] for m in MODELS}
        variants = {m: ["default", *TUNE[m]] for m in MODELS}
        # Interleaved so that a partial sweep stays balanced between the two models.
        for i in range(max(len(v) for v in variants.values())):
            for model in MODELS:
                if i < len(variants[model]):
                    tune[model].append(run(model, variants[model][i], 0, runs, args.data_dir))
        report["tune"] = {
            m: [{k: r[k] for k in ("variant", "kwargs", "best_valid_auc", "best_step", "command")} for r in rows]
            for m, rows in tune.items()
        }
        report["selected"] = {m: max(rows, key=lambda r: r["best_valid_auc"])["variant"] for m, rows in tune.items()}
        # After round 1 only (defaults + the first ROUND1 extra configurations of each model).
        report["selected_round1"] = {
            m: max(rows[: 1 + ROUND1], key=lambda r: r["best_valid_auc"])["variant"] for m, rows in tune.items()
        }
        print(json.dumps({"selected": report["selected"], "round1": report["selected_round1"]}), flush=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    if "seeds" in args.phases:
        seeds: dict[str, Any] = {}
        for model in MODELS:
            for variant in kept_variants(report, model):
                rows = [run(model, variant, s, runs, args.data_dir) for s in SEEDS]
                seeds[f"{model}/{variant}"] = {
                    "runs": [
                        {k: r[k] for k in ("seed", "best_valid_auc", "best_step", "steps", "test", "command")}
                        for r in rows
                    ],
                    "test_auc": mean_std([r["test"]["auc"] for r in rows]),
                    "test_gauc": mean_std([r["test"]["gauc"] for r in rows]),
                    "test_logloss": mean_std([r["test"]["logloss"] for r in rows]),
                    "valid_auc": mean_std([r["best_valid_auc"] for r in rows]),
                }
        report["seeds"] = seeds
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    if "diagnose" in args.phases:
        scratch = runs / "predictions"
        scratch.mkdir(exist_ok=True)
        diag: dict[str, Any] = {}
        for model in MODELS:
            variants = kept_variants(report, model)
            for variant in variants:
                for seed in SEEDS:
                    if not (run_dir(runs, model, variant, seed) / "results.json").exists():
                        continue
                    r = run(model, variant, seed, runs, args.data_dir)
                    diag[f"{model}/{variant}/s{seed}"] = {
                        "segments": segment_metrics(r, args.data_dir, scratch),
                        "history": [
                            {
                                k: h.get(k)
                                for k in ("step", "epoch", "train/loss", "valid/like/auc", "valid/like/logloss")
                            }
                            for h in r["history"]
                        ],
                        "best_step": r["best_step"],
                    }
        report["diagnose"] = diag
        gaps: dict[str, Any] = {}
        pairs = {("default", "default")} | {
            (report.get(key, {}).get("hiformer", "default"), report.get(key, {}).get("dcnv2", "default"))
            for key in ("selected_round1", "selected")
        }
        for va, vb in sorted(pairs):
            if all(f"{m}/{v}/s{s}" in diag for m, v in (("hiformer", va), ("dcnv2", vb)) for s in SEEDS):
                names = [[run_dir(runs, m, v, s).name for s in SEEDS] for m, v in (("hiformer", va), ("dcnv2", vb))]
                for split in ("valid", "test"):
                    gaps[f"hiformer/{va} - dcnv2/{vb} ({split})"] = paired_gap(scratch, args.data_dir, *names, split)
        report["auc_gap_by_segment"] = gaps
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if "fashion" in args.phases:
        rows = [fashion_check(seed, runs, args.data_dir) for seed in SEEDS]
        report["fashion_check"] = {
            "runs": rows,
            "test_auc": mean_std([r["test_auc"] for r in rows]),
            "auc_warm_items": mean_std([r["auc_warm_items"] for r in rows]),
            "auc_cold_items": mean_std([r["auc_cold_items"] for r in rows]),
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
