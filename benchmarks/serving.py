"""Serving benchmark: size, MACs, latency of one 1,024-candidate request, throughput and AUC vs uncompressed.

Every variant is produced by ``ranker compress`` (``pipelines.compress.compress_export``) from a trained export and
timed through its served artefact (``serve/model.pt2``, ``torch.export.load(...).module()``: the eager path), and
optionally through an AOTInductor package (``--aoti NAME``, compiled here for this CPU). Variants are timed
interleaved in one process at 1 and at 2 threads, so the ratios are more reliable than absolute times on a shared
machine. AUC / NE deltas are paired-bootstrap comparisons (``pipelines.metrics.compare``) on the test split against
the uncompressed model of the same run. MACs per candidate are counted by ``torch.utils.flop_counter`` on the eager
model (matrix products only: lookups and element-wise work are not MACs). The same run also times how Hiformer's
interaction grows with the number of feature tokens T for full vs low-rank composite projections (table + plot).

Runs (``--runs``): ``hiformer``, ``dcnv2``, ``dlrm`` (D = 16) and, when present, ``hiformer64`` (D = 64, for the
embedding quantisation sizes where rows are no longer padded to fp16's size).

    python -m benchmarks.serving --runs /tmp/wt10runs --features /tmp/wt10data/features/movielens-100k \\
        --work /tmp/wt10bench --requests 500 --aoti best+heads --aoti dcnv2 --aoti dcnv2_low_rank_44+ft

``--only NAME`` (repeatable) runs a subset with its baselines and no T scaling, e.g. to check new variants.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from features.loader import BatchBuilder
from features.processor import FeatureMap, processed_files
from pipelines.compress import compress_export
from pipelines.evaluate import evaluate_model
from pipelines.metrics import EvalConfig, compare
from ranker.compress import CompressConfig, FinetuneConfig, LowRankConfig, PruneConfig
from ranker.export import load_exported

RESULTS = Path(__file__).parent / "results"


def variants(
    features: str, steps: int, energy: float, cross_rank: int, runs: Path
) -> dict[str, tuple[str, CompressConfig]]:
    """Variant name -> (run, config); the variant named like its run is that run's uncompressed baseline."""
    ft = FinetuneConfig(features=features, steps=steps, batch_size=256, lr=1e-3, seed=0)
    lr = LowRankConfig(energy=energy)
    cross = LowRankConfig(rank=cross_rank)
    heads = PruneConfig(features=features, heads=1, ffn_hidden=32)
    table = {
        "hiformer": ("hiformer", CompressConfig()),
        "prune_last": ("hiformer", CompressConfig(prune_last=True)),
        "low_rank": ("hiformer", CompressConfig(low_rank=lr)),
        "low_rank+ft": ("hiformer", CompressConfig(low_rank=lr, finetune=ft)),
        "low_rank_8x16+ft": ("hiformer", CompressConfig(low_rank=LowRankConfig(rank_k=8, rank_v=16), finetune=ft)),
        "heads_1+ffn_32+ft": ("hiformer", CompressConfig(prune=heads, finetune=ft)),
        "bf16": ("hiformer", CompressConfig(dense_dtype="bfloat16")),
        "fp16_tables": ("hiformer", CompressConfig(embedding_dtype="float16")),
        "int8_tables": ("hiformer", CompressConfig(embedding_dtype="int8")),
        "int4_tables": ("hiformer", CompressConfig(embedding_dtype="int4")),
        "best": ("hiformer", CompressConfig(prune_last=True, low_rank=lr, finetune=ft)),
        "best+heads": ("hiformer", CompressConfig(prune_last=True, prune=heads, low_rank=lr, finetune=ft)),
        "dcnv2": ("dcnv2", CompressConfig()),
        "dcnv2_int8": ("dcnv2", CompressConfig(embedding_dtype="int8")),
        f"dcnv2_low_rank_{cross_rank}+ft": ("dcnv2", CompressConfig(low_rank=cross, finetune=ft)),
        f"dcnv2_low_rank_{cross_rank}+ft+int8": (
            "dcnv2",
            CompressConfig(low_rank=cross, finetune=ft, embedding_dtype="int8"),
        ),
        "dlrm": ("dlrm", CompressConfig()),
        "dlrm_int8": ("dlrm", CompressConfig(embedding_dtype="int8")),
    }
    if (runs / "hiformer64" / "export").exists():
        table["hiformer64"] = ("hiformer64", CompressConfig())
        for dtype in ("float16", "int8", "int4"):
            table[f"hiformer64_{dtype}_tables"] = ("hiformer64", CompressConfig(embedding_dtype=dtype))
    return table


def macs_per_candidate(export: Path, inputs: tuple[torch.Tensor, ...]) -> float:
    """Multiply-accumulates per candidate of the eager model (``flop_counter`` counts 2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ranker.serving import TensorRanker

    model = load_exported(export)
    wrapper = TensorRanker(model, model.sparse_arch.feature_names)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        wrapper(*inputs)
    return counter.get_total_flops() / 2 / inputs[0].shape[0]


def token_scaling(tokens: tuple[int, ...], dim: int, batch: int, reps: int) -> list[dict[str, Any]]:
    """Hiformer interaction (2 layers, last pruned) for T feature tokens: full vs low-rank (auto) composite K/V."""
    from torch.utils.flop_counter import FlopCounterMode

    from ranker.interactions import create

    rows = []
    torch.set_num_threads(1)
    for t in tokens:
        x = torch.randn(batch, t, dim)
        for label, rank in (("full", None), ("low-rank", "auto")):
            torch.manual_seed(0)
            layer = create("hiformer", num_tokens=t, dim=dim, num_tasks=1, rank_k=rank, rank_v=rank).eval()
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                layer(x)
            with torch.no_grad():
                for _ in range(3):
                    layer(x)
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    layer(x)
                    times.append(time.perf_counter() - t0)
            rows.append({"T": t, "projection": label, "macs_per_candidate": counter.get_total_flops() / 2 / batch,
                         "parameters": sum(p.numel() for p in layer.parameters()),
                         "p50_ms": percentile(times, 50)})  # fmt: skip
            print(f"[scaling] T={t} {label}: {rows[-1]['p50_ms']:.2f} ms", flush=True)
    return rows


def plot_scaling(rows: list[dict[str, Any]], path: Path, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for label in ("full", "low-rank"):
        part = [r for r in rows if r["projection"] == label]
        axes[0].plot([r["T"] for r in part], [r["macs_per_candidate"] / 1e6 for r in part], marker="o", label=label)
        axes[1].plot([r["T"] for r in part], [r["p50_ms"] for r in part], marker="o", label=label)
    for ax, ylabel in zip(axes, ("MMACs per candidate", f"p50 ms, {batch:,} candidates, 1 thread"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("feature tokens T")
        ax.set_ylabel(ylabel)
        ax.legend()
    fig.suptitle("Hiformer interaction cost vs T: full vs low-rank composite key/value (D = 16)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def request_inputs(features: Path, export: Path, n: int) -> tuple[torch.Tensor, ...]:
    fmap = FeatureMap.load(export)
    files = processed_files(features, "test")
    table = pq.read_table(files[0]).slice(0, n)
    batch = BatchBuilder(fmap, table.column_names)(table)
    return batch.dense, batch.sparse.values(), batch.sparse.lengths()


def percentile(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times) * 1e3, q))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True, help="folder with hiformer/, dcnv2/, dlrm/ runs")
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="where compressed exports and evals go")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=300, help="fine-tune steps")
    parser.add_argument("--energy", type=float, default=0.9)
    parser.add_argument(
        "--cross-rank",
        type=int,
        default=44,
        help="DCN-v2 low-rank cross budget (default N/4 for N = T·D = 11·16, torchrec's suggestion; the trained "
        "cross matrices need N/2 for 90%% of their energy, where U V costs as much as W)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="only these variants (and their runs' baselines), no T scaling: a partial run, give it another --out",
    )
    parser.add_argument("--aoti", action="append", default=[], help="variant(s) also timed as AOTInductor packages")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--throughput-batch", type=int, default=4096)
    parser.add_argument("--scaling-reps", type=int, default=10)
    parser.add_argument("--scaling-batch", type=int, default=256, help="candidates per forward in the T scaling")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving")
    args = parser.parse_args(argv)
    started = time.time()
    table = variants(str(args.features), args.steps, args.energy, args.cross_rank, args.runs)
    if args.only:
        unknown = sorted(set(args.only + args.aoti) - set(table))
        if unknown:
            parser.error(f"--only/--aoti: unknown variant(s) {unknown}; known: {sorted(table)}")
        keep = set(args.only) | {table[name][0] for name in args.only}
        table = {name: spec for name, spec in table.items() if name in keep}
    rows: dict[str, dict[str, Any]] = {}
    for name, (run, cfg) in table.items():
        t0 = time.time()
        manifest = compress_export(args.runs / run / "export", cfg, args.work / name)
        res = manifest["results"]
        rows[name] = {
            "source": run,
            "parameters": res["parameters"],
            "model_pt_bytes": res["model_bytes"],
            "program_bytes": (args.work / name / "serve" / "model.pt2").stat().st_size,
            "embedding_bytes": res["applied"]["embedding_bytes"]["after"],
            "applied": {k: v for k, v in res["applied"].items() if not k.startswith(("parameters", "embedding_b"))},
            "compress_s": round(time.time() - t0, 1),
        }
        print(f"[compress] {name}: {res['parameters']:,} params ({rows[name]['compress_s']} s)", flush=True)
    # Quality: test AUC / NE of every variant against the uncompressed model of its run, paired bootstrap.
    evcfg = EvalConfig(n_bootstrap=args.bootstrap, seed=0)
    preds = {}
    for name in table:
        evaluate_model(args.work / name, args.features, args.work / f"eval-{name}", "test", evcfg)
        preds[name] = args.work / f"eval-{name}" / "predictions.parquet"
    for name, (run, _) in table.items():
        rows[name]["baseline"] = run
        comp = compare(preds[run], preds[name], config=evcfg, names=(run, name))
        task = next(iter(comp["overall"]["tasks"]))
        metrics = comp["overall"]["tasks"][task]["metrics"]
        for metric in ("auc", "ne"):
            m = metrics[metric]
            rows[name][metric] = m["b"]
            rows[name][f"{metric}_delta"] = m["delta"]
            rows[name][f"{metric}_ci"] = [m["ci_low"], m["ci_high"]]
            rows[name][f"{metric}_verdict"] = m["verdict"]
    print(f"[quality] done ({time.time() - started:.0f} s)", flush=True)
    # Latency: one request of C candidates, served programs (eager) and AOTInductor packages, interleaved.
    inputs = request_inputs(args.features, args.runs / "hiformer" / "export", args.candidates)
    big = request_inputs(args.features, args.runs / "hiformer" / "export", args.throughput_batch)
    fns: dict[str, Any] = {}
    for name in table:
        fns[name] = torch.export.load(args.work / name / "serve" / "model.pt2").module()
        rows[name]["macs_per_candidate"] = macs_per_candidate(args.work / name, inputs)
    compile_s = {}
    for name in args.aoti:
        t0 = time.time()
        path = args.work / name / "serve" / "model_aoti.pt2"
        program = torch.export.load(args.work / name / "serve" / "model.pt2")
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        fns[f"{name} (AOTI)"] = torch._inductor.aoti_load_package(str(path))
        compile_s[name] = round(time.time() - t0, 1)
        rows[name]["aoti_bytes"] = path.stat().st_size
        print(f"[aoti] {name}: {compile_s[name]} s", flush=True)
    reference = {}
    latency: dict[str, dict[str, Any]] = {k: {} for k in fns}
    with torch.no_grad():
        for key, fn in fns.items():
            for _ in range(10):
                reference[key] = fn(*inputs)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            times: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(args.requests):
                for key, fn in fns.items():
                    t0 = time.perf_counter()
                    fn(*inputs)
                    times[key].append(time.perf_counter() - t0)
            for key, v in times.items():
                latency[key][f"p50_ms_{threads}t"] = percentile(v, 50)
                latency[key][f"p99_ms_{threads}t"] = percentile(v, 99)
            print(f"[latency] {threads} thread(s) done", flush=True)
        torch.set_num_threads(1)
        for key, fn in fns.items():
            fn(*big)
            spans = []
            for _ in range(10):
                t0 = time.perf_counter()
                fn(*big)
                spans.append(time.perf_counter() - t0)
            latency[key]["candidates_per_s"] = args.throughput_batch / float(np.median(spans))
    for name in args.aoti:
        diff = (reference[f"{name} (AOTI)"] - reference[name]).abs().max().item()
        latency[f"{name} (AOTI)"]["max_abs_diff_vs_program"] = diff
    scaling = [] if args.only else token_scaling((8, 16, 32, 64, 128), 16, args.scaling_batch, args.scaling_reps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if scaling:
        plot_scaling(scaling, args.out.with_name(args.out.name + "_scaling.png"), args.scaling_batch)
    result = {
        "command": " ".join([sys.executable.split("/")[-1], "-m", "benchmarks.serving", *(argv or sys.argv[1:])]),
        "machine": {
            "cpu": _cpu_name(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": [1, 2],
        },
        "candidates": args.candidates,
        "requests": args.requests,
        "variants": rows,
        "latency": latency,
        "throughput_batch": args.throughput_batch,
        "token_scaling": scaling,
        "scaling_batch": args.scaling_batch,
        "aoti_compile_s": compile_s,
        "seconds": round(time.time() - started, 1),
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _f(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def render(r: dict[str, Any]) -> str:
    lines = [
        "# Serving benchmark: compressed Hiformer vs DCN-v2 / DLRM (MovieLens-100k, CPU)",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cpus']} vCPUs (shared; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in r['machine']['load_avg'])}), torch {r['machine']['torch']}.  ",
        f"One request = {r['candidates']} candidates (the first rows of the test split), {r['requests']} requests per "
        "variant and thread count, timed interleaved. **Absolute times are noisy** (shared machine); compare within "
        "this table. Deltas are against the uncompressed model of the same run (`baseline`), paired bootstrap.",
        "",
        "Parameters count trainable tensors: quantised tables are packed buffers, counted in table bytes.",
        "",
        "| variant | baseline | parameters | table bytes | model.pt bytes | model.pt2 bytes | MACs / candidate "
        "| test AUC | ΔAUC [95% CI] | ΔNE [95% CI] |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, v in r["variants"].items():
        auc_ci, ne_ci = v.get("auc_ci", [None, None]), v.get("ne_ci", [None, None])
        lines.append(
            f"| {name} | {v.get('baseline', '')} | {v['parameters']:,} | {v.get('embedding_bytes', 0):,} "
            f"| {v['model_pt_bytes']:,} | {v['program_bytes']:,} | {v.get('macs_per_candidate', 0):,.0f} "
            f"| {_f(v.get('auc'))} | {_f(v.get('auc_delta'))} [{_f(auc_ci[0])}, {_f(auc_ci[1])}] "
            f"| {_f(v.get('ne_delta'))} [{_f(ne_ci[0])}, {_f(ne_ci[1])}] |"
        )
    lines += [
        "",
        f"| served as | p50 ms 1 thread | p99 ms 1 thread | p50 ms 2 threads | p99 ms 2 threads "
        f"| candidates/s at batch {r.get('throughput_batch', 4096):,} (1 thread) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, lat in r["latency"].items():
        lines.append(
            f"| {name} | {lat['p50_ms_1t']:.2f} | {lat['p99_ms_1t']:.2f} | {lat['p50_ms_2t']:.2f} "
            f"| {lat['p99_ms_2t']:.2f} | {lat['candidates_per_s']:,.0f} |"
        )
    if r.get("token_scaling"):
        lines += [
            "",
            "## Hiformer interaction cost vs number of feature tokens T (D = 16, 2 layers, last pruned, 1 thread)",
            "",
            "Full composite key/value projections are `(S·D) x (S·H·d)` matrices (S = T + K), quadratic in T; the "
            "low-rank ones (`rank_k` = 2D, `rank_v` = 4D) are linear in T, the paper's claim.",
            "",
            f"| T | projection | parameters | MACs / candidate | p50 ms ({r.get('scaling_batch', 256):,} candidates) |",
            "|---:|---|---:|---:|---:|",
        ]
        for row in r["token_scaling"]:
            lines.append(
                f"| {row['T']} | {row['projection']} | {row['parameters']:,} | {row['macs_per_candidate']:,.0f} "
                f"| {row['p50_ms']:.2f} |"
            )
        lines += ["", "![cost vs T](serving_scaling.png)"]
    lines += ["", "What each variant applied (`compression.json`):", ""]
    for name, v in r["variants"].items():
        lines.append(f"- **{name}** (from `{v['source']}`): `{json.dumps(v['applied'], default=str)[:400]}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
