"""Learning curve and interaction ablation on fashion-clicks (issue 13, section 1), against the generator's ceilings.

``--mode curve``: test AUC overall / warm / cold of each model at each log size (``--rows``) and training seed,
next to the data's Bayes-optimal AUC and its two observable ceilings (docs/fashion_clicks.md: (i) a cold item's
popularity unknown; (ii) in addition the users' latent bias and taste unknown).

``--mode ablation``: the planted segment x hour x category interaction at each ``--strengths`` multiplier
(0 = off, 1 = default, 2 = strong) at one size (``--ablation-rows``); Hiformer's test AUC margin over DCN-v2 per
seed with its paired request-level bootstrap interval (``pipelines.metrics.compare`` on the two models'
predictions of the same impressions), overall / cold / warm.

Every run is ``ranker train`` on ``configs/train/bench-fashion.yaml`` (no image tower, each interaction at its
registered defaults, the config's learning rates for all models) with only the features, output folder,
``model.interaction`` and ``seed`` changed (plus any ``--set``), then ``ranker evaluate``. Every log is built with
data seed 0 (``ranker data build fashion-clicks --rows R --seed 0 --interaction-strength X``); ``--seeds N`` are
training seeds 0..N-1 on that log. Finished steps are reused, so the script can be stopped and rerun.

Usage (full size: hours on 2 cores, see benchmarks/results/learning_curve.md once run)::

    python benchmarks/learning_curve.py --work /tmp/lc                   # writes results/learning_curve.*
    python benchmarks/learning_curve.py --work /tmp/lc --mode ablation   # writes results/learning_curve_ablation.*
    python benchmarks/learning_curve.py --work /tmp/lcs --rows 20000 --seeds 1 --models hiformer dcnv2 \\
        --set epochs=1 --nproc 1 --bootstrap 20 --out /tmp/lcs/learning_curve      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.features_bench import machine  # noqa: E402
from benchmarks.runs import cached_step, cli, machine_section, overrides, write_report  # noqa: E402
from benchmarks.runs import train_and_evaluate as trained  # noqa: E402
from benchmarks.studies.image_towers_ranker import fmt_delta, paired_auc_delta  # noqa: E402

CONFIG = "configs/train/bench-fashion.yaml"
DATASET = "fashion-clicks"
MODELS = ("hiformer", "dcnv2", "dlrm", "transformer")
SCOPES = ("overall", "cold", "warm")
CEILINGS = {
    "bayes_auc": "Bayes",
    "observable_auc_known_users": "obs. (i) users known",
    "observable_auc_unknown_users": "obs. (ii) users unknown",
}


def build_data(work: Path, rows: int, strength: float) -> tuple[Path, dict[str, Any]]:
    """Builds the log and its features once; returns the features folder and the generator's manifest."""
    folder = work / f"data-r{rows}-x{strength:g}"
    raw, features = folder / "raw", folder / "features"
    build = cli("data", "build", DATASET, "--rows", str(rows), "--seed", "0", "--interaction-strength", f"{strength:g}")
    cached_step(folder / "data.json", [*build, "--out", str(raw)], folder / "data.log", raw / "manifest.json")
    feats = cli("features", "build", str(raw / "schema.yaml"), "--out", str(features))
    cached_step(folder / "features.json", feats, folder / "features.log", features / "manifest.json")
    return features, json.loads((raw / "manifest.json").read_text())["results"]


def train_and_evaluate(
    features: Path, run_dir: Path, model: str, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """``ranker train`` + ``ranker evaluate`` of one (model, seed) on ``features``; AUC per scope with intervals."""
    sets = {"features": str(features), "out_dir": str(run_dir), "model.interaction": model, "seed": str(seed)}
    cmd = cli("train", "--config", CONFIG, "--nproc", str(args.nproc))
    for key, value in (sets | args.set).items():
        cmd += ["--set", f"{key}={value}"]
    run = trained(cmd, run_dir, features, args.bootstrap)
    train, evaluation, res, metrics = run["train"], run["evaluate"], run["results"], run["metrics"]
    sections = {"overall": metrics["overall"], **metrics["cold_warm"]}
    auc = {}
    for scope in SCOPES:
        task = sections[scope]["tasks"]["click"]["metrics"]  # None: fewer rows than the evaluator's min_slice_size
        auc[scope] = {k: task["auc"].get(k) if task else None for k in ("value", "ci_low", "ci_high")}
    return {
        "model": model,
        "seed": seed,
        "train_command": train["command"],
        "evaluate_command": evaluation["command"],
        "train_wall_seconds": train["wall_seconds"],
        "evaluate_wall_seconds": evaluation["wall_seconds"],
        "steps": res["steps"],
        "best_step": res["best_step"],
        "stopped_early": res["stopped_early"],
        "best_valid_auc": res["best_valid_auc"],
        "auc": auc,
    }


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample std over seeds of the test AUC per scope (cold is None on a log without cold rows)."""
    out = {}
    for scope in SCOPES:
        values = [r["auc"][scope]["value"] for r in runs if r["auc"][scope]["value"] is not None]
        if values:
            out[scope] = mean_std(values)
    return out


def fmt(stat: dict[str, float] | None) -> str:
    return "n/a" if stat is None else f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def table(head: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table (preceded by a blank line)."""
    return [
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *(f"| {' | '.join(map(str, r))} |" for r in rows),
    ]


def auc_cells(summary: dict[str, dict[str, float]]) -> list[str]:
    return [fmt(summary.get(scope)) for scope in SCOPES]


def ceiling_cells(manifest: dict[str, Any]) -> list[str]:
    """Per ceiling: overall / cold / warm."""
    return [
        " / ".join("n/a" if manifest[key][s] is None else f"{manifest[key][s]:.4f}" for s in SCOPES) for key in CEILINGS
    ]


def curve(args: argparse.Namespace) -> dict[str, Any]:
    sizes = []
    for rows in args.rows:
        features, manifest = build_data(args.work, rows, 1.0)
        models = {}
        for model in args.models:
            runs = [
                # The ablation's folder naming: its default-strength runs are the curve's runs at that size.
                train_and_evaluate(features, args.work / "runs" / f"r{rows}-x1" / f"{model}-s{seed}", model, seed, args)
                for seed in range(args.seeds)
            ]
            models[model] = {"summary": summarise(runs), "runs": runs}
        sizes.append({"rows": rows, "ceilings": {k: manifest[k] for k in CEILINGS}, "models": models})
    return {"mode": "curve", "sizes": sizes}


def ablation(args: argparse.Namespace) -> dict[str, Any]:
    strengths = []
    for strength in args.strengths:
        features, manifest = build_data(args.work, args.ablation_rows, strength)
        runs_dir = args.work / "runs" / f"r{args.ablation_rows}-x{strength:g}"
        models: dict[str, list[dict[str, Any]]] = {"dcnv2": [], "hiformer": []}
        margins = []
        for seed in range(args.seeds):
            for model, runs in models.items():
                runs.append(train_and_evaluate(features, runs_dir / f"{model}-s{seed}", model, seed, args))
            delta = paired_auc_delta(runs_dir / f"dcnv2-s{seed}", runs_dir / f"hiformer-s{seed}", args.bootstrap)
            margins.append({"seed": seed, "hiformer_minus_dcnv2": delta})
        mean_margin = {
            scope: mean_std([m["hiformer_minus_dcnv2"][scope]["delta"] for m in margins])
            for scope in SCOPES
            if all(m["hiformer_minus_dcnv2"][scope]["delta"] is not None for m in margins)
        }
        strengths.append(
            {
                "interaction_strength": strength,
                "rows": args.ablation_rows,
                "ceilings": {k: manifest[k] for k in CEILINGS},
                "summary": {model: summarise(runs) for model, runs in models.items()},
                "margins": margins,
                "mean_margin": mean_margin,
                "runs": [r for runs in models.values() for r in runs],
            }
        )
    return {"mode": "ablation", "strengths": strengths}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# fashion-clicks: " + ("learning curve" if report["mode"] == "curve" else "interaction-strength ablation"),
        "",
        f"Command: `{report['command']}`",
        "",
        f"Base config `{CONFIG}` (no image tower, registered defaults, the config's learning rates for every model), "
        f"`--nproc {report['args']['nproc']}`, extra `--set`: {report['args']['set'] or 'none'}; data seed 0, "
        f"training seeds 0..{report['args']['seeds'] - 1}; AUC as mean ± sample std over seeds, "
        "overall / cold / warm test rows. Ceilings (docs/fashion_clicks.md): Bayes = the true click probability; "
        "(i) = a cold item's popularity replaced by its expectation; (ii) = in addition the users' bias and taste. "
        "Model cold / warm = `ranker evaluate`'s split (items unseen in training: the cold items plus the few warm "
        "tail items first shown in test; n/a under its 1,000-row minimum); the ceilings split by `is_cold`.",
        "",
    ]
    ceilings_head = list(CEILINGS.values())
    auc_head = ["AUC overall", "AUC cold", "AUC warm"]
    if report["mode"] == "curve":
        lines += table(
            ["rows", *ceilings_head], [[f"{s['rows']:,}", *ceiling_cells(s["ceilings"])] for s in report["sizes"]]
        )
        rows = [
            [f"{size['rows']:,}", model, *auc_cells(entry["summary"]), entry["runs"][0]["steps"]]
            for size in report["sizes"]
            for model, entry in size["models"].items()
        ]
        lines += table(["rows", "model", *auc_head, "steps (seed 0)"], rows)
    else:
        entries = report["strengths"]
        lines += table(
            ["strength", *ceilings_head],
            [[f"{e['interaction_strength']:g}", *ceiling_cells(e["ceilings"])] for e in entries],
        )
        lines += [
            "",
            "Hiformer - DCN-v2 test AUC, paired request-level bootstrap interval per seed (`metrics.compare`):",
        ]
        margins = [
            [f"{e['interaction_strength']:g}", m["seed"]]
            + [
                "n/a" if d["delta"] is None or d["ci_low"] is None else fmt_delta(d)
                for d in (m["hiformer_minus_dcnv2"][s] for s in SCOPES)
            ]
            for e in entries
            for m in e["margins"]
        ]
        lines += table(["strength", "seed", *(f"{s} [95% CI]" for s in SCOPES)], margins)
        rows = [
            [
                f"{e['interaction_strength']:g}",
                model,
                *auc_cells(summary),
                fmt(e["mean_margin"].get("overall")) if model == "hiformer" else "",
            ]
            for e in entries
            for model, summary in e["summary"].items()
        ]
        lines += table(["strength", "model", *auc_head, "mean margin overall"], rows)
    lines += machine_section(report["machine"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("curve", "ablation"), default="curve")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lc"), help="data and runs (reused when rerun)")
    parser.add_argument("--rows", type=int, nargs="+", default=[300_000, 1_000_000, 3_000_000])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="curve mode")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 1.0, 2.0], help="ablation mode")
    parser.add_argument("--ablation-rows", type=int, default=1_000_000)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    parser.add_argument("--out", type=Path, help="results path without suffix (default benchmarks/results/...)")
    args = parser.parse_args()
    args.set = overrides(parser, args.set, "--set")
    out = args.out or ROOT / "benchmarks" / "results" / (
        "learning_curve" if args.mode == "curve" else "learning_curve_ablation"
    )
    info = machine()
    report = curve(args) if args.mode == "curve" else ablation(args)
    report |= {
        "command": shlex.join(["python", "benchmarks/learning_curve.py", *sys.argv[1:]]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": info,
    }
    write_report(out, report, markdown(report))


if __name__ == "__main__":
    main()
