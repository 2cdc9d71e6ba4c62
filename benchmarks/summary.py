"""``benchmarks/results/SUMMARY.md`` from the suite's result files alone (``benchmarks/results/*.json``).

    .venv/bin/python -m benchmarks.summary            # rewrites benchmarks/results/SUMMARY.md

Every number comes from a JSON next to it, so after a partial rerun (``benchmarks/run_all.py --only serving``)
the summary is regenerated from the new file and the committed others. Each section names its file, the command
that wrote it, the machine and the versions; a missing file is one line saying so, not a failure.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
SUMMARY = "SUMMARY.md"
LATENCY_VARIANTS = 8  # the compression table lists every variant; the latency lines the fastest few


def _cpu(machine: dict[str, Any]) -> str:
    if "cpu" in machine:
        return str(machine["cpu"])
    for line in machine.get("lscpu_head", []):
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def provenance(data: dict[str, Any]) -> str:
    """One line: command, machine, versions and load of a result file (``run_all``'s stamp where there is one)."""
    stamp = data.get("suite_run", {})
    machine = stamp.get("machine") or data.get("machine", {})
    command = stamp.get("command") or data.get("command") or "(not recorded)"
    cores = machine.get("nproc") or machine.get("cpu_count") or machine.get("cpus") or machine.get("os_cpu_count")
    versions = stamp.get("versions") or {
        k: machine[k] for k in ("python", "torch", "polars", "pyarrow") if k in machine
    }
    load = machine.get("loadavg_at_start") or machine.get("load_avg") or machine.get("loadavg_1_5_15")
    parts = [f"command `{command}`", f"{_cpu(machine)}, {cores or '?'} cores"]
    parts.append(", ".join(f"{k} {v}" for k, v in versions.items()) or "versions not recorded")
    if load:
        parts.append(f"load average {load[0]:.1f}")
    if stamp:
        parts.append(f"{stamp['date_utc']}, {stamp['seconds']:.0f} s, size `{stamp['size']}`")
    return "; ".join(parts)


def loader(data: dict[str, Any]) -> list[str]:
    lines = ["| data rows | threads | prefetch | rows/s (median, steady) | rows/s (best) |", "|---|---|---|---|---|"]
    for run in data["loader"]:
        threads = "1 core, 1 thread" if run["single_core"] else "default"
        lines.append(
            f"| {run['rows']:,} | {threads} | {run['prefetch']} | {run['median_rows_per_s_excl_first']:,.0f} | "
            f"{run['best_rows_per_s_excl_first']:,.0f} |"
        )
    return lines


def speed_ratios(report: dict[str, Any], model: str = "hiformer", base: str = "dcnv2") -> dict[str, float]:
    """``model``'s samples/s over ``base``'s: in the split and per (ranks, threads) throughput run."""
    ratios = {}
    splits = {(s["model"], bool(s.get("compiled"))): s["samples_per_s"] for s in report["splits"]}
    if (model, False) in splits and (base, False) in splits:
        ratios["split (1 process)"] = splits[(model, False)] / splits[(base, False)]
    if (model, True) in splits and (base, False) in splits:  # each at its faster setting: compile does not help DCN-v2
        best_base = max(v for (name, _), v in splits.items() if name == base)
        ratios["split (1 process), Hiformer compiled vs DCN-v2's faster setting"] = splits[(model, True)] / best_base
    runs = {
        (r["model"], r["ranks"], r["threads_per_rank"], bool(r.get("compiled"))): r["samples_per_s"]
        for r in report["throughput"]
    }
    for (name, ranks, threads, compiled), value in sorted(runs.items()):
        if name == model and (base, ranks, threads, compiled) in runs:
            label = f"{ranks} rank(s) x {threads} thread(s){', both compiled' if compiled else ''}"
            ratios[label] = value / runs[(base, ranks, threads, compiled)]
    return ratios


def training(data: dict[str, Any]) -> list[str]:
    rows: dict[str, dict[int, float]] = {}
    for run in (r for r in data["throughput"] if not r.get("compiled")):  # eager: what `ranker train` does by default
        best = rows.setdefault(run["model"], {})
        best[run["ranks"]] = max(best.get(run["ranks"], 0.0), run["samples_per_s"])
    ranks = sorted({r for by_rank in rows.values() for r in by_rank})
    lines = [
        f"Batch {data['batch_size_per_rank']} per rank, {data['steps']} timed steps after {data['warmup']}; "
        "samples/s (the best thread setting measured).",
        "",
        "| model | " + " | ".join(f"{r} rank(s)" for r in ranks) + " |",
        "|---|" + "---|" * len(ranks),
    ]
    for model, by_rank in rows.items():
        cells = " | ".join(f"{by_rank[r]:,.0f}" if r in by_rank else "-" for r in ranks)
        lines.append(f"| {model} | {cells} |")
    peak = data.get("matmul_peak_gflops")
    if peak:  # results from before the dense-part measurement have neither
        dense = {s["model"]: s["dense_part"] for s in data["splits"] if "dense_part" in s}
        shares = ", ".join(f"{m} {100 * d['gflops_per_s'] / peak:.1f}%" for m, d in dense.items())
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in speed_ratios(data).items())
        lines += [
            "",
            f"Hiformer / DCN-v2 samples/s: {ratios}. Dense part (interaction + heads, forward + backward) as a share "
            f"of the measured matmul peak ({peak:.1f} GFLOP/s): {shares}.",
        ]
    return lines


def serving(data: dict[str, Any]) -> list[str]:
    latency = data["latency"]
    fastest = sorted(latency, key=lambda name: latency[name]["p50_ms_1t"])[:LATENCY_VARIANTS]
    lines = [
        f"One request of {data['candidates']:,} candidates, {data['requests']} requests per variant, 1 thread "
        f"(fastest {len(fastest)} of {len(latency)} timed; all in `serving.md`).",
        "",
        "| variant | p50 ms | p99 ms | candidates/s |",
        "|---|---|---|---|",
    ]
    for name in fastest:
        row = latency[name]
        lines.append(f"| {name} | {row['p50_ms_1t']:.1f} | {row['p99_ms_1t']:.1f} | {row['candidates_per_s']:,.0f} |")
    lines += [
        "",
        "Compression (test AUC against the uncompressed model of the same run, paired bootstrap interval):",
        "",
        "| variant | from | parameters | model.pt bytes | embedding bytes | AUC | delta AUC [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in data["variants"].items():
        low, high = v["auc_ci"]
        lines.append(
            f"| {name} | {v['source']} | {v['parameters']:,} | {v['model_pt_bytes']:,} | {v['embedding_bytes']:,} | "
            f"{v['auc']:.4f} | {v['auc_delta']:+.4f} [{low:+.4f}, {high:+.4f}] |"
        )
    return lines


def scoring(data: dict[str, Any]) -> list[str]:
    lines = ["| rows | processes | rows/s | wall s | peak RSS MB |", "|---|---|---|---|---|"]
    for run in data["runs"]:
        lines.append(
            f"| {run['rows']:,} | {run['nproc']} | {run['rows_per_s']:,.0f} | {run['wall_seconds']:,.0f} | "
            f"{run['peak_rss_mb']:,.0f} |"
        )
    return lines


def towers(data: dict[str, Any]) -> list[str]:
    args = data["args"]
    lines = [
        f"Fashion-MNIST, {args['n_train']:,} training photos, {args['epochs']} epoch(s), {args['threads']} thread(s).",
        "",
        "| tower | params (M) | MMACs/image | test accuracy | images/s (batch 256) |",
        "|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['tower']} | {r['params_m']:.2f} | {r['mmacs_per_image']:.1f} | {r['test_acc']:.4f} | "
            f"{r['infer_img_per_s_b256']:,.0f} |"
        )
    return lines


def _mean_std(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def quality(data: dict[str, Any]) -> list[str]:
    lines = [
        f"Test metrics, mean ± std over seeds {data['seeds']}, dense learning rate chosen on validation among "
        f"{data['learning_rates']}.",
        "",
        "| data set | model | dense lr | test AUC | test GAUC | test logloss |",
        "|---|---|---|---|---|---|",
    ]
    for dataset in ("movielens-100k", "fashion-clicks"):
        for model, s in data.get(dataset, {}).get("summary", {}).items():
            lines.append(
                f"| {dataset} | {model} | {s['dense_lr']:g} | {_mean_std(s['auc'])} | {_mean_std(s['gauc'])} | "
                f"{_mean_std(s['logloss'])} |"
            )
    bayes = data.get("fashion-clicks", {}).get("bayes_auc")
    if bayes:
        lines += ["", f"fashion-clicks Bayes-optimal test AUC: {bayes['overall']:.4f}."]
    return lines + ["", f"Verdict: {data['verdict']}"]


# (section title, result file, what it shows, renderer); the order of the summary.
SECTIONS: tuple[tuple[str, str, str, Callable[[dict[str, Any]], list[str]]], ...] = (
    ("Loader throughput", "features_bench.json", "`RankLoader` over processed fashion-clicks parquet", loader),
    ("Training throughput", "train_throughput.json", "samples/s per model at 1 and 2 ranks", training),
    ("Serving latency and compression", "serving.json", "served programs of `ranker compress`", serving),
    ("Batch scoring", "score.json", "`ranker score` over raw parquet", scoring),
    ("Vision towers", "towers_fmnist.json", "tower images/s and accuracy", towers),
    ("Model quality", "model_quality.json", "Hiformer vs baselines, `ranker train --nproc 2`", quality),
)


def render(results: Path = RESULTS) -> str:
    """The summary of the result files in ``results``."""
    lines = [
        "# Benchmark summary",
        "",
        "Written by `benchmarks/summary.py` from the JSON files in this folder (`make bench` runs the suite and "
        "then this). Each section names its file, the command, the machine and the versions; the full tables are "
        "in the file's `.md` next to it. Timings from a shared machine are noisy.",
        "",
    ]
    for title, name, what, section in SECTIONS:
        lines += [f"## {title}", ""]
        path = results / name
        if not path.exists():
            lines += [f"Not measured: `{name}` is missing.", ""]
            continue
        data = json.loads(path.read_text())
        lines += [f"{what}. Source: [`{name}`]({name}) ([`{path.stem}.md`]({path.stem}.md)).", ""]
        lines += [f"Run: {provenance(data)}.", ""]
        lines += [*section(data), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the result JSONs")
    args = parser.parse_args(argv)
    (args.results / SUMMARY).write_text(render(args.results))
    print(f"summary: {args.results / SUMMARY}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
