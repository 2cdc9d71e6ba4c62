"""Model quality (issue 3): Hiformer vs transformer, heterogeneous attention, DCN-v2 and DLRM, apples to apples.

Every run is ``ranker train`` on one shared base config (``configs/train/bench-movielens.yaml``, or
``bench-fashion.yaml``) with ``--nproc 2``; only ``model.interaction``, ``optim.dense_lr``, ``seed`` and the output
directory vary through ``--set``. Same features, embedding dim, heads, optimiser, batch size, epochs and early
stopping for all models; every interaction keeps its registered default hyper-parameters.

Protocol:

1. tune: seed 0, each model at every dense learning rate of ``LEARNING_RATES`` (equal budget for all models);
   the learning rate with the best **validation** AUC is kept (test metrics are never looked at here).
2. seeds: the kept learning rate at seeds 0, 1, 2 (seed 0 reuses the tuning run); test AUC / GAUC / logloss
   reported as mean ± sample std over seeds.
3. fashion: Hiformer and the best movielens baseline on fashion-clicks (no image tower), seeds 0-2 at their
   movielens learning rate, test AUC against the data set's recorded Bayes-optimal AUC.

Usage::

    python benchmarks/model_quality.py --data-dir /tmp/qb            # runs what is missing, writes results
    python benchmarks/model_quality.py --data-dir /tmp/qb --phases tune seeds
    python benchmarks/model_quality.py --data-dir /tmp/qb --learning-rates 0.003 --seeds 0 1   # the bench suite

``--models``, ``--learning-rates`` and ``--seeds`` shrink the protocol (defaults: the full one above); ``--set``
adds a config override to every run (e.g. ``max_steps=5`` for a plumbing check).

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

import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("hiformer", "transformer", "hetero_attention", "dcnv2", "dlrm")
BASELINES = MODELS[1:]
LEARNING_RATES = (1e-3, 3e-3)  # dense (Adam) learning rate; the sparse row-wise Adagrad LR stays at 0.05
SEEDS = (0, 1, 2)
NPROC = 2
CONFIGS = {"movielens-100k": "configs/train/bench-movielens.yaml", "fashion-clicks": "configs/train/bench-fashion.yaml"}
METRICS = ("auc", "gauc", "logloss")


def run_name(dataset: str, model: str, lr: float, seed: int) -> str:
    return f"{dataset}/{model}-lr{lr:g}-s{seed}"


def train_command(
    dataset: str,
    model: str,
    lr: float,
    seed: int,
    out_dir: Path,
    data_dir: Path,
    interaction_kwargs: dict[str, Any] | None = None,
    overrides: tuple[str, ...] = (),
) -> list[str]:
    """The ``ranker train`` command line of one run (features read from ``data_dir``)."""
    sets = {
        "features": str(data_dir / "features" / dataset),
        "out_dir": str(out_dir),
        "model.interaction": model,
        "optim.dense_lr": f"{lr:g}",
        "seed": str(seed),
    } | {
        f"model.interaction_kwargs.{model}.{k}": "null" if v is None else str(v)
        for k, v in (interaction_kwargs or {}).items()
    }
    cmd = ["python", "-m", "pipelines.cli", "train", "--config", CONFIGS[dataset], "--nproc", str(NPROC)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def run(
    dataset: str, model: str, lr: float, seed: int, runs: Path, data_dir: Path, overrides: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Trains one configuration unless its results exist; returns the summary kept in the report."""
    out_dir = runs / run_name(dataset, model, lr, seed)
    cmd = train_command(dataset, model, lr, seed, out_dir, data_dir, overrides=overrides)
    result_file = out_dir / "results.json"
    if not result_file.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"[quality] {shlex.join(cmd)}", flush=True)
        started = time.time()
        with (out_dir / "train.log").open("w") as log:
            code = subprocess.call([sys.executable, *cmd[1:]], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if code != 0 or not result_file.exists():
            raise RuntimeError(f"{run_name(dataset, model, lr, seed)} failed ({code}); see {out_dir / 'train.log'}")
        print(f"[quality]   done in {time.time() - started:.0f} s", flush=True)
    res = json.loads(result_file.read_text())
    task = next(iter(res["test"])).split("/")[0]
    test = {m: res["test"][f"{task}/{m}"] for m in METRICS}
    if dataset == "fashion-clicks":
        test |= {
            f"auc_{k}": v for k, v in cold_warm_auc(Path(res["export_dir"]), data_dir / "features" / dataset).items()
        }
    return {
        "dataset": dataset,
        "model": model,
        "dense_lr": lr,
        "seed": seed,
        "command": shlex.join(cmd),
        "best_valid_auc": res["best_valid_auc"],
        "best_step": res["best_step"],
        "steps": res["steps"],
        "stopped_early": res["stopped_early"],
        "train_seconds": res["train_seconds"],
        "test": test,
    }


def cold_warm_auc(export_dir: Path, features: Path) -> dict[str, float | None]:
    """Test AUC of an exported model on rows whose item is cold (unseen in training) and on the others."""
    from features.loader import RankLoader
    from features.processor import FeatureMap, processed_files
    from pipelines import metrics
    from ranker.export import load_exported

    model = load_exported(export_dir)
    fmap = FeatureMap.load(features)
    scores, labels, cold = [], [], []
    with torch.no_grad():
        for batch in RankLoader(processed_files(features, "test"), fmap, 4096, mode="eval"):
            scores.append(torch.sigmoid(model(batch)[:, 0]))
            labels.append(batch.labels[:, 0])
            cold.append(batch.is_cold)
    p, y, c = (torch.cat(t).numpy() for t in (scores, labels, cold))
    return {"cold": metrics.auc(p[c], y[c]), "warm": metrics.auc(p[~c], y[~c])}


def interaction_params(dataset: str, data_dir: Path) -> dict[str, int]:
    """Trainable parameters of each interaction (+ heads, + dense arch) at the benchmark config, tables excluded."""
    from features.processor import FeatureMap
    from pipelines.train import load_config
    from ranker.build import build_ranker

    fmap = FeatureMap.load(data_dir / "features" / dataset)
    counts = {}
    for model in MODELS:
        cfg = load_config(ROOT / CONFIGS[dataset], {"model.interaction": model, "features": "-", "out_dir": "-"})
        ranker = build_ranker(fmap, cfg.model, sparse_device=torch.device("meta"))
        counts[model] = sum(p.numel() for n, p in ranker.named_parameters() if not n.startswith("sparse_arch"))
    return counts


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample std over seeds of each test metric (and of the best validation AUC)."""
    out: dict[str, dict[str, float]] = {}
    series = {m: [r["test"][m] for r in rows] for m in rows[0]["test"]} | {
        "valid_auc": [r["best_valid_auc"] for r in rows]
    }
    for name, values in series.items():
        out[name] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "note": "CPU only, 2 cores shared with other jobs: timings are noisy",
    }


def fmt(stat: dict[str, float], digits: int = 4) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def write_markdown(report: dict[str, Any], path: Path) -> None:
    ml = report["movielens-100k"]
    rates = report["learning_rates"]
    lines = [
        "# Model quality: Hiformer vs baselines",
        "",
        "Produced by `benchmarks/model_quality.py` (raw numbers in `model_quality.json`).",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cpu_count']} cores, torch "
        f"{report['machine']['torch']}; {report['machine']['note']}.",
        "",
        "## Protocol",
        "",
        f"- One base config per data set (`{CONFIGS['movielens-100k']}`, `{CONFIGS['fashion-clicks']}`), "
        f"`--nproc {NPROC}`: embedding dim 16, 1 dense token, head MLP 64, batch 256, 3 epochs, validation every "
        "100 steps, early stopping patience 3 on valid AUC, best-valid checkpoint exported and tested; row-wise "
        "Adagrad (lr 0.05) for embeddings, Adam + warm-up (20 steps) + cosine for the dense part.",
        "- Each interaction at its registered defaults (attention models: 2 layers, 2 heads, FFN 4·D, pre-LN, last "
        "layer pruned to the task token; Hiformer ranks auto: r_k = 2·D, r_v = 4·D; DCN-v2: 3 full-rank cross "
        "layers, stacked MLP 256-128; DLRM: dot interaction + MLP 256-128).",
        f"- Tuned, equally for every model: the dense Adam learning rate in {rates} at seed 0, "
        "chosen on **validation** AUC (best checkpoint of the run). Nothing else was tuned.",
        f"- Then seeds {report['seeds']} at the chosen learning rate; mean ± sample std over the "
        f"{len(report['seeds'])} seeds.",
        "",
        "## movielens-100k (temporal split), test metrics",
        "",
        "| model | dense lr | test AUC | test GAUC | test logloss | valid AUC | params (non-embedding) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        if model not in ml["summary"]:
            continue
        s = ml["summary"][model]
        lines.append(
            f"| {model} | {s['dense_lr']:g} | {fmt(s['auc'])} | {fmt(s['gauc'])} | {fmt(s['logloss'])} | "
            f"{fmt(s['valid_auc'])} | {ml['params'][model]:,} |"
        )
    lines += ["", "Learning-rate selection (seed 0, best validation AUC):", ""]
    lines += ["| model | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | chosen |"]
    lines += ["|---|" + "---|" * (len(rates) + 1)]
    for model, by_lr in ml["tuning"].items():
        cells = " | ".join(f"{by_lr[f'{lr:g}']:.4f}" if f"{lr:g}" in by_lr else "-" for lr in rates)
        lines.append(f"| {model} | {cells} | {ml['summary'].get(model, {}).get('dense_lr', '-')} |")
    lines += ["", "## Verdict", "", report["verdict"], ""]
    fc = report.get("fashion-clicks")
    if fc and fc["summary"]:
        lines += [
            "## fashion-clicks (300k rows, seed 0 data, no image tower), test AUC vs Bayes-optimal",
            "",
            f"Bayes-optimal test AUC (from the generator's true click probabilities): overall "
            f"{fc['bayes_auc']['overall']:.4f}, warm items {fc['bayes_auc']['warm']:.4f}, cold items "
            f"{fc['bayes_auc']['cold']:.4f}.",
            "",
            "| model | dense lr | test AUC | gap to Bayes | AUC warm | AUC cold | test GAUC | test logloss |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for model, s in fc["summary"].items():
            gap = fc["bayes_auc"]["overall"] - s["auc"]["mean"]
            lines.append(
                f"| {model} | {s['dense_lr']:g} | {fmt(s['auc'])} | {gap:.4f} | {fmt(s['auc_warm'])} | "
                f"{fmt(s['auc_cold'])} | {fmt(s['gauc'])} | "
                f"{fmt(s['logloss'])} |"
            )
        lines.append("")
    lines += ["## Notes", "", *[f"- {note}" for note in report["notes"]], ""]
    lines += ["## Commands", "", "```"]
    lines += ["python -m pipelines.cli --data-dir /tmp/qb data build movielens-100k"]
    lines += ["python -m pipelines.cli --data-dir /tmp/qb features build /tmp/qb/raw/movielens-100k/schema.yaml"]
    lines += ["python -m pipelines.cli --data-dir /tmp/qb data build fashion-clicks --rows 300000 --seed 0"]
    lines += ["python -m pipelines.cli --data-dir /tmp/qb features build /tmp/qb/raw/fashion-clicks/schema.yaml"]
    lines += ["python benchmarks/model_quality.py --data-dir /tmp/qb   # runs every command below", ""]
    lines += [r["command"] for r in report["runs"]]
    lines += ["```", ""]
    path.write_text("\n".join(lines))


def verdict(summary: dict[str, dict[str, Any]]) -> str:
    if "hiformer" not in summary or not any(b in summary for b in BASELINES):
        return "Incomplete: not every model has finished."
    best = max((b for b in BASELINES if b in summary), key=lambda b: summary[b]["auc"]["mean"])
    hi, bb = summary["hiformer"]["auc"], summary[best]["auc"]
    diff = hi["mean"] - bb["mean"]
    noise = max(hi["std"], bb["std"])
    if diff >= 0:
        claim = f"Yes: Hiformer's mean test AUC ({fmt(hi)}) is at least the best baseline's ({best}, {fmt(bb)})"
    else:
        claim = f"No: Hiformer's mean test AUC ({fmt(hi)}) is below the best baseline's ({best}, {fmt(bb)})"
    within = "within" if abs(diff) <= noise else "outside"
    return f"{claim}; the difference {diff:+.4f} is {within} one seed std ({noise:.4f})."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/qb"), help="holds features/<data set>")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/qb/runs/model_quality"), help="run directories")
    parser.add_argument(
        "--phases", nargs="+", default=["tune", "seeds", "fashion"], choices=["tune", "seeds", "fashion"]
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "model_quality")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--learning-rates", nargs="+", type=float, default=list(LEARNING_RATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), help="the first one is the tuning seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    args = parser.parse_args()
    sets = tuple(args.set)

    report_path = args.out.with_suffix(".json")
    previous = json.loads(report_path.read_text()) if report_path.exists() else {}
    runs: list[dict[str, Any]] = []
    ml = "movielens-100k"
    tuning: dict[str, dict[str, float]] = {}
    tune_seed = args.seeds[0]
    for model in args.models:
        for lr in args.learning_rates:
            if "tune" in args.phases or (args.runs / run_name(ml, model, lr, tune_seed) / "results.json").exists():
                runs.append(run(ml, model, lr, tune_seed, args.runs, args.data_dir, sets))
                tuning.setdefault(model, {})[f"{lr:g}"] = runs[-1]["best_valid_auc"]
    chosen = {
        model: float(max(by_lr, key=lambda k: by_lr[k]))
        for model, by_lr in tuning.items()
        if len(by_lr) == len(args.learning_rates)
    }
    summary: dict[str, dict[str, Any]] = {}
    for model, lr in chosen.items():
        seeds = [r for r in runs if r["model"] == model and r["dense_lr"] == lr]
        for seed in args.seeds[1:]:
            if "seeds" in args.phases or (args.runs / run_name(ml, model, lr, seed) / "results.json").exists():
                seeds.append(run(ml, model, lr, seed, args.runs, args.data_dir, sets))
                runs.append(seeds[-1])
        if len(seeds) == len(args.seeds):
            summary[model] = {"dense_lr": lr, **aggregate(seeds)}
    report: dict[str, Any] = {
        "machine": machine(),
        "command": shlex.join(["python", "benchmarks/model_quality.py", *sys.argv[1:]]),
        "learning_rates": args.learning_rates,
        "seeds": args.seeds,
        "nproc": NPROC,
        ml: {"tuning": tuning, "summary": summary, "params": interaction_params(ml, args.data_dir)},
    }
    report["verdict"] = verdict(summary)

    fc = "fashion-clicks"
    bayes = json.loads((args.data_dir / "raw" / fc / "manifest.json").read_text())["results"]["bayes_auc"]
    fc_summary: dict[str, dict[str, Any]] = {}
    baselines = [b for b in BASELINES if b in summary]
    fc_models = ["hiformer"] + ([max(baselines, key=lambda b: summary[b]["auc"]["mean"])] if baselines else [])
    for model in fc_models if "hiformer" in chosen else []:
        lr = chosen[model]
        rows = []
        for seed in args.seeds:
            if "fashion" in args.phases or (args.runs / run_name(fc, model, lr, seed) / "results.json").exists():
                rows.append(run(fc, model, lr, seed, args.runs, args.data_dir, sets))
        runs += rows
        if rows:
            fc_summary[model] = {"dense_lr": lr, "seeds": [r["seed"] for r in rows], **aggregate(rows)}
    report[fc] = {"bayes_auc": bayes, "summary": fc_summary}
    report["notes"] = args.note or previous.get("notes", [])
    report["runs"] = runs
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out.with_suffix(".md"))
    print(report["verdict"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
