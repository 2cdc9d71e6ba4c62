"""Times the fashion-clicks generator and its peak memory at given sizes.

    .venv/bin/python benchmarks/studies/datagen_fashion_clicks.py --rows 1000000 10000000

Each size runs in a fresh interpreter (peak RSS is per process). Besides time and memory it records the
manifest's CTR and Bayes AUC, and a "no-pixels oracle" AUC on the test split: the true logit minus the
visual_weight x visual-score term, i.e. what a perfect model of everything but the image could reach.
Results go to benchmarks/results/studies/datagen_fashion_clicks.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "studies"
sys.path.insert(0, str(REPO))

from features.datasets import fashion_clicks as fc  # noqa: E402


def _no_pixels_auc(out: Path, manifest: dict[str, Any]) -> dict[str, float | None]:
    items = pq.read_table(out / "items.parquet", columns=["image_index", "true_class"])
    classes = items["true_class"].to_numpy()
    images = np.load(out / "images.npy", mmap_mode="r")
    stats = np.concatenate(
        [fc.visual_stats(images[idx]) for idx in np.array_split(items["image_index"].to_numpy(), 64)]
    )
    z = fc.standardise_within_class(stats, classes)
    score = fc.standardise_within_class(z @ np.array(manifest["effects"]["visual_projection"]), classes)
    test = pq.read_table(out / "test.parquet", columns=["item_id", "click", "true_p", "is_cold"])
    p = test["true_p"].to_numpy()
    blind = np.log(p / (1 - p)) - manifest["params"]["visual_weight"] * score[test["item_id"].to_numpy()]
    click, cold = test["click"].to_numpy(), test["is_cold"].to_numpy()
    return {
        "overall": fc.roc_auc(click, blind),
        "cold": fc.roc_auc(click[cold], blind[cold]),
        "warm": fc.roc_auc(click[~cold], blind[~cold]),
    }


def _child(rows: int, seed: int, out: Path) -> None:
    start = time.perf_counter()
    manifest = fc.build_fashion_clicks(out, rows=rows, seed=seed)
    seconds = time.perf_counter() - start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    result = {
        "rows": rows,
        "seed": seed,
        "seconds": round(seconds, 2),
        "rows_per_second": round(rows / seconds),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "bytes_on_disk": sum(sizes.values()),
        "n_users": manifest["n_users"],
        "n_items": manifest["n_items"],
        "n_cold_items": manifest["n_cold_items"],
        "ctr": manifest["ctr"],
        "bayes_auc": manifest["bayes_auc"],
        "no_pixels_oracle_auc": _no_pixels_auc(out, manifest),
    }
    print(json.dumps(result))


def _machine() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()[:10]
    return {
        "lscpu_head": lscpu,
        "nproc": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
    }


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# fashion-clicks generator benchmark",
        "",
        f"Command: `{report['command']}`",
        f"Machine: nproc={report['machine']['nproc']}, load average at start {report['machine']['loadavg']}"
        " (shared with other jobs)",
        "",
        "```",
        *report["machine"]["lscpu_head"],
        "```",
        "",
        "| rows | seconds | rows/s | peak RSS MB | disk MB | users | items | cold | CTR train/valid/test "
        "| Bayes AUC all/cold/warm | no-pixels oracle AUC all/cold/warm |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        ctr = "/".join(f"{r['ctr'][s]:.4f}" for s in fc.SPLITS)
        bayes = "/".join(f"{r['bayes_auc'][k]:.4f}" for k in ("overall", "cold", "warm"))
        blind = "/".join(f"{r['no_pixels_oracle_auc'][k]:.4f}" for k in ("overall", "cold", "warm"))
        lines.append(
            f"| {r['rows']:,} | {r['seconds']} | {r['rows_per_second']:,} | {r['peak_rss_mb']} "
            f"| {r['bytes_on_disk'] / 1e6:.1f} | {r['n_users']:,} | {r['n_items']:,} | {r['n_cold_items']:,} "
            f"| {ctr} | {bayes} | {blind} |"
        )
    lines += [
        "",
        "Peak RSS includes the Fashion-MNIST read (~110 MB while decompressing) and the interpreter with numpy,",
        "pyarrow and polars imported. The no-pixels oracle is the true logit minus the main visual term;",
        "its gap to the Bayes AUC is what the image is worth to a perfect model.",
    ]
    for skipped in report.get("skipped", []):
        lines.append(f"\nNot run: {skipped}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per size before giving up on it")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.rows[0], args.seed, args.child)
        return

    report: dict[str, Any] = {"command": " ".join([".venv/bin/python", *sys.argv]), "machine": _machine(), "runs": []}
    for rows in args.rows:
        tmp = Path(tempfile.mkdtemp(prefix="fashion_clicks_bench_"))
        cmd = [sys.executable, __file__, "--rows", str(rows), "--seed", str(args.seed), "--child", str(tmp)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=args.timeout)
            report["runs"].append(json.loads(done.stdout.splitlines()[-1]))
            print(json.dumps(report["runs"][-1]), flush=True)
        except subprocess.TimeoutExpired:
            report.setdefault("skipped", []).append(f"{rows:,} rows did not finish within {args.timeout:.0f} s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "datagen_fashion_clicks.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "datagen_fashion_clicks.md").write_text(_markdown(report))


if __name__ == "__main__":
    main()
