"""Batch scoring throughput and peak memory of ``ranker score`` at 1M and 10M raw rows.

    .venv/bin/python benchmarks/score_bench.py --model runs/demo-movielens/export --rows 1000000 10000000 \
        --source data/features/movielens-100k/source

The input is unlabeled raw rows in the MovieLens demo schema: the joined rows of the train/valid/test splits that the
feature build stages under ``FEATURES/source/`` (``--source``; MovieLens' raw data is three tables joined by its
schema's ``source:`` section), drawn with replacement, seed per file, written as
parquet files of 1M rows (row groups of 128k) under ``--work``, then scored by ``ranker score`` (``--nproc``
processes) in a fresh child process whose peak RSS is the kernel's ``ru_maxrss`` from ``os.wait4`` (with
``--nproc 1`` the scoring runs in that process). Everything under ``--work`` is deleted afterwards.

rows/s: the step's own figure (rows over the time from its start, model load and input checks included); the wall
time adds the interpreter's start-up and imports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.features_bench import machine  # noqa: E402

FILE_ROWS = 1_000_000
ROW_GROUP = 131_072
LABELS = ("rating", "label", "timestamp")  # not inputs of the model: unlabeled rows


def write_inputs(source: Path, rows: int, out: Path) -> list[Path]:
    """``rows`` unlabeled rows drawn from the joined MovieLens splits, in files of at most :data:`FILE_ROWS`."""
    import polars as pl

    splits = [source / f"{s}.parquet" for s in ("train", "valid", "test")]
    missing = [str(f) for f in splits if not f.exists()]
    if missing:
        raise SystemExit(f"score_bench: --source {source}: missing {', '.join(missing)} (build the features first)")
    pool = pl.concat([pl.read_parquet(f) for f in splits])
    pool = pool.drop([c for c in LABELS if c in pool.columns])
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, lo in enumerate(range(0, rows, FILE_ROWS)):
        path = out / f"part-{i:03d}.parquet"
        pool.sample(min(FILE_ROWS, rows - lo), with_replacement=True, seed=i).write_parquet(
            path, row_group_size=ROW_GROUP
        )
        files.append(path)
    return files


def score_child(model: Path, inputs: Path, out: Path, nproc: int) -> dict[str, Any]:
    """Runs ``ranker score`` in a fresh interpreter; its manifest results plus wall time and peak RSS."""
    cmd = [sys.executable, "-m", "pipelines.cli", "score", "--model", str(model), "--input", str(inputs),
           "--out", str(out), "--nproc", str(nproc)]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"ranker score failed: {output[-2000:]}")
    results = json.loads((out / "manifest.json").read_text())["results"]
    return {
        "rows": results["rows_out"],
        "files": len(results["inputs"]),
        "input_bytes": sum(i["bytes"] for i in results["inputs"]),
        "rows_per_s": results["rows_per_s"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "nproc": nproc,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    cpu = next((line.split(":", 1)[1].strip() for line in m["lscpu_head"] if line.startswith("Model name")), "?")
    lines = [
        "# Batch scoring: `ranker score` throughput and peak memory",
        "",
        f"Model: `{report['model']}` ({report['model_config']})  ",
        f"Machine: {m['nproc']} cores ({cpu}), load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['loadavg_at_start'])}: shared with other jobs, so rows/s here is a "
        "fraction of an idle machine's  ",
        f"Versions: Python {m['python']}, torch {m['torch']}, polars {m['polars']}, pyarrow {m['pyarrow']}, "
        f"mlflow {report['mlflow']}; {m['date_utc']}",
        "",
        "| rows | files | input MB | processes | rows/s | wall s | peak RSS MB | command |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['rows']:,} | {r['files']} | {r['input_bytes'] / 1e6:,.0f} | {r['nproc']} | {r['rows_per_s']:,.0f} "
            f"| {r['wall_seconds']:,} | {r['peak_rss_mb']:,} | `{r.get('command', report['command'])}` |"
        )
    lines += [
        "",
        "Input: MovieLens demo-schema raw rows (no labels) drawn with replacement from the 100k ratings, 1M-row "
        "files in 128k-row row groups, read in 65,536-row chunks. rows/s counts from the step's start (model load "
        "and schema checks included); wall time adds Python start-up and imports. Peak RSS is the scoring "
        "process's `ru_maxrss`.",
        *(line for note in report.get("notes", []) for line in ("", note)),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "demo-movielens" / "export")
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO / "data" / "features" / "movielens-100k" / "source",
        help="train/valid/test parquet of joined raw rows (FEATURES/source/ of the MovieLens feature build)",
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/scorebench"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "score.json")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "command": "benchmarks/score_bench.py " + " ".join(sys.argv[1:]),
        "model": str(args.model),
        "model_config": json.loads((args.model / "model_config.json").read_text()),
        "machine": machine(),
        "mlflow": version("mlflow"),
        "runs": [],
    }
    try:
        for rows in args.rows:
            inputs = args.work / f"in-{rows}"
            write_inputs(args.source, rows, inputs)
            run = score_child(args.model, inputs, args.work / f"out-{rows}", args.nproc)
            print(json.dumps(run), flush=True)
            report["runs"].append(run)
            shutil.rmtree(inputs)
            shutil.rmtree(args.work / f"out-{rows}")
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # after every size: a long run may be cut
            args.out.with_suffix(".md").write_text(markdown(report))
    finally:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
