"""Serving benchmark: parameters, size on disk, latency of one 1,024-candidate request and test AUC vs uncompressed.

Every variant is produced by ``ranker compress`` (``pipelines.compress.compress_export``) from a trained export and
timed through its served artefact (``serve/model.pt2``, ``torch.export.load(...).module()``: the eager path), and
optionally through an AOTInductor package (``--aoti NAME``, compiled here for this CPU). Variants are timed
interleaved in one process at ``torch.set_num_threads(1)``, so the ratios are more reliable than absolute times on a
shared machine. AUC deltas are paired-bootstrap comparisons (``pipelines.metrics.compare``) on the test split.

    python -m benchmarks.serving --runs /tmp/wt10runs --features /tmp/wt10data/features/movielens-100k \\
        --work /tmp/wt10bench --requests 500 --aoti best --aoti dcnv2
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
from ranker.compress import CompressConfig, FinetuneConfig, LowRankConfig

RESULTS = Path(__file__).parent / "results"


def variants(features: str, steps: int, energy: float) -> dict[str, tuple[str, CompressConfig]]:
    ft = FinetuneConfig(features=features, steps=steps, batch_size=256, lr=1e-3, seed=0)
    lr = LowRankConfig(energy=energy)
    return {
        "hiformer": ("hiformer", CompressConfig()),
        "prune_last": ("hiformer", CompressConfig(prune_last=True)),
        "low_rank": ("hiformer", CompressConfig(low_rank=lr)),
        "low_rank+ft": ("hiformer", CompressConfig(low_rank=lr, finetune=ft)),
        "low_rank_8/16+ft": ("hiformer", CompressConfig(low_rank=LowRankConfig(rank_k=8, rank_v=16), finetune=ft)),
        "bf16": ("hiformer", CompressConfig(dense_dtype="bfloat16")),
        "best": ("hiformer", CompressConfig(prune_last=True, low_rank=lr, finetune=ft)),
        "dcnv2": ("dcnv2", CompressConfig()),
        "dlrm": ("dlrm", CompressConfig()),
    }


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
    parser.add_argument("--aoti", action="append", default=[], help="variant(s) also timed as AOTInductor packages")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "serving")
    args = parser.parse_args(argv)
    started = time.time()
    table = variants(str(args.features), args.steps, args.energy)
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
            "applied": {k: v for k, v in res["applied"].items() if not k.startswith("parameters")},
            "compress_s": round(time.time() - t0, 1),
        }
        print(f"[compress] {name}: {res['parameters']:,} params ({rows[name]['compress_s']} s)", flush=True)
    # Quality: test AUC / NE of every variant against the uncompressed Hiformer, paired bootstrap.
    evcfg = EvalConfig(n_bootstrap=args.bootstrap, seed=0)
    preds = {}
    for name in table:
        evaluate_model(args.work / name, args.features, args.work / f"eval-{name}", "test", evcfg)
        preds[name] = args.work / f"eval-{name}" / "predictions.parquet"
    for name in table:
        comp = compare(preds["hiformer"], preds[name], config=evcfg, names=("hiformer", name))
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
    fns: dict[str, Any] = {}
    for name in table:
        fns[name] = torch.export.load(args.work / name / "serve" / "model.pt2").module()
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
    torch.set_num_threads(1)
    reference = {}
    with torch.no_grad():
        for key, fn in fns.items():
            for _ in range(10):
                reference[key] = fn(*inputs)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.requests):
            for key, fn in fns.items():
                t0 = time.perf_counter()
                fn(*inputs)
                times[key].append(time.perf_counter() - t0)
    latency = {k: {"p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99)} for k, v in times.items()}
    for name in args.aoti:
        diff = (reference[f"{name} (AOTI)"] - reference[name]).abs().max().item()
        latency[f"{name} (AOTI)"]["max_abs_diff_vs_program"] = diff
    result = {
        "command": " ".join([sys.executable.split("/")[-1], "-m", "benchmarks.serving", *(argv or sys.argv[1:])]),
        "machine": {
            "cpu": _cpu_name(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": 1,
        },
        "candidates": args.candidates,
        "requests": args.requests,
        "variants": rows,
        "latency": latency,
        "aoti_compile_s": compile_s,
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
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
        f"{', '.join(f'{x:.1f}' for x in r['machine']['load_avg'])}), torch {r['machine']['torch']}, 1 thread.  ",
        f"One request = {r['candidates']} candidates (the first rows of the test split), {r['requests']} requests per "
        "variant, timed interleaved. **Absolute times are noisy** (shared machine); compare within this table.",
        "",
        "| variant | parameters | model.pt bytes | model.pt2 bytes | test AUC "
        "| ΔAUC vs hiformer [95% CI] | ΔNE [95% CI] |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name, v in r["variants"].items():
        auc_ci, ne_ci = v.get("auc_ci", [None, None]), v.get("ne_ci", [None, None])
        lines.append(
            f"| {name} | {v['parameters']:,} | {v['model_pt_bytes']:,} | {v['program_bytes']:,} | {_f(v.get('auc'))} "
            f"| {_f(v.get('auc_delta'))} [{_f(auc_ci[0])}, {_f(auc_ci[1])}] "
            f"| {_f(v.get('ne_delta'))} [{_f(ne_ci[0])}, {_f(ne_ci[1])}] |"
        )
    lines += ["", "| served as | p50 ms | p99 ms |", "|---|---:|---:|"]
    for name, lat in r["latency"].items():
        lines.append(f"| {name} | {lat['p50_ms']:.2f} | {lat['p99_ms']:.2f} |")
    lines += ["", "What each variant applied (`compression.json`):", ""]
    for name, v in r["variants"].items():
        lines.append(f"- **{name}** (from `{v['source']}`): `{json.dumps(v['applied'], default=str)[:400]}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
