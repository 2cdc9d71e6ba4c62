"""Quality and cost of image towers in the ranker (issue 4): fashion-clicks with each frozen tower vs no image.

Every run is ``ranker train`` on one shared base config (``configs/train/bench-fashion-base.yaml``, Hiformer,
``--nproc 2``) with the same features, seed, optimiser, batch size, epochs and early stopping; the image runs only add
``model.vision`` (a frozen tower, pretrained on Fashion-MNIST with the same small budget for every family, giving
``TOKENS`` image tokens) and their output directory through ``--set``.

Per run: test AUC overall, on cold items (unseen in training) and on warm items, with bootstrap intervals from
``ranker evaluate --bootstrap``, next to the data set's Bayes-optimal AUCs (``results.bayes_auc`` of the raw
manifest); per tower: parameters, MACs per image, pretraining accuracy; wall times of pretraining, training and
evaluation.

Usage::

    python benchmarks/image_towers_ranker.py --data-dir /tmp/itb     # runs what is missing, writes results

Finished steps (tower checkpoints, ``<run>/results.json``, ``<run>/eval-test/metrics.json``) are reused, so the script
can be stopped and rerun; the results files are rewritten after every run. A failing tower is recorded and skipped.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.towers_common import count_macs, machine_info, write_results  # noqa: E402

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


def cli(*args: str) -> list[str]:
    return ["python", "-m", "pipelines.cli", *args]


def timed(cmd: list[str], log: Path) -> float:
    """Runs ``cmd`` (``python`` = this interpreter) from the repository root, output to ``log``; wall seconds."""
    print(f"[towers] {shlex.join(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call([sys.executable, *cmd[1:]], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"exit code {code} after {wall:.0f} s; last lines of {log}:\n" + tail(log))
    print(f"[towers]   {wall:.0f} s", flush=True)
    return wall


def tail(log: Path, lines: int = 8) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def cached_step(marker: Path, cmd: list[str], log: Path, done: Path) -> dict[str, Any]:
    """Runs ``cmd`` unless ``done`` exists; ``marker`` keeps its command and wall time for later reruns."""
    if not (done.exists() and marker.exists()):
        marker.unlink(missing_ok=True)
        wall = timed(cmd, log)
        marker.write_text(json.dumps({"command": shlex.join(cmd), "wall_seconds": wall}, indent=2) + "\n")
    return json.loads(marker.read_text())


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


def train_and_evaluate(name: str, tower: str | None, data_dir: Path, bootstrap: int) -> dict[str, Any]:
    """``ranker train`` (base config, + a frozen pretrained tower) then ``ranker evaluate``; metrics and timings."""
    out_dir = data_dir / "runs" / name
    features = data_dir / "features" / DATASET
    sets = {"features": str(features), "out_dir": str(out_dir)}
    if tower is not None:
        sets |= {
            "model.vision.tower": tower,
            "model.vision.tokens": str(TOKENS),
            "model.vision.frozen": "true",
            "model.vision.pretrained": str(data_dir / "towers" / f"{tower}.pt"),
        }
    cmd = cli("train", "--config", CONFIG, "--nproc", str(NPROC))
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    train = cached_step(out_dir / "train_wall.json", cmd, out_dir / "train.log", out_dir / "results.json")
    res = json.loads((out_dir / "results.json").read_text())

    metrics_file = out_dir / "eval-test" / "metrics.json"
    cmd = cli("evaluate", "--model", str(out_dir / "export"), "--features", str(features))
    cmd += ["--bootstrap", str(bootstrap)]
    evaluation = cached_step(out_dir / "eval_wall.json", cmd, out_dir / "evaluate.log", metrics_file)
    metrics = json.loads(metrics_file.read_text())
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
        "rows": {part: sections[part]["n_rows"] for part in ("cold", "warm")},
    }


def paired_auc_delta(base: Path, run: Path, bootstrap: int) -> dict[str, dict[str, float | None]]:
    """Test AUC of ``run`` minus ``base`` on the same impressions, with a paired request-level bootstrap interval."""
    from pipelines.metrics import EvalConfig, compare

    pred = "eval-test/predictions.parquet"
    res = compare(base / pred, run / pred, config=EvalConfig(n_bootstrap=bootstrap), names=(base.name, run.name))
    scopes = {"overall": res["overall"], "cold": res["cold_warm"]["cold"], "warm": res["cold_warm"]["warm"]}
    keys = ("delta", "ci_low", "ci_high", "prob_delta_positive")
    return {part: {k: scope["tasks"]["click"]["metrics"]["auc"][k] for k in keys} for part, scope in scopes.items()}


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


def write_markdown(report: dict[str, Any]) -> str:
    bayes = report["bayes_auc"]
    base = next((r for r in report["runs"] if r["tower"] is None), None)
    lines = [
        "# Image towers in the ranker: fashion-clicks, each frozen tower vs no image (issue 4)",
        "",
        f"Generated {report['date']} by `benchmarks/image_towers_ranker.py`. Hiformer on fashion-clicks "
        f"({report['rows']:,} rows, seed {report['seed']}), base config `{CONFIG}`; image runs add one frozen tower, "
        f"pretrained on Fashion-MNIST ({report['pretrain']['n_train']} images x {report['pretrain']['epochs']} "
        f"epoch(s), seed 0), giving {TOKENS} image tokens. Same seed and budget for every run; one run each "
        f"(seed 0), so differences of ~0.01 overall AUC are within run-to-run noise.",
        "",
        "Test AUC with 95% bootstrap intervals (`ranker evaluate --bootstrap "
        f"{report['bootstrap']}`, requests resampled); cold = test rows whose item never appears in training.",
        "",
        "| run | tower params | MMACs/image | FMNIST acc | AUC overall | AUC cold | AUC warm | "
        "pretrain s | train s (wall) | eval s |",
        "|---|---:|---:|---:|---|---|---|---:|---:|---:|",
    ]
    for r in report["runs"]:
        if r["tower"] is None:
            cost, pretrain = "| no image | - | - | - |", "-"
        else:
            t = report["towers"][r["tower"]]
            cost = (
                f"| {TOWERS[r['tower']]} (`{r['tower']}`) | {t['params']:,} | {t['macs'] / 1e6:.2f} | "
                f"{t['accuracy']:.3f} |"
            )
            pretrain = f"{t['wall_seconds']:.0f}"
        lines.append(
            f"{cost} {fmt_auc(r['auc']['overall'])} | {fmt_auc(r['auc']['cold'])} | {fmt_auc(r['auc']['warm'])} | "
            f"{pretrain} | {r['train_seconds']:.0f} ({r['train_wall_seconds']:.0f}) | "
            f"{r['evaluate_wall_seconds']:.0f} |"
        )
    lines += [
        f"| Bayes-optimal | | | | {bayes['overall']:.4f} | {bayes['cold']:.4f} | {bayes['warm']:.4f} | | | |",
        "",
        "Tower runs minus the no-image run on the same test impressions: Δ AUC with a paired 95% bootstrap interval "
        "(the same resampled requests for both models) and the share of replicates with Δ > 0; 'cold gap closed' = "
        "Δ cold / (Bayes cold AUC - no-image cold AUC).",
        "",
        "| tower | Δ overall | Δ cold | P(Δ cold > 0) | cold gap closed | Δ warm |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in report["runs"]:
        if "vs_none" not in r:
            continue
        d = r["vs_none"]
        gap = d["cold"]["delta"] / (bayes["cold"] - base["auc"]["cold"]["value"])
        lines.append(
            f"| {TOWERS[r['tower']]} | {fmt_delta(d['overall'])} | {fmt_delta(d['cold'])} | "
            f"{d['cold']['prob_delta_positive']:.2f} | {gap:.0%} | {fmt_delta(d['warm'])} |"
        )
    lines += [""]
    if report["failures"]:
        lines += ["Failures:", ""] + [f"- `{name}`: {err}" for name, err in report["failures"].items()] + [""]
    if report.get("conclusion"):
        lines += ["## Conclusion", "", report["conclusion"], ""]
    lines += [
        "## Commands",
        "",
        "```",
        *[shlex.join(c) for c in report["data_commands"]],
        "python benchmarks/image_towers_ranker.py --data-dir "
        f"{report['data_dir']}   # runs every command below (from the repository root)",
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
        + f"; load average at start {report['machine']['loadavg_1_5_15']}, at end {report['loadavg_end']}.",
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
        write_results("image_towers_ranker", report, write_markdown(report))

    report["runs"].append(train_and_evaluate("none", None, data_dir, args.bootstrap))
    save()
    for tower in args.towers:
        try:
            report["towers"][tower] = pretrain_tower(tower, data_dir, args.n_train, args.epochs) | tower_cost(tower)
            run = train_and_evaluate(tower, tower, data_dir, args.bootstrap)
            runs = data_dir / "runs"
            report["runs"].append(run | {"vs_none": paired_auc_delta(runs / "none", runs / tower, args.bootstrap)})
        except Exception as err:  # noqa: BLE001 - a failing tower is recorded and the others still run
            report["failures"][tower] = f"{type(err).__name__}: {err}"
            print(f"[towers] {tower} failed: {err}", flush=True)
        save()


if __name__ == "__main__":
    main()
