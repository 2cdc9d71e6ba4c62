"""Shared steps of the benchmarks that train and evaluate through the ``ranker`` command line.

Every step is cached: it runs only when its output is missing, and a marker file keeps its command and wall time,
so a long benchmark can be stopped and rerun (``learning_curve.py``, ``equal_budget.py``, the studies).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> list[str]:
    """``ranker ARGS...`` as a command (``python`` is replaced by this interpreter when run)."""
    return ["python", "-m", "pipelines.cli", *args]


def tail(log: Path, lines: int = 8) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


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


def cached_step(marker: Path, cmd: list[str], log: Path, done: Path) -> dict[str, Any]:
    """Runs ``cmd`` unless ``done`` exists; ``marker`` keeps its command and wall time for later reruns."""
    if not (done.exists() and marker.exists()):
        marker.unlink(missing_ok=True)
        wall = timed(cmd, log)
        marker.write_text(json.dumps({"command": shlex.join(cmd), "wall_seconds": wall}, indent=2) + "\n")
    return json.loads(marker.read_text())


def train_and_evaluate(train_cmd: list[str], run_dir: Path, features: Path, bootstrap: int) -> dict[str, Any]:
    """``train_cmd`` (a ``ranker train`` whose out_dir is ``run_dir``), then ``ranker evaluate`` of its export on
    the test split of ``features``, each skipped when done. Returns ``{"train", "evaluate"}`` (each step's command
    and wall seconds), ``"results"`` (the run's results.json) and ``"metrics"`` (the evaluation's metrics.json)."""
    train = cached_step(run_dir / "train_wall.json", train_cmd, run_dir / "train.log", run_dir / "results.json")
    metrics_file = run_dir / "eval-test" / "metrics.json"
    cmd = cli("evaluate", "--model", str(run_dir / "export"), "--features", str(features))
    evaluate = cached_step(
        run_dir / "eval_wall.json", [*cmd, "--bootstrap", str(bootstrap)], run_dir / "evaluate.log", metrics_file
    )
    return {
        "train": train,
        "evaluate": evaluate,
        "results": json.loads((run_dir / "results.json").read_text()),
        "metrics": json.loads(metrics_file.read_text()),
    }


def write_report(out: Path, report: dict[str, Any], markdown: str) -> None:
    """``out``.json (the report) and ``out``.md."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def overrides(parser: argparse.ArgumentParser, items: list[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` command-line items as a dict; a malformed one is a usage error naming ``flag``."""
    bad = [item for item in items if "=" not in item]
    if bad:
        parser.error(f"{flag} needs KEY=VALUE, got {bad}")
    return dict(item.split("=", 1) for item in items)


def machine_section(m: dict[str, Any]) -> list[str]:
    """A report's "## Machine" lines from ``benchmarks.features_bench.machine()``."""
    load = ", ".join(f"{x:.1f}" for x in m["loadavg_at_start"])
    return [
        "",
        "## Machine",
        "",
        f"{m['nproc']} cores; load average at start {load}; python {m['python']}, torch {m['torch']}, polars "
        f"{m['polars']}, pyarrow {m['pyarrow']}; {m['date_utc']}.",
        "",
        "```",
        *m["lscpu_head"],
        "```",
        "",
    ]
