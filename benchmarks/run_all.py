"""The benchmark suite (`make bench`): every benchmark at one documented size, then ``SUMMARY.md``.

    .venv/bin/python benchmarks/run_all.py                          # the suite, ~45-50 min on an idle 2-core CPU
    .venv/bin/python benchmarks/run_all.py --only serving score     # a partial rerun; the summary is redone
    .venv/bin/python benchmarks/run_all.py --size tiny --results /tmp/bench-results --only features
                                                                    # plumbing check in seconds to minutes

Order and inputs: the data sets are built once under ``--work`` (movielens-100k; fashion-clicks at 300k rows, seed
0, as the full protocols in ``results/studies/model_quality_*.md``); ``model_quality`` trains the movielens runs
whose seed-0 exports (Hiformer, DCN-v2, DLRM) ``serving`` compresses and ``score`` scores, so those two need it
(finished runs are reused). Each benchmark writes ``RESULTS/<name>.{json,md}``; this script then adds
``suite_run`` to the JSON (the command it ran, size, seconds, machine, package versions, commit) and rewrites
``RESULTS/SUMMARY.md`` (``benchmarks/summary.py``).

Suite sizes, with the times measured in the suite run of 2026-12-02 (2-vCPU AMD EPYC, quiet): loader 1M rows
(about 1 min), training throughput 60 steps per model and rank count plus the dense-part and ``torch.compile``
measurements (6 min), model quality at dense lr 0.003 and seeds 0 and 1, 20 runs (14 min), serving 200 requests,
100 fine-tune steps, no AOTInductor (about 15 min, estimated from the full run's 27 min at 500 requests with
AOTInductor), scoring 1M rows (33 s), towers 3,000 photos x 2 epochs (9 min): about 45-50 minutes in all, plus the
data (about 1 min). The full studies' sizes are in each script's docstring; the committed ``serving.*`` is the full
run (its own command is in the file).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import summary  # noqa: E402
from benchmarks.features_bench import machine  # noqa: E402

SIZES = ("suite", "tiny")
# Both Hiformer and DCN-v2 picked it in the full protocol (results/studies/model_quality_before_sparse_fix.md).
QUALITY_LR = "0.003"
PACKAGES = ("torch", "torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu", "polars", "pyarrow", "numpy", "mlflow")


@dataclass(frozen=True)
class Paths:
    work: Path
    results: Path

    @property
    def data(self) -> Path:
        return self.work / "data"

    def features(self, dataset: str) -> Path:
        return self.data / "features" / dataset

    def quality_run(self, model: str) -> Path:
        """The seed-0 movielens run of ``model`` that model_quality trains (serving and score use its export)."""
        return self.work / "runs" / "model_quality" / "movielens-100k" / f"{model}-lr{float(QUALITY_LR):g}-s0"


@dataclass(frozen=True)
class Bench:
    """One benchmark: its result file stem and its command at each size."""

    name: str
    stem: str
    command: Callable[[Paths, str], list[str]]


def _features_bench(p: Paths, size: str) -> list[str]:
    rows = {"suite": "1000000", "tiny": "20000"}[size]
    epochs = {"suite": "5", "tiny": "1"}[size]
    return ["benchmarks/features_bench.py", "--rows", rows, "--loader-rows", rows, "--epochs", epochs,
            "--work", str(p.work / "featbench"), "--out", str(p.results / "features_bench.json")]  # fmt: skip


def _train_throughput(p: Paths, size: str) -> list[str]:
    steps, warmup = {"suite": ("60", "10"), "tiny": ("2", "1")}[size]
    return ["benchmarks/train_throughput.py", "--features", str(p.features("fashion-clicks")), "--steps", steps,
            "--warmup", warmup, "--out", str(p.results / "train_throughput")]  # fmt: skip


def _model_quality(p: Paths, size: str) -> list[str]:
    cmd = ["benchmarks/model_quality.py", "--data-dir", str(p.data), "--runs", str(p.work / "runs" / "model_quality"),
           "--learning-rates", QUALITY_LR, "--out", str(p.results / "model_quality")]  # fmt: skip
    if size == "tiny":
        return cmd + ["--models", "hiformer", "dcnv2", "dlrm", "--seeds", "0", "1", "--set", "max_steps=4",
                      "--set", "eval_every=2"]  # fmt: skip
    return cmd + ["--seeds", "0", "1"]


def _serving(p: Paths, size: str) -> list[str]:
    runs = p.work / "serving-runs"
    runs.mkdir(parents=True, exist_ok=True)
    for model in ("hiformer", "dcnv2", "dlrm"):  # the runs serving expects, by name
        link = runs / model
        if not link.exists():
            link.symlink_to(p.quality_run(model))
    requests, steps, bootstrap, reps = {"suite": ("200", "100", "100", "5"), "tiny": ("3", "2", "5", "1")}[size]
    return ["-m", "benchmarks.serving", "--runs", str(runs), "--features", str(p.features("movielens-100k")),
            "--work", str(p.work / "serving"), "--requests", requests, "--steps", steps, "--bootstrap", bootstrap,
            "--scaling-reps", reps, "--out", str(p.results / "serving")]  # fmt: skip


def _score(p: Paths, size: str) -> list[str]:
    rows = {"suite": "1000000", "tiny": "5000"}[size]
    return ["benchmarks/score_bench.py", "--model", str(p.quality_run("hiformer") / "export"), "--source",
            str(p.features("movielens-100k") / "source"), "--rows", rows, "--work", str(p.work / "score"),
            "--out", str(p.results / "score.json")]  # fmt: skip


def _towers(p: Paths, size: str) -> list[str]:
    sized = {"suite": ["--n-train", "3000", "--epochs", "2"], "tiny": ["--n-train", "64", "--epochs", "1",
             "--towers", "efficientmod_fm"]}[size]  # fmt: skip
    return ["-m", "benchmarks.towers_fmnist", *sized, "--threads", "1", "--out", str(p.results)]


BENCHES = (
    Bench("features", "features_bench", _features_bench),
    Bench("training", "train_throughput", _train_throughput),
    Bench("quality", "model_quality", _model_quality),
    Bench("serving", "serving", _serving),
    Bench("score", "score", _score),
    Bench("towers", "towers_fmnist", _towers),
)
NEEDS_DATA = {"training": ("fashion-clicks",), "quality": ("movielens-100k", "fashion-clicks"),
              "serving": ("movielens-100k",), "score": ("movielens-100k",)}  # fmt: skip
NEEDS_QUALITY = ("serving", "score")


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def commit() -> str:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "-uno"], capture_output=True, text=True)
    return head.stdout.strip() + (" (with changes)" if dirty.stdout.strip() else "")


def _run(args: list[str], log: Path) -> float:
    """Runs ``python ARGS`` from the repository root, its output teed to ``log``; its seconds. Fails loudly."""
    started = time.time()
    print(f"[bench] {shlex.join(['python', *args])}", flush=True)
    with (
        log.open("w") as out,
        subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            print(f"  {line}", end="", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"[bench] failed ({proc.returncode}): {shlex.join(args)}; log: {log}")
    return time.time() - started


def build_data(p: Paths, datasets: set[str], size: str) -> None:
    """The raw data sets and their features under ``p.data`` (skipped when already built: the steps' manifests)."""
    rows = {"suite": "300000", "tiny": "20000"}[size]
    for dataset in sorted(datasets):
        build = ["-m", "pipelines.cli", "--data-dir", str(p.data), "data", "build", dataset]
        if dataset == "fashion-clicks":
            build += ["--rows", rows, "--seed", "0"]
        _run(build, p.work / f"data-{dataset}.log")
        schema = p.data / "raw" / dataset / "schema.yaml"
        _run(["-m", "pipelines.cli", "--data-dir", str(p.data), "features", "build", str(schema)],
             p.work / f"features-{dataset}.log")  # fmt: skip


def stamp(result: Path, args: list[str], size: str, seconds: float) -> None:
    """Adds ``suite_run`` (command, size, seconds, machine, versions, commit) to a benchmark's result JSON."""
    data = json.loads(result.read_text())
    data["suite_run"] = {
        "command": shlex.join(["python", *args]),
        "size": size,
        "seconds": round(seconds, 1),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "commit": commit(),
    }
    result.write_text(json.dumps(data, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [b.name for b in BENCHES]
    parser.add_argument("--only", nargs="+", choices=names, default=names, help="benchmarks to run (default: all)")
    parser.add_argument("--size", choices=SIZES, default="suite", help="suite (make bench) or tiny (plumbing)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ranker-bench"), help="data, runs and scratch")
    parser.add_argument("--results", type=Path, default=summary.RESULTS, help="where results and SUMMARY.md go")
    args = parser.parse_args(argv)
    paths = Paths(args.work.resolve(), args.results.resolve())
    paths.work.mkdir(parents=True, exist_ok=True)
    paths.results.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in BENCHES if b.name in args.only]
    missing = [n for n in NEEDS_QUALITY if n in args.only and "quality" not in args.only]
    for name in missing:
        if not (paths.quality_run("hiformer") / "results.json").exists():
            parser.error(f"{name} needs model_quality's runs under {paths.work / 'runs'}: add --only quality")
    build_data(paths, {d for b in chosen for d in NEEDS_DATA.get(b.name, ())}, args.size)
    started = time.time()
    for bench in chosen:
        cmd = bench.command(paths, args.size)
        seconds = _run(cmd, paths.work / f"{bench.name}.log")
        stamp(paths.results / f"{bench.stem}.json", cmd, args.size, seconds)
        print(f"[bench] {bench.name}: {seconds:.0f} s", flush=True)
    (paths.results / summary.SUMMARY).write_text(summary.render(paths.results))
    print(f"[bench] {len(chosen)} benchmark(s) in {time.time() - started:.0f} s; {paths.results / summary.SUMMARY}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
