"""Hiformer's default widths (issue 13, speed): rank_v and FFN hidden 4·D against 2·D, quality side by side.

The value rank (``rank_v="auto"`` = 4·D) and the token FFNs' hidden width (4·D) are most of Hiformer's dense FLOPs
and element-wise work at D = 16; halving both made its dense forward + backward 22% faster (14.5 -> 11.3 ms,
batch 512, one thread, interleaved). This study trains both variants with the same seeds on the same data and
compares test AUC overall / warm / cold (fashion-clicks) and AUC / GAUC (MovieLens-100k), paired per seed.

Every run is ``ranker train`` + ``ranker evaluate`` of the benchmark configs (``configs/train/bench-fashion.yaml``,
``configs/train/bench-movielens.yaml``) with ``model.interaction_kwargs`` set per variant; the fashion logs are
``benchmarks/learning_curve.py``'s (``--work``), the MovieLens features ``model_quality.py``'s.

Usage::

    python benchmarks/studies/hiformer_width.py --fashion /work/lc/data-r300000-x1/features \\
        --movielens /tmp/qb/features/movielens-100k --seeds 0 1 2 --work /tmp/hw
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.equal_budget import fmt_interval, t_interval  # noqa: E402
from benchmarks.runs import cli, train_and_evaluate  # noqa: E402

VARIANTS = {
    "4·D (default before)": {"rank_v": 64, "ffn_hidden": 64},
    "2·D": {"rank_v": 32, "ffn_hidden": 32},
}
CONFIGS = {"fashion-clicks": "configs/train/bench-fashion.yaml", "movielens-100k": "configs/train/bench-movielens.yaml"}


def run(features: Path, config: str, variant: dict[str, int], seed: int, out: Path, bootstrap: int) -> dict[str, Any]:
    kwargs = json.dumps({"hiformer": variant})
    cmd = cli("train", "--config", config, "--nproc", "1")
    sets = {"features": str(features), "out_dir": str(out), "model.interaction": "hiformer", "seed": str(seed)}
    for key, value in (sets | {"model.interaction_kwargs": kwargs}).items():
        cmd += ["--set", f"{key}={value}"]
    done = train_and_evaluate(cmd, out, features, bootstrap)
    metrics = done["metrics"]
    sections = {"overall": metrics["overall"], **metrics.get("cold_warm", {})}
    result: dict[str, Any] = {"seed": seed, "train_seconds": done["train"]["wall_seconds"]}
    for scope, section in sections.items():
        task = next(iter(section["tasks"].values()))["metrics"]
        if task:
            result[f"auc_{scope}"] = task["auc"]["value"]
            if "gauc" in task:
                result[f"gauc_{scope}"] = task["gauc"]["value"]
    return result


def paired(a: list[float], b: list[float]) -> str:
    """Mean of b - a over seeds with its 95% t interval."""
    stat = t_interval([y - x for x, y in zip(a, b, strict=True)])
    return fmt_interval(stat["mean"], stat["ci_low"], stat["ci_high"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fashion", type=Path, required=True)
    parser.add_argument("--movielens", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--bootstrap", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "studies" / "hiformer_width")
    args = parser.parse_args()
    data = {"fashion-clicks": args.fashion} | ({"movielens-100k": args.movielens} if args.movielens else {})
    report: dict[str, Any] = {"command": "python " + " ".join(sys.argv), "variants": VARIANTS, "results": {}}
    for name, features in data.items():
        report["results"][name] = {
            label: [
                run(features, CONFIGS[name], variant, seed, args.work / name / f"{i}-s{seed}", args.bootstrap)
                for seed in args.seeds
            ]
            for i, (label, variant) in enumerate(VARIANTS.items())
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Hiformer widths: rank_v and FFN hidden 4·D vs 2·D", "", __doc__.split("\n\n")[1], ""]
    (old, new) = VARIANTS
    for name, by_variant in report["results"].items():
        metrics = [k for k in by_variant[old][0] if k.startswith(("auc", "gauc"))]
        lines += [f"## {name} (seeds {', '.join(map(str, args.seeds))})", "", "| metric | " + " | ".join(VARIANTS)
                  + " | 2·D minus 4·D, mean over seeds [95% t interval] |", "|---|---|---|---|"]  # fmt: skip
        for m in metrics:
            a, b = ([r[m] for r in by_variant[v]] for v in (old, new))
            lines.append(f"| {m} | {statistics.mean(a):.4f} | {statistics.mean(b):.4f} | {paired(a, b)} |")
        seconds = [statistics.mean(r["train_seconds"] for r in by_variant[v]) for v in (old, new)]
        lines += ["", f"Training wall seconds (mean): {seconds[0]:.0f} vs {seconds[1]:.0f}.", ""]
    lines += ["## Command", "", "```", report["command"], "```", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
