"""Quality and cost of image towers in the ranker (issue 4): fashion-clicks with each frozen tower vs no image.

Every run is ``ranker train`` on one shared base config (``configs/train/bench-fashion-base.yaml``, Hiformer,
``--nproc 2``) with the same features, seed, optimiser, batch size, epochs and early stopping; the image runs only add
``model.vision`` (a frozen tower, pretrained on Fashion-MNIST with the same small budget for every family, giving
``TOKENS`` image tokens) and their output directory through ``--set``.

Per run: test AUC overall, on cold items (unseen in training) and on warm items, with bootstrap intervals from
``ranker evaluate --bootstrap``, next to the data set's Bayes-optimal AUCs (``results.bayes_auc`` of the raw
manifest); per tower: parameters, MACs per image, pretraining accuracy; wall times of pretraining, training and
evaluation. Each tower run is also compared with the no-image run of the same seed on the same test impressions
(paired request-level bootstrap of the AUC difference). ``--untrained`` adds control runs of a tower frozen at its
random initialisation; ``--seeds`` repeats everything over training seeds.

Usage::

    python benchmarks/studies/image_towers_ranker.py --data-dir /tmp/itb     # runs what is missing, writes results
    python benchmarks/studies/image_towers_ranker.py --data-dir /tmp/itb --seeds 0 1 2 --untrained caformer_fm \
        --conclusion conclusion.md                                  # the recorded results

Finished steps (tower checkpoints, ``<run>/results.json``, ``<run>/eval-test/metrics.json``) are reused, so the script
can be stopped and rerun; the results files are rewritten after every run. A failing tower is recorded and skipped.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.runs import cached_step, cli, timed  # noqa: E402
from benchmarks.runs import train_and_evaluate as trained  # noqa: E402
from benchmarks.towers_common import STUDIES, count_macs, machine_info, write_results  # noqa: E402

CONFIG = "configs/train/bench-fashion-base.yaml"
DATASET = "fashion-clicks"
TOWERS = {
    "efficientmod_fm": "EfficientMod",
    "convformer_fm": "ConvFormer",
    "caformer_fm": "CAFormer",
    "convit_fm": "ConViT",
    "eet_vit_fm": "EET pruned ViT",
}
TOKENS = 2
NPROC = 2
SLICES = ("overall", "cold", "warm")
ACCURACY = re.compile(r"test accuracy ([0-9.]+) on (\d+) images")


def data_commands(data_dir: Path, rows: int, seed: int) -> list[list[str]]:
    return [
        cli("--data-dir", str(data_dir), "data", "build", DATASET, "--rows", str(rows), "--seed", str(seed)),
        cli("--data-dir", str(data_dir), "features", "build", str(data_dir / "raw" / DATASET / "schema.yaml")),
    ]


def pretrain_tower(name: str, data_dir: Path, n_train: int, epochs: int) -> dict[str, Any]:
    """Pretrains ``name`` on Fashion-MNIST (unless its checkpoint exists): checkpoint, accuracy, wall time."""
    ckpt = data_dir / "towers" / f"{name}.pt"
    log = ckpt.with_suffix(".log")
    cmd = cli("pretrain-tower", name, "--out", str(ckpt), "--n-train", str(n_train), "--epochs", str(epochs))
    step = cached_step(ckpt.with_suffix(".json"), cmd, log, ckpt)
    found = ACCURACY.search(log.read_text())
    if found is None:
        raise RuntimeError(f"no accuracy line in {log}")
    return step | {"checkpoint": str(ckpt), "accuracy": float(found[1]), "accuracy_images": int(found[2])}


def run_name(tower: str | None, seed: int, pretrained: bool = True) -> str:
    """``none``, the tower name or ``<tower>-untrained``; training seeds other than the config's 0 add ``-s<seed>``."""
    name = (tower or "none") + ("" if pretrained else "-untrained")
    return name if seed == 0 else f"{name}-s{seed}"


def train_and_evaluate(
    tower: str | None, seed: int, data_dir: Path, bootstrap: int, pretrained: bool = True
) -> dict[str, Any]:
    """``ranker train`` (base config, + a frozen tower, pretrained or not) then ``ranker evaluate``; metrics, times."""
    name = run_name(tower, seed, pretrained)
    out_dir = data_dir / "runs" / name
    features = data_dir / "features" / DATASET
    sets = {"features": str(features), "out_dir": str(out_dir)}
    if seed != 0:
        sets["seed"] = str(seed)
    if tower is not None:
        sets |= {
            "model.vision.tower": tower,
            "model.vision.tokens": str(TOKENS),
            "model.vision.frozen": "true",
        }
        if pretrained:
            sets["model.vision.pretrained"] = str(data_dir / "towers" / f"{tower}.pt")
    cmd = cli("train", "--config", CONFIG, "--nproc", str(NPROC))
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    run = trained(cmd, out_dir, features, bootstrap)
    train, evaluation, res, metrics = run["train"], run["evaluate"], run["results"], run["metrics"]
    sections = {
        "overall": metrics["overall"],
        "cold": metrics["cold_warm"]["cold"],
        "warm": metrics["cold_warm"]["warm"],
    }
    auc = {}
    for part, section in sections.items():
        value = section["tasks"]["click"]["metrics"]["auc"]
        auc[part] = {k: value.get(k) for k in ("value", "ci_low", "ci_high")}
    return {
        "run": name,
        "tower": tower,
        "pretrained": pretrained,
        "seed": seed,
        "train_command": train["command"],
        "evaluate_command": evaluation["command"],
        "train_wall_seconds": train["wall_seconds"],
        "train_seconds": res["train_seconds"],
        "evaluate_wall_seconds": evaluation["wall_seconds"],
        "steps": res["steps"],
        "best_step": res["best_step"],
        "stopped_early": res["stopped_early"],
        "best_valid_auc": res["best_valid_auc"],
        "test_auc_training": res["test"]["click/auc"],
        "auc": auc,
        "calibration": {
            part: section["tasks"]["click"]["metrics"]["calibration"]["value"] for part, section in sections.items()
        },
        "rows": {part: sections[part]["n_rows"] for part in ("cold", "warm")},
    }


def paired_auc_delta(base: Path, run: Path, bootstrap: int) -> dict[str, dict[str, float | None]]:
    """Test AUC of ``run`` minus ``base`` on the same impressions, with a paired request-level bootstrap interval.

    Kept in ``run/vs_<base>_b<bootstrap>.json`` (recomputed when either evaluation is newer).
    """
    from pipelines.metrics import EvalConfig, compare

    pred = "eval-test/predictions.parquet"
    cache = run / f"vs_{base.name}_b{bootstrap}.json"
    if cache.exists() and cache.stat().st_mtime > max((base / pred).stat().st_mtime, (run / pred).stat().st_mtime):
        return json.loads(cache.read_text())
    res = compare(base / pred, run / pred, config=EvalConfig(n_bootstrap=bootstrap), names=(base.name, run.name))
    scopes = {"overall": res["overall"], "cold": res["cold_warm"]["cold"], "warm": res["cold_warm"]["warm"]}
    keys = ("delta", "ci_low", "ci_high", "prob_delta_positive")
    delta = {part: {k: scope["tasks"]["click"]["metrics"]["auc"][k] for k in keys} for part, scope in scopes.items()}
    cache.write_text(json.dumps(delta, indent=2) + "\n")
    return delta


def tower_cost(name: str) -> dict[str, float]:
    """Parameters (without classifier) and MACs per 28 x 28 image of a tower as the ranker uses it."""
    from vision_towers import create_tower

    tower = create_tower(name, num_classes=0)
    return {"params": sum(p.numel() for p in tower.parameters()), "macs": count_macs(tower)}


def lscpu_head(lines: int) -> list[str]:
    """The first lines of ``lscpu``."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[:lines]


def versions() -> dict[str, str]:
    return {pkg: version(pkg) for pkg in ("torch", "torchrec", "fbgemm_gpu-cpu", "numpy")}


def fmt_auc(auc: dict[str, float | None]) -> str:
    if auc["ci_low"] is None:
        return f"{auc['value']:.4f}"
    return f"{auc['value']:.4f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]"


def fmt_delta(delta: dict[str, float | None]) -> str:
    return f"{delta['delta']:+.4f} [{delta['ci_low']:+.3f}, {delta['ci_high']:+.3f}]"


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def loadavg(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def label(tower: str | None, pretrained: bool) -> str:
    if tower is None:
        return "no image"
    return f"{TOWERS[tower]} (`{tower}`)" + ("" if pretrained else ", untrained (random init) control")


def seeds_table(report: dict[str, Any]) -> list[str]:
    """Mean ± sample std over training seeds of each run's test AUCs and of its paired Δ AUC against no image."""
    bayes = report["bayes_auc"]
    lines = [
        f"Over training seeds {', '.join(map(str, report['seeds']))} (same data, towers and budget; mean ± sample "
        "std; 'Δ cold > 0' counts the seeds whose paired interval of Δ cold excludes 0 on the positive side):",
        "",
        "| run | seeds | AUC overall | AUC cold | AUC warm | Δ overall | Δ cold | Δ cold > 0 | cold gap closed |",
        "|---|---:|---|---|---|---|---|---:|---:|",
    ]
    base_cold = {r["seed"]: r["auc"]["cold"]["value"] for r in report["runs"] if r["tower"] is None}
    variants = [(None, True)] + [(t, True) for t in report["towers"]] + [(t, False) for t in report["untrained"]]
    for tower, pretrained in variants:
        rows = [r for r in report["runs"] if (r["tower"], r["pretrained"]) == (tower, pretrained)]
        if not rows:
            continue
        aucs = [mean_std([r["auc"][part]["value"] for r in rows]) for part in SLICES]
        cells = ["-"] * 4
        if tower is not None:
            cold = [r["vs_none"]["cold"] for r in rows]
            gaps = [d["delta"] / (bayes["cold"] - base_cold[r["seed"]]) for d, r in zip(cold, rows, strict=True)]
            cells = [
                mean_std([r["vs_none"]["overall"]["delta"] for r in rows]),
                mean_std([d["delta"] for d in cold]),
                f"{sum(d['ci_low'] > 0 for d in cold)}/{len(cold)}",
                f"{statistics.mean(gaps):.0%}",
            ]
        lines.append(f"| {label(tower, pretrained)} | {len(rows)} | " + " | ".join(aucs + cells) + " |")
    return [*lines, ""]


def write_markdown(report: dict[str, Any]) -> str:
    bayes = report["bayes_auc"]
    first = [r for r in report["runs"] if r["seed"] == report["seeds"][0]]
    base = next((r for r in first if r["tower"] is None), None)
    lines = [
        "# Image towers in the ranker: fashion-clicks, each frozen tower vs no image (issue 4)",
        "",
        f"Generated {report['date']} by `benchmarks/studies/image_towers_ranker.py`. Hiformer on fashion-clicks "
        f"({report['rows']:,} rows, data seed {report['seed']}), base config `{CONFIG}`; image runs add one frozen "
        f"tower, pretrained on Fashion-MNIST ({report['pretrain']['n_train']} images x "
        f"{report['pretrain']['epochs']} epoch(s), seed 0), giving {TOKENS} image tokens. Same data, seed and budget "
        "for every run.",
        "",
        f"Training seed {report['seeds'][0]}. Test AUC with 95% bootstrap intervals (`ranker evaluate --bootstrap "
        f"{report['bootstrap']}`, requests resampled); cold = test rows whose item never appears in training; "
        "calibration = mean predicted CTR / observed CTR on those rows.",
        "",
        "| run | tower params | MMACs/image | FMNIST acc | AUC overall | AUC cold | AUC warm | calibration cold / warm "
        "| pretrain s | train s (wall) | eval s |",
        "|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in first:
        cost, pretrain = "- | - | - |", "-"
        if r["tower"] is not None:
            t = report["towers"][r["tower"]]
            accuracy = f"{t['accuracy']:.3f}" if r["pretrained"] else "-"
            cost = f"{t['params']:,} | {t['macs'] / 1e6:.2f} | {accuracy} |"
            pretrain = f"{t['wall_seconds']:.0f}" if r["pretrained"] else "-"
        lines.append(
            f"| {label(r['tower'], r['pretrained'])} | {cost} {fmt_auc(r['auc']['overall'])} | "
            f"{fmt_auc(r['auc']['cold'])} | {fmt_auc(r['auc']['warm'])} | "
            f"{r['calibration']['cold']:.2f} / {r['calibration']['warm']:.2f} | "
            f"{pretrain} | {r['train_seconds']:.0f} ({r['train_wall_seconds']:.0f}) | "
            f"{r['evaluate_wall_seconds']:.0f} |"
        )
    lines += [
        f"| Bayes-optimal | | | | {bayes['overall']:.4f} | {bayes['cold']:.4f} | {bayes['warm']:.4f} | 1 | | | |",
        "",
        "Tower runs minus the no-image run on the same test impressions: Δ AUC with a paired 95% bootstrap interval "
        "(the same resampled requests for both models) and the share of replicates with Δ > 0; 'cold gap closed' = "
        "Δ cold / (Bayes cold AUC - no-image cold AUC).",
        "",
        "| tower | Δ overall | Δ cold | P(Δ cold > 0) | cold gap closed | Δ warm |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in first:
        if r["tower"] is None:
            continue
        d = r["vs_none"]
        gap = d["cold"]["delta"] / (bayes["cold"] - base["auc"]["cold"]["value"])
        lines.append(
            f"| {label(r['tower'], r['pretrained'])} | {fmt_delta(d['overall'])} | {fmt_delta(d['cold'])} | "
            f"{d['cold']['prob_delta_positive']:.2f} | {gap:.0%} | {fmt_delta(d['warm'])} |"
        )
    lines += [""]
    if len(report["seeds"]) > 1:
        lines += seeds_table(report)
    if report["failures"]:
        lines += ["Failures:", ""] + [f"- `{name}`: {err}" for name, err in report["failures"].items()] + [""]
    if report.get("conclusion"):
        lines += ["## Conclusion", "", report["conclusion"], ""]
    lines += [
        "## Commands",
        "",
        "```",
        *[shlex.join(c) for c in report["data_commands"]],
        f"python benchmarks/studies/image_towers_ranker.py --data-dir {report['data_dir']} --seeds "
        f"{' '.join(map(str, report['seeds']))}"
        + "".join(f" --untrained {t}" for t in report["untrained"])
        + "   # runs every command below (from the repository root)",
        "",
        *[t["command"] for t in report["towers"].values()],
        *[c for r in report["runs"] for c in (r["train_command"], r["evaluate_command"])],
        "```",
        "",
        "## Machine",
        "",
        "Shared 2-core box, heavily loaded by other engineers' jobs during these runs: all wall times are noisy "
        "(compare them only roughly); the AUCs should not depend on it.",
        "",
        "```",
        *report["machine"]["lscpu_head"],
        "```",
        "",
        f"nproc {report['machine']['os_cpu_count']}, Python {report['machine']['python']}, "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + f"; load average (1, 5, 15 min) at start {loadavg(report['machine']['loadavg_1_5_15'])}, at end "
        f"{loadavg(report['loadavg_end'])}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/itb"))
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0, help="data set seed")
    parser.add_argument("--towers", nargs="*", default=list(TOWERS), choices=list(TOWERS))
    parser.add_argument("--n-train", type=int, default=2000, help="Fashion-MNIST pretraining images per tower")
    parser.add_argument("--epochs", type=int, default=1, help="pretraining epochs per tower")
    parser.add_argument("--bootstrap", type=int, default=100)
    parser.add_argument(
        "--untrained",
        nargs="*",
        default=[],
        choices=list(TOWERS),
        help="control runs: these towers frozen at their random initialisation (no pretraining), every seed",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (0 first: the main table)")
    parser.add_argument("--conclusion", type=Path, help="markdown text to add as the report's conclusion")
    args = parser.parse_args()

    data_dir = args.data_dir.resolve()
    commands = data_commands(data_dir, args.rows, args.seed)
    if not (data_dir / "features" / DATASET / "feature_map.json").exists():
        for cmd in commands:
            timed(cmd, data_dir / "logs" / f"{cmd[5]}.log")
    manifest = json.loads((data_dir / "raw" / DATASET / "manifest.json").read_text())
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "data_dir": str(data_dir),
        "rows": args.rows,
        "seed": args.seed,
        "bootstrap": args.bootstrap,
        "seeds": args.seeds,
        "untrained": args.untrained,
        "tokens": TOKENS,
        "pretrain": {"n_train": args.n_train, "epochs": args.epochs},
        "bayes_auc": manifest["results"]["bayes_auc"],
        "data_commands": commands,
        "machine": machine_info() | {"lscpu_head": lscpu_head(20)},
        "versions": versions(),
        "towers": {},
        "runs": [],
        "failures": {},
        "conclusion": args.conclusion.read_text().strip() if args.conclusion else None,
    }

    def save() -> None:
        report["loadavg_end"] = machine_info()["loadavg_1_5_15"]
        write_results("image_towers_ranker", report, write_markdown(report), STUDIES)

    runs = data_dir / "runs"
    for seed in args.seeds:
        report["runs"].append(train_and_evaluate(None, seed, data_dir, args.bootstrap))
        save()
        for tower in args.towers:
            if tower in report["failures"]:
                continue
            try:
                if tower not in report["towers"]:
                    cost = tower_cost(tower)
                    report["towers"][tower] = pretrain_tower(tower, data_dir, args.n_train, args.epochs) | cost
                run = train_and_evaluate(tower, seed, data_dir, args.bootstrap)
                delta = paired_auc_delta(runs / run_name(None, seed), runs / run["run"], args.bootstrap)
                report["runs"].append(run | {"vs_none": delta})
            except Exception as err:  # noqa: BLE001 - a failing tower is recorded and the others still run
                report["failures"][tower] = f"{type(err).__name__}: {err}"
                print(f"[towers] {tower} failed: {err}", flush=True)
            save()
        for tower in args.untrained:
            if tower in report["towers"]:
                run = train_and_evaluate(tower, seed, data_dir, args.bootstrap, pretrained=False)
                delta = paired_auc_delta(runs / run_name(None, seed), runs / run["run"], args.bootstrap)
                report["runs"].append(run | {"vs_none": delta})
                save()


if __name__ == "__main__":
    main()
