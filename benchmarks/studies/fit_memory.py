"""Peak memory of ``features.processor.fit`` (and of ``transform`` on the train split) against the row count.

    .venv/bin/python benchmarks/studies/fit_memory.py --rows 1000000 8000000 30000000 \
        --out benchmarks/results/studies/fit_memory.json

For every size a synthetic raw data set is written under ``--work`` (default /tmp/fitmem, deleted at the end unless
``--keep``): the training split as parquet files of at most ``--file-rows`` rows in row groups of 128k rows, and
small valid/test files. Its columns are shaped like click logs: a skewed user id (vocab, ~N/15 users) and item id
(vocab, min_count 5), a request id (the group, ~10 rows each), string categories (vocab), a string city (hash), a
multi-hot list of string tags (vocab), an hour (identity), a price (dense log1p, and quantile buckets), a dwell time
with nulls (dense, filled), an age with declared bucket edges, a 0/1 click and a 1-5 rating (label ``>= 4``).

``fit`` and then ``transform`` of the train split each run in a fresh child process whose peak RSS is the kernel's
``ru_maxrss`` of that one child (``os.wait4``); "RSS before" is the child's RSS after its imports. ``--git-ref REF``
also runs ``fit`` from another commit (its files extracted with ``git archive`` under ``--work``), for a before/after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # imported where used: the parent's RSS high-water mark would carry into each child's ru_maxrss
    import numpy as np
    import pyarrow as pa

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.features_bench import _rss_mb, _sh, machine, run_child  # noqa: E402

ROW_GROUP = 131_072
CHUNK = 1_000_000  # rows generated at a time, so the generator's own memory stays flat
CATEGORIES = tuple(f"cat_{i:02d}" for i in range(40))
CITIES = tuple(f"city_{i:04d}" for i in range(2_000))
TAGS = tuple(f"tag_{i:03d}" for i in range(500))
COUNTRIES = ("de", "fr", "it", "es", "nl", "pl", "se", "other")

SCHEMA: dict[str, Any] = {
    "name": "fit-memory",
    "files": {"train": "train/*.parquet", "valid": "valid.parquet", "test": "test.parquet"},
    "labels": [{"name": "click", "column": "click"}, {"name": "like", "column": "rating", "threshold": 4}],
    "group": "request_id",
    "item": "item_id",
    "sparse": [
        {"name": "user", "column": "user_id", "min_count": 2},
        {"name": "item", "column": "item_id", "min_count": 5},
        {"name": "category", "column": "category"},
        {"name": "city", "column": "city", "encoding": "hash", "buckets": 1_000},
        {"name": "tags", "column": "tags", "kind": "multi"},
        {"name": "hour", "column": "hour", "encoding": "identity", "num_ids": 24},
        {"name": "price_bucket", "column": "price", "encoding": "bucket", "quantiles": 16},
        {"name": "age_bucket", "column": "age", "encoding": "bucket", "edges": [18, 25, 35, 50, 65]},
    ],
    "dense": [
        {"name": "price", "column": "price", "transform": "log1p"},
        {"name": "dwell", "column": "dwell", "fill_null": 0.0},
        {"name": "age", "column": "age"},
    ],
    "slices": ["country"],
    "entities": ["user_id"],
}


def _strings(rng: np.random.Generator, names: tuple[str, ...], n: int, skew: float = 1.0) -> pa.Array:
    import numpy as np
    import pyarrow as pa

    weights = 1.0 / np.arange(1, len(names) + 1) ** skew
    codes = rng.choice(len(names), size=n, p=weights / weights.sum()).astype(np.int32)
    return pa.DictionaryArray.from_arrays(codes, pa.array(names)).dictionary_decode()


def _chunk(rng: np.random.Generator, first_row: int, n: int, total_rows: int) -> pa.Table:
    """Rows ``first_row .. first_row + n`` of a ``total_rows`` data set (ids scale with the data set's size)."""
    import numpy as np
    import pyarrow as pa

    users = max(total_rows // 15, 100)
    items = max(total_rows // 150, 100)
    n_tags = rng.integers(0, 6, n)
    offsets = np.concatenate([[0], np.cumsum(n_tags)]).astype(np.int32)
    tags = pa.ListArray.from_arrays(pa.array(offsets), _strings(rng, TAGS, int(offsets[-1])))
    dwell = rng.gamma(2.0, 15.0, n)
    return pa.table(
        {
            "request_id": (first_row + np.arange(n)) // 10,
            "user_id": np.where(
                rng.random(n) < 0.7, np.minimum(rng.zipf(1.3, n), users) - 1, rng.integers(0, users, n)
            ),
            "item_id": rng.zipf(1.2, n) % items,
            "category": _strings(rng, CATEGORIES, n),
            "city": _strings(rng, CITIES, n, skew=0.7),
            "tags": tags,
            "hour": rng.integers(0, 24, n),
            "price": np.round(rng.lognormal(3.0, 1.0, n), 2),
            "dwell": pa.array(dwell, mask=rng.random(n) < 0.05),
            "age": rng.integers(16, 80, n).astype(np.float64),
            "click": (rng.random(n) < 0.1).astype(np.int8),
            "rating": rng.integers(1, 6, n).astype(np.int8),
            "country": _strings(rng, COUNTRIES, n),
        }
    )


def generate(rows: int, folder: Path, file_rows: int, seed: int = 0) -> dict[str, Any]:
    """Writes the train split (``rows`` rows in files of at most ``file_rows``), valid/test and schema.yaml."""
    import numpy as np
    import pyarrow.parquet as pq

    shutil.rmtree(folder, ignore_errors=True)
    (folder / "train").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i, first in enumerate(range(0, rows, file_rows)):
        with pq.ParquetWriter(folder / "train" / f"part-{i:03d}.parquet", _chunk(rng, 0, 1, 1).schema) as writer:
            for at in range(first, min(first + file_rows, rows), CHUNK):
                writer.write_table(_chunk(rng, at, min(CHUNK, rows - at, first + file_rows - at), rows), ROW_GROUP)
    for split in ("valid", "test"):
        pq.write_table(_chunk(rng, rows, 10_000, rows), folder / f"{split}.parquet", row_group_size=ROW_GROUP)
    (folder / "schema.yaml").write_text(yaml.safe_dump(SCHEMA, sort_keys=False))
    files = sorted((folder / "train").glob("*.parquet"))
    return {
        "seconds": time.perf_counter() - start,
        "train_files": len(files),
        "train_row_groups": sum(pq.ParquetFile(p).metadata.num_row_groups for p in files),
        "train_bytes": sum(p.stat().st_size for p in files),
    }


def _child_fit(data: Path, feat: Path) -> dict[str, Any]:
    from features.processor import fit
    from features.schema import load_schema

    schema = load_schema(data / "schema.yaml")
    rss_before = _rss_mb()
    start = time.perf_counter()
    fmap = fit(schema, feat)
    return {
        "seconds": time.perf_counter() - start,
        "rss_before_mb": rss_before,
        "train_rows": fmap.train_rows,
        "code": fit.__code__.co_filename,
        "num_embeddings": {s.name: s.num_embeddings for s in fmap.sparse},
    }


def _child_transform(data: Path, feat: Path) -> dict[str, Any]:
    from features.processor import transform
    from features.schema import load_schema

    schema = load_schema(data / "schema.yaml")
    rss_before = _rss_mb()
    start = time.perf_counter()
    report = transform(schema, feat, "train")
    return {"seconds": time.perf_counter() - start, "rss_before_mb": rss_before, "rows_out": report.rows_out}


def _checkout(ref: str, work: Path) -> Path:
    """The files of commit ``ref`` (``git archive``) under ``work``: the code of the 'before' measurement."""
    path = work / f"code-{ref}"
    if not path.exists():
        path.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True)
    return path


def _same_map(before: Path, new: Path) -> dict[str, Any]:
    """Two fitted folders compared: feature maps apart from the dense statistics, vocabulary files, and the largest
    relative difference of the dense means and standard deviations (the old means varied in the last bit)."""
    import polars as pl

    left, right = (json.loads((p / "feature_map.json").read_text()) for p in (before, new))
    dense = [
        abs(a[k] - b[k]) / abs(a[k])
        for a, b in zip(left["dense"], right["dense"], strict=True)
        for k in ("mean", "std")
    ]
    vocab = sorted(p.relative_to(before) for p in (before / "vocab").glob("*.parquet"))
    return {
        "feature_map_equal_but_dense": {k: v for k, v in left.items() if k != "dense"}
        == {k: v for k, v in right.items() if k != "dense"},
        "dense_max_relative_difference": max(dense, default=0.0),
        "dense": {"before": left["dense"], "new": right["dense"]},
        "vocab_files_equal": all(pl.read_parquet(before / v).equals(pl.read_parquet(new / v)) for v in vocab),
    }


def _r(x: float) -> str:
    return f"{round(x):,}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# `fit` memory (features.processor.fit, and transform of the train split)",
        "",
        f"Command: `{report['command']}` at commit {report['commit']}.",
        "",
        f"Date: {m['date_utc']}. Python {m['python']}, torch {m['torch']}, polars {m['polars']}, pyarrow "
        f"{m['pyarrow']}. nproc = {m['nproc']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}. The 2-core machine was shared with other jobs, so "
        "times are noisy upper bounds; peak RSS does not depend on the load.",
        "",
        "```",
        *m["lscpu_head"][:8],
        *m["memory"],
        "```",
        "",
        "Synthetic click-log data (see the script's docstring): train split in parquet files of at most "
        f"{report['file_rows']:,} rows, row groups of {ROW_GROUP:,} rows. Peak RSS = the child's `ru_maxrss`; it "
        "includes the interpreter and imports (RSS before).",
        "",
        "| train rows | files / row groups | train MB | code | step | s | RSS before MB | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        d = run["data"]
        for step in ("fit", "transform", "fit_before"):
            if step not in run:
                continue
            r = run[step]
            code = report["before_ref"] if step == "fit_before" else report["commit"]
            lines.append(
                f"| {run['rows']:,} | {d['train_files']} / {d['train_row_groups']} | {_r(d['train_bytes'] / 2**20)} | "
                f"{code} | {step.removesuffix('_before')} | {r['seconds']:.1f} | {_r(r['rss_before_mb'])} | "
                f"{_r(r['peak_rss_mb'])} |"
            )
    for run in report["runs"]:
        if "same_as_before" in run:
            s = run["same_as_before"]
            lines += [
                "",
                f"At {run['rows']:,} rows, the feature map of {report['commit']} against `{report['before_ref']}`: "
                f"equal but the dense statistics: {s['feature_map_equal_but_dense']}; vocabulary files equal: "
                f"{s['vocab_files_equal']}; dense means and standard deviations: largest relative difference "
                f"{s['dense_max_relative_difference']:.1e}.",
            ]
    lines += [
        "",
        "How `fit` stays bounded: every query runs alone on polars' streaming engine (`pl.collect_all` cached the "
        "whole training split that its queries share); quantile edges come from an exact radix selection (at most "
        "four streaming passes of 2**16 groups) instead of a sort of the column; dense sums are exact integer sums "
        "per binary exponent; files without bad rows are scanned without re-running the row checks. What remains "
        "grows with the results: the vocabularies and the cold entities' training values.",
        *[f"- skipped: {s}" for s in report["skipped"]],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 8_000_000, 30_000_000])
    parser.add_argument("--file-rows", type=int, default=4_000_000, help="rows per train file")
    parser.add_argument("--transform", action="store_true", help="also measure transform of the train split")
    parser.add_argument("--git-ref", help="also run fit from this commit (at the sizes of --before-rows)")
    parser.add_argument("--before-rows", type=int, nargs="*", default=[8_000_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fitmem"), help="where data is written")
    parser.add_argument("--keep", action="store_true", help="keep --work afterwards")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "studies" / "fit_memory.json")
    parser.add_argument("--child", choices=["generate", "fit", "transform"], help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, default=REPO, help=argparse.SUPPRESS)
    parser.add_argument("--feat", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = args.work / f"raw-{args.rows[0]}"
    if args.child:
        sys.path.insert(0, str(args.code))  # the code under test: this checkout, or the --git-ref one
        children = {
            "generate": lambda: generate(args.rows[0], data, args.file_rows),
            "fit": lambda: _child_fit(data, args.feat),
            "transform": lambda: _child_transform(data, args.feat),
        }
        print(json.dumps(children[args.child]()))
        return

    report: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "commit": _sh(f"git -C {REPO} rev-parse --short HEAD")
        + (" (with changes)" if _sh(f"git -C {REPO} status --porcelain -uno") else ""),
        "machine": machine(),
        "file_rows": args.file_rows,
        "before_ref": args.git_ref,
        "runs": [],
        "skipped": [],
    }
    script = Path(__file__)
    try:
        for rows in args.rows:
            common = ["--rows", str(rows), "--work", str(args.work), "--file-rows", str(args.file_rows)]
            feat = args.work / f"features-{rows}"
            run: dict[str, Any] = {"rows": rows}
            try:
                run["data"] = run_child([*common, "--child", "generate"], script=script)
                run["fit"] = run_child([*common, "--child", "fit", "--feat", str(feat)], script=script)
                if args.transform:
                    run["transform"] = run_child([*common, "--child", "transform", "--feat", str(feat)], script=script)
                if args.git_ref and rows in args.before_rows:
                    code, before = _checkout(args.git_ref, args.work), args.work / f"before-{rows}"
                    argv = [*common, "--child", "fit", "--feat", str(before), "--code", str(code)]
                    run["fit_before"] = run_child(argv, script=script)
                    run["same_as_before"] = _same_map(before, feat)
            except RuntimeError as err:  # e.g. killed for memory: recorded, not hidden
                report["skipped"].append(f"{rows:,} rows: {err}")
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(feat, ignore_errors=True)
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    main()
