"""Training throughput (issue 3): samples/s per interaction at 1 and 2 ranks, time split per model part, peak RSS.

Data: fashion-clicks features (``configs/train/bench-fashion.yaml``: 12 sparse features, no dense, no image tower,
embedding dim 16, batch 512 per rank). The training step is the one of ``pipelines/train.py``: DistributedModelParallel
with planner-chosen sharding, fused row-wise Adagrad for the tables (updated inside the backward), Adam for the
dense part, gradient clipping; no validation, checkpoints or export.

- Throughput: launched with torchrun at 1 and 2 ranks; after ``--warmup`` steps, ``--steps`` steps are timed end to
  end (batches from ``RankLoader`` with its prefetch thread, as in training). samples/s = ranks x batch x steps /
  seconds (the slowest rank's seconds). Peak RSS = ``ru_maxrss`` of each rank (model build and planning included).
- Split: one process (DMP at world size 1) holding every model, timed in turn in chunks of 10 steps (so a drift in
  the machine's speed hits every model alike: the Hiformer / DCN-v2 ratio of this part is the least noisy one),
  ``RankLoader`` without prefetch so that loading is paid in the step;
  wall time of ``next(loader)``, of the forward of ``sparse_arch`` (lookup + input/output distribution),
  ``dense_arch``, ``interaction`` and ``heads`` (forward hooks), the rest of the forward (token concat, loss, DMP),
  and of backward + clipping + optimiser step (fused table updates happen in the backward).
- Dense part (issue 13's speed goal): forward + backward of the interaction and heads (``Ranker.score_tokens``) on
  the real ``B x T x D`` tokens of a training batch, timed alone, with its floating-point operations counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (matrix products; element-wise work is not counted), against the
  machine's matmul peak measured in the same process (the best of 1,024 x 1,024 fp32 products at the same thread
  count); and the same step through ``torch.compile`` (its median and its one-time compile time), a speed lever.

Usage::

    python benchmarks/train_throughput.py --features /tmp/qb/features/fashion-clicks
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.summary import speed_ratios  # noqa: E402
from features.batch import RankBatch  # noqa: E402
from features.loader import RankLoader  # noqa: E402
from features.processor import FeatureMap, processed_files  # noqa: E402
from pipelines.distributed import init_distributed  # noqa: E402
from pipelines.launch import LOOPBACK, local_env  # noqa: E402
from pipelines.train import TrainConfig, dense_optimizer, load_config, seed_everything  # noqa: E402
from ranker.library_noise import silence_known_library_noise  # noqa: E402

MODELS = ("hiformer", "transformer", "hetero_attention", "dcnv2", "dlrm")
CONFIG = ROOT / "configs" / "train" / "bench-fashion.yaml"
PARTS = ("sparse_arch", "dense_arch", "interaction", "heads")
PEAK_SIZE = 1024  # n of the n x n x n matmul that measures the peak
DENSE_REPS = 30
SPLIT_THREADS = 1  # on the shared 2-core box two intra-op threads are several times slower than one
SPLIT_CHUNK = 1  # timed steps per model in turn in the split process: the VM's speed drifts within seconds
SPLIT_COMPILED = ("hiformer", "dcnv2")  # also timed with compile: true in the split (the speed goal's best settings)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build(
    cfg: TrainConfig, fmap: FeatureMap, compile_dense: bool = False
) -> tuple[nn.Module, Any, list[torch.Tensor], dict[str, str]]:
    """The DMP-wrapped model, its combined optimiser, the clipped dense parameters and the sharding plan; with
    ``compile_dense`` the training steps run the interaction and heads through ``torch.compile`` (``compile: true``)."""
    from ranker.build import build_ranker
    from ranker.model import RankerTrain
    from ranker.sharding import build_optimizers, describe_plan, distribute

    model = RankerTrain(build_ranker(fmap, cfg.model, sparse_device=torch.device("meta")))
    dmp = distribute(model, torch.device("cpu"), cfg.optim.sparse_lr, (), cfg.batch_size, cfg.optim.sparse_optimizer)
    if compile_dense:
        model.model.compile_dense()
    optimizers = build_optimizers(
        dmp,
        lambda params: dense_optimizer(params, cfg.optim.dense_lr),
        cfg.optim.sparse_optimizer,
        cfg.optim.sparse_lr,
    )
    return dmp, optimizers.combined, optimizers.dense_params, describe_plan(dmp)


def train_step(dmp: nn.Module, optimizer: Any, params: list[torch.Tensor], batch: RankBatch, clip: float) -> None:
    loss, _ = dmp(batch)
    optimizer.zero_grad()
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def batches(loader: RankLoader) -> Iterator[RankBatch]:
    """Endless batches, a new shuffled epoch whenever one ends."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def worker(args: argparse.Namespace) -> None:
    """One rank of a throughput measurement (under torchrun); rank 0 writes the JSON result."""
    silence_known_library_noise()  # as every training rank does
    torch.set_num_threads(args.threads[0])
    init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = load_config(CONFIG, {"features": str(args.features), "out_dir": "-", "model.interaction": args.model})
    seed_everything(cfg.seed)
    fmap = FeatureMap.load(args.features)
    dmp, optimizer, params, plan = build(cfg, fmap, args.compile)
    loader = RankLoader(
        processed_files(args.features, "train"),
        fmap,
        cfg.batch_size,
        rank,
        world,
        True,
        cfg.seed,
        "train",
        cfg.prefetch,
    )
    stream = batches(loader)
    for _ in range(args.warmup):
        train_step(dmp, optimizer, params, next(stream), cfg.optim.grad_clip)
    dist.barrier()
    started = time.perf_counter()
    rows = 0
    for _ in range(args.steps):
        batch = next(stream)
        rows += batch.batch_size
        train_step(dmp, optimizer, params, batch, cfg.optim.grad_clip)
    seconds = time.perf_counter() - started
    stats: list[dict[str, float] | None] = [None] * world
    dist.all_gather_object(stats, {"seconds": seconds, "rows": rows, "peak_rss_mib": peak_rss_mib()})
    if rank == 0:
        done = [s for s in stats if s is not None]
        slowest = max(s["seconds"] for s in done)
        total_rows = sum(s["rows"] for s in done)
        result = {
            "model": args.model,
            "ranks": world,
            "compiled": args.compile,
            "batch_size_per_rank": cfg.batch_size,
            "threads_per_rank": torch.get_num_threads(),
            "steps": args.steps,
            "warmup": args.warmup,
            "seconds": slowest,
            "samples_per_s": total_rows / slowest,
            "ms_per_step": 1e3 * slowest / args.steps,
            "peak_rss_mib_per_rank": [round(s["peak_rss_mib"], 1) for s in done],
            "sharding_plan": plan,
        }
        Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    dist.destroy_process_group()


def throughput(model: str, ranks: int, threads: int, compiled: bool, args: argparse.Namespace) -> dict[str, Any]:
    """Launches ``worker`` under torchrun (as ``ranker train`` does) and returns its result; ``compiled``: the
    dense part through ``torch.compile`` (compiled during the warm-up steps, so not timed)."""
    result = Path(f"/tmp/train_throughput-{model}-{ranks}x{threads}{'-compiled' if compiled else ''}.json")
    result.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as rdzv:
        # The launcher's one-node rendezvous (a file, ranks on 127.0.0.1): no socket listens beyond loopback.
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", "--nnodes=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint={Path(rdzv) / 'rdzv'}", "--rdzv-conf=store_type=file",
               f"--local-addr={LOOPBACK}", __file__, "--worker", "--model", model,
               "--features", str(args.features), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--result", str(result), "--threads", str(threads), *(["--compile"] if compiled else [])]  # fmt: skip
        env = local_env({**os.environ, "OMP_NUM_THREADS": str(threads)})
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(result.read_text())


class PartTimer:
    """Forward wall time of named submodules through pre/post forward hooks (CPU: synchronous execution)."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._start: dict[str, float] = {}
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        for name, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(self._pre(name)))
            self.handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name: str) -> Any:
        def hook(*_: Any) -> None:
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name: str) -> Any:
        def hook(*_: Any) -> None:
            self.seconds[name] += time.perf_counter() - self._start[name]

        return hook


def spans(call: Any, reps: int) -> list[float]:
    """Seconds of ``reps`` calls, after one warm-up call (allocations, one-time dispatch)."""
    call()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def matmul_peak_gflops(n: int = PEAK_SIZE, reps: int = 10) -> float:
    """The measured fp32 matmul rate at the current thread count: the best of ``reps`` ``n x n`` products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / min(spans(lambda: torch.mm(a, b), reps)) / 1e9


def dense_part(ranker: nn.Module, tokens: torch.Tensor, reps: int = DENSE_REPS) -> dict[str, float]:
    """Forward + backward of interaction and heads on ``B x T x D`` ``tokens``: median ms, FLOPs, GFLOP/s; and the
    same step through ``torch.compile`` (a lever of issue 13: its median ms and its one-time compile seconds)."""
    tokens = tokens.detach().requires_grad_()

    def make_step(score: Any) -> Any:
        def step() -> None:
            ranker.zero_grad(set_to_none=True)
            logits = score(tokens)  # (B, K)
            F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)).backward()

        return step

    eager = make_step(ranker.score_tokens)
    with FlopCounterMode(display=False) as counter:
        eager()
    flops = counter.get_total_flops()
    peak = matmul_peak_gflops()  # next to the timing: this VM's speed drifts, a peak from another moment can be lower
    seconds = statistics.median(spans(eager, reps))
    compiled = make_step(torch.compile(ranker.score_tokens, dynamic=False))
    t0 = time.perf_counter()
    compiled()  # the compilation
    compile_s = time.perf_counter() - t0
    return {
        "ms": round(1e3 * seconds, 3),
        "matmul_peak_gflops": round(peak, 2),
        "mflop": round(flops / 1e6, 2),
        "gflops_per_s": round(flops / seconds / 1e9, 3),
        "compiled_ms": round(1e3 * statistics.median(spans(compiled, reps)), 3),
        "compile_s": round(compile_s, 1),
    }


class Split:
    """One model's training state in the split process, with its per-part timers and running totals; ``compiled``:
    the dense part through ``torch.compile`` (``compile: true``), timed as a whole (a part hook would break the
    compiled graph), its compilation inside the warm-up."""

    def __init__(self, model: str, args: argparse.Namespace, compiled: bool = False) -> None:
        self.model, self.compiled = model, compiled
        self.cfg = load_config(CONFIG, {"features": str(args.features), "out_dir": "-", "model.interaction": model})
        seed_everything(self.cfg.seed)
        fmap = FeatureMap.load(args.features)
        self.dmp, self.optimizer, self.params, _ = build(self.cfg, fmap, compiled)
        self.ranker = ranker = self.dmp.module.model
        parts = () if compiled else PARTS
        self.timer = PartTimer({name: getattr(ranker, name) for name in parts if getattr(ranker, name) is not None})
        files = processed_files(args.features, "train")
        loader = RankLoader(files, fmap, self.cfg.batch_size, 0, 1, True, self.cfg.seed, "train", 0)
        self.stream = batches(loader)
        self.seen: list[torch.Tensor] = []  # the interaction's input tokens of the last step

        def keep_tokens(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            self.seen[:] = [inputs[0].detach()]

        if not compiled:
            self.timer.handles.append(ranker.interaction.register_forward_pre_hook(keep_tokens))
        self.totals: dict[str, float] = defaultdict(float)
        self.steps: list[float] = []

    def reset(self) -> None:
        """Forgets the times so far (after the warm-up)."""
        self.timer.seconds.clear()
        self.totals.clear()
        self.steps.clear()

    def run(self, steps: int) -> None:
        """``steps`` training steps, their times added to the totals."""
        for _ in range(steps):
            t0 = time.perf_counter()
            batch = next(self.stream)
            t1 = time.perf_counter()
            loss, _ = self.dmp(batch)
            t2 = time.perf_counter()
            self.optimizer.zero_grad()
            loss.backward()
            if self.cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
            self.optimizer.step()
            t3 = time.perf_counter()
            self.totals["data_loading"] += t1 - t0
            self.totals["forward"] += t2 - t1
            self.totals["backward_optimizer"] += t3 - t2
            self.steps.append(t3 - t0)

    def result(self) -> dict[str, Any]:
        parts = {name: self.timer.seconds.get(name, 0.0) for name in PARTS}
        ms = {
            "data_loading": self.totals["data_loading"],
            "embedding_lookup_comm": parts["sparse_arch"],
            "dense_arch": parts["dense_arch"],
            "interaction": parts["interaction"],
            "heads": parts["heads"],
            "forward_other": self.totals["forward"] - sum(parts.values()),
            "backward_optimizer": self.totals["backward_optimizer"],
        }
        if self.compiled:  # the forward was timed as a whole
            ms = {k: ms[k] for k in ("data_loading", "forward_other", "backward_optimizer")}
        total, steps = sum(ms.values()), len(self.steps)
        for handle in self.timer.handles:  # the dense part is timed bare: a hook would also break torch.compile's graph
            handle.remove()
        return {
            "model": self.model,
            "compiled": self.compiled,
            "threads": torch.get_num_threads(),
            "ms_per_step": {k: round(1e3 * v / steps, 3) for k, v in ms.items()},
            "share": {k: round(v / total, 4) for k, v in ms.items()},
            "median_step_ms": round(1e3 * statistics.median(self.steps), 3),
            "samples_per_s": round(self.cfg.batch_size * steps / total, 1),
            **({} if self.compiled else {"dense_part": dense_part(self.ranker, self.seen[0])}),
        }


def split_all(args: argparse.Namespace) -> None:
    """All models' splits in one process (worker mode: a single-rank process group for DMP), eager and for
    ``SPLIT_COMPILED`` also compiled, timed in interleaved chunks of ``SPLIT_CHUNK`` steps so that a machine whose
    speed drifts (a shared VM) slows every model alike."""
    silence_known_library_noise()
    torch.set_num_threads(SPLIT_THREADS)
    # An in-process store: a single-rank group needs no rendezvous, and so no listening socket.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    splits = [Split(model, args) for model in MODELS] + [Split(model, args, compiled=True) for model in SPLIT_COMPILED]
    for split in splits:
        split.run(args.warmup)
        split.reset()
    for start in range(0, args.steps, SPLIT_CHUNK):
        for split in splits:
            split.run(min(SPLIT_CHUNK, args.steps - start))
    out = [split.result() for split in splits]
    # The highest of the peaks measured (one next to each dense-part timing, one here): a lower bound of the machine's.
    peak = max(
        [round(matmul_peak_gflops(), 2)] + [s["dense_part"]["matmul_peak_gflops"] for s in out if "dense_part" in s]
    )
    result = {"splits": out, "peak_rss_mib": round(peak_rss_mib(), 1), "matmul_peak_gflops": peak}
    Path(args.result).write_text(json.dumps(result, indent=2))
    dist.destroy_process_group()


def write_markdown(report: dict[str, Any], path: Path) -> None:
    m = report["machine"]
    lines = [
        "# Training throughput",
        "",
        "Produced by `benchmarks/train_throughput.py` (raw numbers in `train_throughput.json`).",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores (shared with other jobs: timings are noisy), torch {m['torch']}, "
        "CPU only (gloo).",
        f"Data: fashion-clicks features, `{CONFIG.relative_to(ROOT)}` (12 sparse tokens, no dense, no images, D = 16, "
        f"batch {report['batch_size_per_rank']} per rank); each interaction at its registered defaults.",
        "",
        f"## Throughput ({report['steps']} timed steps after {report['warmup']} warm-up steps)",
        "",
        "| model | ranks | threads/rank | `compile: true` | samples/s | ms/step | peak RSS per rank (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["throughput"]:
        rss = ", ".join(f"{v:.0f}" for v in r["peak_rss_mib_per_rank"])
        lines.append(
            f"| {r['model']} | {r['ranks']} | {r['threads_per_rank']} | {'yes' if r.get('compiled') else 'no'} | "
            f"{r['samples_per_s']:.0f} | {r['ms_per_step']:.1f} | {rss} |"
        )
    lines += [
        "",
        "samples/s = ranks x batch per rank x steps / wall seconds of the slowest rank.",
        "",
        f"## Time split of one training step, single process ({report['threads']} threads, no prefetch), ms/step",
        "",
        "| model | data loading | embedding lookup + comm | dense arch | interaction | heads | rest of forward "
        "| backward + optimizer | total | samples/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("data_loading", "embedding_lookup_comm", "dense_arch", "interaction", "heads", "forward_other",
            "backward_optimizer")  # fmt: skip
    for s in report["splits"]:
        cells = " | ".join(
            f"{s['ms_per_step'][k]:.1f} ({100 * s['share'][k]:.0f}%)" if k in s["ms_per_step"] else "–" for k in keys
        )
        label = f"{s['model']}{' (compile: true)' if s.get('compiled') else ''}"
        lines.append(f"| {label} | {cells} | {sum(s['ms_per_step'].values()):.1f} | {s['samples_per_s']:.0f} |")
    lines += [
        "",
        f"Peak RSS of the split process (all models held at once): {report['split_peak_rss_mib']:.0f} MiB. "
        "Compiled rows: the forward is timed as a whole ('rest of forward'), a part hook would break the graph.",
        "Embedding lookup includes TorchRec's input/output distribution (trivial at one rank); the fused row-wise "
        "Adagrad table update runs inside the backward. The interaction's backward is inside "
        "'backward + optimizer'.",
        "",
        *dense_part_lines(report),
        "",
        "## Notes",
        "",
        *[f"- {note}" for note in report["notes"]],
        "",
        "## Command",
        "",
        "```",
        report["command"],
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


def dense_part_lines(report: dict[str, Any]) -> list[str]:
    peak = report.get("matmul_peak_gflops")
    if not peak or "dense_part" not in report["splits"][0]:
        return []
    lines = [
        f"## Dense part: interaction + heads, forward + backward ({report['threads']} thread, batch "
        f"{report['batch_size_per_rank']})",
        "",
        f"Matmul peak measured in the same process: {peak:.1f} GFLOP/s ({PEAK_SIZE} x {PEAK_SIZE} fp32, best of 10, "
        "the highest of the measurements taken next to each model's timing).",
        "",
        "| model | ms | MFLOP | GFLOP/s | % of matmul peak | `torch.compile`d ms (speed-up) | compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in (s for s in report["splits"] if "dense_part" in s):
        d = s["dense_part"]
        compiled = f"{d['compiled_ms']:.2f} ({d['ms'] / d['compiled_ms']:.2f}x) | {d['compile_s']:.0f}"
        lines.append(
            f"| {s['model']} | {d['ms']:.2f} | {d['mflop']:.1f} | {d['gflops_per_s']:.2f} | "
            f"{100 * d['gflops_per_s'] / peak:.1f}% | {compiled} |"
        )
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in speed_ratios(report).items())
    lines += ["", f"Hiformer / DCN-v2 training samples/s (goal: at least 0.8x): {ratios}."]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=Path("/tmp/qb/features/fashion-clicks"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[0],
        help="intra-op threads per rank to measure; 0: as `ranker train` (cores // ranks)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    parser.add_argument("--compile", action="store_true", help="also measure each setting with compile: true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--split-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="hiformer", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.split_worker:
        split_all(args)
        return 0

    sys.argv[0] = str(Path(sys.argv[0]).resolve().relative_to(ROOT))
    from benchmarks.model_quality import machine

    runs = []
    for model in MODELS:
        for ranks in args.ranks:
            for threads in sorted({t or max(1, (os.cpu_count() or 1) // ranks) for t in args.threads}):
                for compiled in (False, True) if args.compile else (False,):
                    runs.append(throughput(model, ranks, threads, compiled, args))
                    label = f"{model} x{ranks} ({threads} threads{', compiled' if compiled else ''})"
                    print(f"[throughput] {label}: {runs[-1]['samples_per_s']:.0f} samples/s")
    split_file = Path("/tmp/train_throughput-split.json")
    split_cmd = [sys.executable, __file__, "--split-worker", "--features", str(args.features), "--steps",
                 str(args.steps), "--warmup", str(args.warmup), "--result", str(split_file)]  # fmt: skip
    with tempfile.TemporaryDirectory() as inductor_cache:  # an empty cache: the compile time is a cold start's
        env = {**os.environ, "OMP_NUM_THREADS": str(SPLIT_THREADS), "TORCHINDUCTOR_CACHE_DIR": inductor_cache}
        subprocess.run(split_cmd, cwd=ROOT, env=env, check=True)
    split_result = json.loads(split_file.read_text())
    cfg = load_config(CONFIG, {"features": str(args.features), "out_dir": "-"})
    report = {
        "machine": machine(),
        "command": "python " + " ".join(sys.argv),
        "batch_size_per_rank": cfg.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": SPLIT_THREADS,
        "throughput": runs,
        "splits": split_result["splits"],
        "split_peak_rss_mib": split_result["peak_rss_mib"],
        "matmul_peak_gflops": split_result["matmul_peak_gflops"],
        "notes": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
