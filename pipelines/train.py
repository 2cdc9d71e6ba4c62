"""The training step: processed features -> DistributedModelParallel training -> checkpoints -> exported model.

Run under ``torchrun`` (``ranker train --config C --nproc N`` launches it); every rank runs :func:`train`.

- Checked first, in the launching process (:func:`preflight`), so that a bad config never reaches the ranks.
- Model: built with its tables on ``meta``, sharded by the planner (``ranker.sharding``); the sparse optimiser
  (row-wise Adagrad by default) for every table whatever its sharding, Adam for the dense part, gradient
  clipping, warm-up + cosine learning-rate schedule, bf16 autocast on CUDA.
- Validation every ``eval_every`` steps (and at each epoch end): scores gathered to rank 0 only, exact AUC /
  logloss / NE there, broadcast so every rank takes the same early-stopping decision.
- Checkpoints (``torch.distributed.checkpoint``) at each validation, the newest ``keep_checkpoints`` and the best
  kept, each sealed with its files' checksums (``pipelines.checkpoints``); ``--resume`` continues from the newest
  intact one (a damaged one is named and passed over), skipping the batches of the interrupted epoch already
  trained, so a resumed run ends where an uninterrupted run with the same seed ends. After a rank dies,
  ``--max-restarts`` (torchrun elastic) restarts the ranks, which then resume by themselves.
- Export: the best checkpoint (by validation AUC of the first task) as an unsharded CPU state dict plus the
  feature map and config (``ranker.export``), then test metrics of the exported model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch._dynamo.utils import counters as dynamo_counters
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.elastic.multiprocessing.errors import record
from torch.optim.lr_scheduler import LambdaLR
from torchrec.optim.keyed import CombinedOptimizer

from common.config import load_yaml, parse_overrides, to_dict
from features.batch import RankBatch
from features.images import load_images
from features.loader import RankLoader, check_id_dropout
from features.processor import FEATURE_MAP, FeatureMap, processed_files
from pipelines import checkpoints, steps
from pipelines import metrics as M
from pipelines.distributed import broadcast_from_rank0, gather_to_rank0, init_distributed, mean_over_ranks
from ranker import export
from ranker.build import ModelConfig, build_ranker, cached_item_embeddings, check_model_config
from ranker.library_noise import silence_known_library_noise
from ranker.model import RankerTrain
from ranker.sharding import (
    CPU_SHARDING_TYPES,
    SHARDING_TYPES,
    Optimizers,
    build_optimizers,
    describe_plan,
    distribute,
)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
FAULT_ENV = "RANKER_FAULT"  # test hook, see _fault


@dataclass(frozen=True)
class OptimConfig:
    dense_lr: float = 1e-3
    sparse_lr: float = 0.05
    sparse_optimizer: Literal["rowwise_adagrad", "adagrad", "sgd"] = "rowwise_adagrad"  # fused, in the backward
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global norm of the dense gradients; 0 disables
    warmup_steps: int = 50
    schedule: Literal["cosine", "constant"] = "cosine"

    def __post_init__(self) -> None:
        for name in ("dense_lr", "sparse_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Paths are relative to the working directory.

    ``batch_size`` and ``eval_batch_size`` are **per rank**: with ``--nproc 2`` a step trains on 2 x batch_size
    rows (gradients are averaged over ranks, so the learning rates need no rescaling for the same per-rank batch).
    """

    features: str
    out_dir: str
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 512  # rows per step and rank
    eval_batch_size: int = 4096  # rows per validation batch and rank
    epochs: int = 2
    max_steps: int = 0  # 0: no cap beyond epochs
    eval_every: int = 0  # steps between validations/checkpoints; 0: once per epoch
    patience: int = 3  # validations without improvement before early stopping
    seed: int = 0
    sharding_types: tuple[str, ...] = ()  # restrict the planner (e.g. [column_wise]); empty: planner's choice
    log_every: int = 50
    prefetch: int = 4
    tracking: bool = True  # log to MLflow (rank 0)
    experiment: str = "hiformer-ranker"
    keep_checkpoints: int = 2  # newest complete checkpoints kept (the best one is always kept too)
    dist_timeout: int = 600  # seconds a collective may wait for a stuck or dead rank before the job fails
    # Single-valued sparse feature -> probability a training row's id is replaced by the out-of-vocabulary id
    # (DropoutNet-style), e.g. {item: 0.1}: the model learns to score items without an embedding of their own
    # (cold items) from their other tokens, such as the image (docs/vision_towers.md, "Cold items").
    id_dropout: dict[str, float] = field(default_factory=dict)
    # torch.compile the interaction and heads for training steps: Hiformer's dense step 1.5x faster on CPU
    # (benchmarks/results/train_throughput.md), after a one-time compile of about a minute per rank.
    compile: bool = False

    def __post_init__(self) -> None:
        positive = (
            "batch_size",
            "eval_batch_size",
            "epochs",
            "patience",
            "log_every",
            "keep_checkpoints",
            "dist_timeout",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every", "prefetch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        unknown = sorted(set(self.sharding_types) - set(SHARDING_TYPES))
        if unknown:
            raise ValueError(f"sharding_types: unknown {unknown}; TorchRec's are {list(SHARDING_TYPES)}")


@dataclass
class TrainerState:
    step: int = 0
    epoch: int = 0
    best_auc: float = -1.0
    best_step: int = -1
    bad_evals: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    return load_yaml(TrainConfig, path, overrides)


def preflight(cfg: TrainConfig, resume: bool = False, cuda: bool | None = None) -> None:
    """Checks in the launching process what every rank would otherwise fail on, each with one clear message.

    The feature folder (feature map, processed splits, and its data unchanged since the build), the model (built on
    the ``meta`` device: interaction and tower arguments, image data, pretrained tower file), sharding types for the
    device, with ``resume`` a complete, intact checkpoint to resume from, and with ``tracking`` that the MLflow store
    answers (bounding MLflow's retries for the job's processes). Raises ``ValueError`` / ``FileNotFoundError``.
    """
    features = Path(cfg.features)
    if not features.is_dir():
        raise FileNotFoundError(
            f"features: {features} does not exist; build it with `ranker features build SCHEMA.yaml --out {features}`"
        )
    fmap = FeatureMap.load(features)
    for split in ("train", "valid", "test"):
        processed_files(features, split)
    changed = steps.changed_inputs(((steps.read_manifest(features) or {}).get("results") or {}).get("inputs", {}))
    if changed:
        raise ValueError(
            f"features: {features} no longer match their data, changed since the build: {', '.join(changed)}; "
            "rebuild them with `ranker features build SCHEMA.yaml`"
        )
    check_model_config(fmap, cfg.model, features)
    check_id_dropout(fmap, cfg.id_dropout)
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda and not set(cfg.sharding_types) <= set(CPU_SHARDING_TYPES):
        wrong = sorted(set(cfg.sharding_types) - set(CPU_SHARDING_TYPES))
        raise ValueError(f"sharding_types: {wrong} need CUDA; on CPU TorchRec offers {list(CPU_SHARDING_TYPES)}")
    if resume:
        checkpoints.newest_intact(Path(cfg.out_dir) / CHECKPOINTS)
    if cfg.tracking:
        from pipelines import tracking

        tracking.check_store(cfg.experiment)  # last: the slowest check, and a dead server is no config error


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig, total: int, step: int = 0) -> LambdaLR:
    """Linear warm-up over ``optim.warmup_steps``, then cosine decay to 0.1 x (or constant) up to step ``total``.

    Sets the learning rate of step ``step`` (the one a resumed run trains next) from ``optim.dense_lr``; each
    ``.step()`` after an optimiser step moves to the next one.
    """
    warmup = optim.warmup_steps

    def factor(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if optim.schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    for group in optimizer.param_groups:
        group["initial_lr"] = optim.dense_lr  # the base rate; a loaded checkpoint holds the last step's rate in "lr"
    return LambdaLR(optimizer, factor, last_epoch=step - 1)


def predict(loader: RankLoader, logits_fn: Callable[[RankBatch], torch.Tensor]) -> dict[str, np.ndarray]:
    """Probabilities, labels, weights and groups over ``loader`` (padding rows included, with weight 0)."""
    probs, labels, weights, groups = [], [], [], []
    with torch.no_grad():
        for batch in loader:
            probs.append(torch.sigmoid(logits_fn(batch).float()).cpu())
            labels.append(batch.labels)
            weights.append(batch.weights)
            groups.append(batch.group_ids)
    return {k: torch.cat(v).numpy() for k, v in (("p", probs), ("y", labels), ("w", weights), ("g", groups))}


TRAINING_METRICS = ("auc", "gauc", "logloss", "ne", "calibration")


def task_metrics(pred: dict[str, np.ndarray], tasks: tuple[str, ...]) -> dict[str, float | None]:
    """Exact AUC, GAUC, logloss, NE and calibration per task over rows of positive weight (``p``, ``y``: rows x K)."""
    keep = pred["w"] > 0
    out: dict[str, float | None] = {}
    for k, task in enumerate(tasks):
        values = M.point_metrics(pred["p"][keep, k].astype(np.float64), pred["y"][keep, k], pred["g"][keep])
        out.update({f"{task}/{name}": values[name] for name in TRAINING_METRICS})
    return out


def validate(model: torch.nn.Module, loader: RankLoader, device: torch.device, tasks: tuple[str, ...]) -> dict:
    """Exact metrics over every rank's share: predictions gathered to rank 0 only, results broadcast to all."""
    model.eval()
    local = predict(loader, lambda batch: model(batch.to(device))[1][1])
    model.train()
    gathered = gather_to_rank0(local)
    result = None
    if gathered is not None:
        cat = {k: np.concatenate([g[k] for g in gathered]) for k in ("p", "y", "w", "g")}
        result = task_metrics(cat, tasks)
    return broadcast_from_rank0(result)


def _fault(where: str, step: int) -> None:
    """Test hook injecting a real fault: ``RANKER_FAULT=KIND:RANK:STEP[:MARKER]``.

    KIND ``kill`` (SIGKILL right after training step STEP), ``kill-saving`` (SIGKILL while saving the checkpoint
    of step STEP, its files written but not sealed), ``hang`` (sleep forever after step STEP) or ``pause`` (wait
    after step STEP until the file MARKER exists, while a test changes the world, e.g. stops the MLflow server) on
    rank RANK. For the other kinds, with MARKER the fault fires once: only while MARKER does not exist, which it
    then creates.
    """
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    kind, rank, at, *marker = spec.split(":", 3)
    fires = {"kill": "step", "hang": "step", "pause": "step", "kill-saving": "saving"}[kind] == where
    if not fires or int(rank) != dist.get_rank() or int(at) != step:
        return
    if kind == "pause":
        print(f"[train] {FAULT_ENV}: rank {rank} paused after step {step} until {marker[0]} exists", flush=True)
        while not Path(marker[0]).exists():
            time.sleep(0.1)
        return
    if marker:
        if Path(marker[0]).exists():
            return
        Path(marker[0]).touch()
    print(f"[train] {FAULT_ENV}: rank {rank} {kind} at step {step}", flush=True)
    if kind == "hang":
        while True:
            time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(
    root: Path, model: torch.nn.Module, optimizer: CombinedOptimizer, state: TrainerState, keep: int
) -> Path:
    """Saves step ``state.step``; then keeps only the newest ``keep`` complete checkpoints plus the best one.

    The folder is sealed (checksums, then the ``COMPLETE`` marker) only once every rank wrote its part, so a save
    cut short by a kill or a full disk leaves a folder that no resume takes. Raises ``OSError`` naming the folder
    when a rank cannot write.
    """
    path = root / f"step-{state.step:08d}"
    if dist.get_rank() == 0 and path.exists():
        shutil.rmtree(path)  # what an interrupted save of this step left, before a resume
    dist.barrier()
    try:
        dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=str(path))
        if dist.get_rank() == 0:
            (path / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
            _fault("saving", state.step)
            checkpoints.seal(path)
    except (Exception, CheckpointException) as err:  # DCP's (a BaseException) holds every rank's OSError
        previous = checkpoints.complete(root)
        kept = f"the previous one, {previous[-1]}, is intact" if previous else "there is no previous one"
        raise OSError(f"checkpoint {path}: could not be saved ({_root_cause(err)}); {kept}") from err
    if dist.get_rank() == 0:
        best = root / f"step-{state.best_step:08d}"
        for old in checkpoints.complete(root)[:-keep]:
            if old != best:
                shutil.rmtree(old)
    dist.barrier()
    return path


def _root_cause(err: BaseException) -> str:
    """The innermost cause's message (for DCP's wrapped per-rank failures, the rank's own ``OSError``)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    failures = getattr(err, "failures", None)  # CheckpointException: {rank: exception or traceback}
    if failures:
        rank, failure = sorted(failures.items())[0]
        return f"rank {rank}: {failure[0] if isinstance(failure, tuple) else failure}"
    return f"{type(err).__name__}: {err}"


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: CombinedOptimizer) -> TrainerState:
    """Restores model, optimiser and trainer state; a damaged checkpoint raises ``DamagedCheckpoint`` naming a file."""
    checkpoints.verify(path)
    optimizer.init_state()  # creates the dense optimizer's state tensors so that DCP can load into them
    state_dict = {"model": model.state_dict(), "optim": optimizer.state_dict()}
    dcp.load(state_dict, checkpoint_id=str(path))
    model.load_state_dict(state_dict["model"])
    optimizer.load_state_dict(state_dict["optim"])
    return TrainerState(**json.loads((path / STATE_FILE).read_text()))


MISSED = "mlflow_missed.jsonl"


class _Tracker:
    """MLflow logging from rank 0 only (``pipelines.tracking`` owns the mlflow import); it never stops training.

    The first failed call (the server went away, a full disk under the store) turns logging off for the rest of the
    run, so a dead server costs the training one bounded wait: from then on every metric record, and the artifacts,
    go to ``out_dir/mlflow_missed.jsonl`` instead, and :meth:`finish` says so in one line.
    """

    def __init__(self, cfg: TrainConfig, enabled: bool) -> None:
        self.run: Any = None
        self.enabled = enabled and cfg.tracking
        self.missed_path = Path(cfg.out_dir) / MISSED
        self.failure = ""
        self.missed = 0
        if not self.enabled:
            return
        self.missed_path.unlink(missing_ok=True)  # from an earlier attempt of this run
        from pipelines import tracking

        def start() -> None:
            self.run = tracking.start_run(cfg.experiment, Path(cfg.out_dir), run_name=Path(cfg.out_dir).name)
            tracking.log_params(to_dict(cfg))
            tracking.log_features(Path(cfg.features))

        self._call(start, {"kind": "params", "values": to_dict(cfg)}, step=0)

    def _call(self, log: Callable[[], None], record: dict[str, Any], step: int) -> None:
        """Runs ``log``; when MLflow failed, now or before, appends ``record`` to the missed file instead."""
        if not self.failure:
            try:
                log()
                return
            except Exception as err:  # any failure of the logging call, never of training: record and go on
                from pipelines import tracking

                self.failure = f"{tracking.failure_reason(err)} at step {step}"
                print(f"[train] MLflow logging failed ({self.failure}); training goes on, logging to "
                      f"{self.missed_path}", flush=True)  # fmt: skip
        self.missed += 1
        with self.missed_path.open("a") as f:
            f.write(json.dumps({"step": step, **record}, default=str) + "\n")

    def metrics(self, values: dict[str, float | None], step: int) -> None:
        if self.enabled:
            from pipelines import tracking

            numeric = tracking.numeric_metrics(values)
            self._call(lambda: tracking.log_metrics(values, step), {"kind": "metrics", "values": numeric}, step)

    def record(self) -> dict[str, str] | None:
        """Where the run is (:func:`pipelines.tracking.run_record`), if it was started."""
        if self.run is None:
            return None
        from pipelines import tracking

        return tracking.run_record(self.run)

    def log_model(self, export_dir: Path) -> str | None:
        """Logs the export as a pyfunc model of the run; its ``models:/m-...`` URI, or None when not logged.

        A failure here loses nothing: the export is on disk and ``ranker register RUN`` logs it later.
        """
        if self.run is None or self.failure:
            return None
        from pipelines import registry, tracking

        try:
            return str(tracking.log_model(export_dir, registry.example_rows(export_dir)).model_uri)
        except Exception as err:  # any tracking failure: the export is kept and `ranker register` logs it later
            print(f"[train] the model was not logged ({type(err).__name__}: {err}); the export is kept", flush=True)
            return None

    def abort(self, err: BaseException) -> None:
        """Ends an unfinished run as ``KILLED`` (Ctrl-C, SIGTERM) or ``FAILED`` (an error), so that the store does
        not show it ``RUNNING`` for ever; a process killed by SIGKILL cannot, and a dead server is not waited for."""
        if self.run is None or self.failure:
            return
        from pipelines import tracking

        status = "KILLED" if isinstance(err, KeyboardInterrupt | SystemExit) else "FAILED"
        with contextlib.suppress(Exception):  # the original error is what the user must see
            tracking.end_run(status)

    def finish(self, artifacts: list[Path], step: int) -> None:
        """Logs ``artifacts`` and ends the run."""
        if not self.enabled:
            return
        from pipelines import tracking

        for path in artifacts:
            self._call(lambda path=path: tracking.log_artifact(path), {"kind": "artifact", "path": str(path)}, step)
        self._call(tracking.end_run, {"kind": "end"}, step)
        if self.failure:
            print(f"[train] MLflow: {self.missed} record(s) not logged ({self.failure}); they are in "
                  f"{self.missed_path}", flush=True)  # fmt: skip


@dataclass
class _Run:
    """What the steps of one training run share; built by :func:`_setup`."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    fmap: FeatureMap
    item_embeddings: np.ndarray | None  # a frozen tower's catalogue embeddings, exported with the model
    dmp: torch.nn.Module  # DistributedModelParallel(RankerTrain)
    optimizers: Optimizers
    schedule: LambdaLR  # the dense learning rate per step
    train_loader: RankLoader
    valid_loader: RankLoader
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    state: TrainerState
    tracker: _Tracker

    @property
    def ckpt_root(self) -> Path:
        return Path(self.cfg.out_dir) / CHECKPOINTS


@dataclass
class _LossSums:
    """Training loss summed since the last log line and since the last validation (the history's window)."""

    log_sum: float = 0.0
    log_n: int = 0
    window_sum: float = 0.0
    window_n: int = 0

    def add(self, loss: float) -> None:
        self.log_sum, self.log_n = self.log_sum + loss, self.log_n + 1
        self.window_sum, self.window_n = self.window_sum + loss, self.window_n + 1

    def take_log(self) -> float:
        mean, self.log_sum, self.log_n = self.log_sum / self.log_n, 0.0, 0
        return mean

    def take_window(self) -> float:
        mean, self.window_sum, self.window_n = self.window_sum / max(self.window_n, 1), 0.0, 0
        return mean


def train(cfg: TrainConfig, resume: bool = False, stop_at_step: int = 0) -> dict[str, Any]:
    """Trains on every rank of the initialised default process group; returns the run's results on all ranks.

    ``stop_at_step`` (> 0) ends the run right after the checkpoint at that step, as an interruption would.
    """
    run = _setup(cfg, resume)
    try:
        return _train_loop(run, stop_at_step)
    except BaseException as err:
        run.tracker.abort(err)
        raise


def _train_loop(run: _Run, stop_at_step: int) -> dict[str, Any]:
    cfg = run.cfg
    state, losses, stopped_early, started = run.state, _LossSums(), False, time.time()
    while state.step < run.total_steps and not stopped_early:
        epoch = state.step // run.steps_per_epoch
        run.train_loader.set_epoch(epoch)
        skip = state.step - epoch * run.steps_per_epoch
        for i, batch in enumerate(run.train_loader):
            if i < skip:
                continue  # trained before the interruption: same data order, so skip rather than retrain
            losses.add(_train_step(run, batch))
            if state.step % cfg.log_every == 0:
                run.tracker.metrics({"train/loss": mean_over_ranks(losses.take_log())}, state.step)
            if state.step % run.eval_every == 0 or i == run.steps_per_epoch - 1 or state.step == run.total_steps:
                _validate_and_checkpoint(run, epoch, losses)
                if stop_at_step and state.step >= stop_at_step:
                    return {"interrupted_at": state.step}
                stopped_early = state.bad_evals >= cfg.patience and state.step < run.total_steps
            if stopped_early or state.step >= run.total_steps:
                break
    results = _results(run, stopped_early, time.time() - started)
    if run.rank == 0:
        _export_and_test(run, results)
    return broadcast_from_rank0(results)


def dense_optimizer(params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam for the dense part, fused: one kernel over every tensor instead of a loop of small ops per tensor
    (0.2 vs 0.8 ms per step for Hiformer's 31 dense tensors on one CPU thread; same update to float rounding)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


def _setup(cfg: TrainConfig, resume: bool) -> _Run:
    """Seeds everything, builds the sharded model, its optimisers and loaders; restores a checkpoint on ``resume``."""
    rank, world = dist.get_rank(), dist.get_world_size()
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")
    features = Path(cfg.features)
    seed_everything(cfg.seed)
    fmap = FeatureMap.load(features)
    vision = cfg.model.vision
    images = np.asarray(load_images(features)) if vision and not vision.frozen else None
    item_embeddings = None
    if vision and vision.frozen:
        # Rank 0 builds the table once (cached per tower version); the others then read it.
        if rank == 0:
            item_embeddings = cached_item_embeddings(vision, features, cfg.seed)
        dist.barrier()
        if rank != 0:
            item_embeddings = cached_item_embeddings(vision, features, cfg.seed)
    model = RankerTrain(
        build_ranker(fmap, cfg.model, images, sparse_device=torch.device("meta"), item_embeddings=item_embeddings)
    )
    dmp = distribute(model, device, cfg.optim.sparse_lr, cfg.sharding_types, cfg.batch_size, cfg.optim.sparse_optimizer)
    if cfg.compile:
        model.model.compile_dense()  # DMP sharded `model` in place: its Ranker is the one the steps run
    optimizers = build_optimizers(
        dmp,
        lambda params: dense_optimizer(params, cfg.optim.dense_lr, cfg.optim.weight_decay),
        cfg.optim.sparse_optimizer,
        cfg.optim.sparse_lr,
    )
    train_loader = RankLoader(
        processed_files(features, "train"), fmap, cfg.batch_size, rank, world, True, cfg.seed, "train", cfg.prefetch,
        id_dropout=cfg.id_dropout,
    )  # fmt: skip
    valid_loader = RankLoader(
        processed_files(features, "valid"), fmap, cfg.eval_batch_size, rank, world, mode="eval", prefetch=cfg.prefetch
    )
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch
    total_steps = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps

    state = TrainerState()
    if resume:
        # Rank 0 checks the checksums once and reports a damaged newer checkpoint; every rank loads its choice.
        start = broadcast_from_rank0(checkpoints.newest_intact(Path(cfg.out_dir) / CHECKPOINTS) if rank == 0 else None)
        state = load_checkpoint(start, dmp, optimizers.combined)
    tracker = _Tracker(cfg, enabled=rank == 0)
    if rank == 0:
        print(f"[train] {world} rank(s) on {device}; plan {describe_plan(dmp)}", flush=True)
        print(f"[train] {steps_per_epoch} steps/epoch, {total_steps} steps; resume from step {state.step}", flush=True)
    return _Run(
        cfg=cfg, rank=rank, world=world, device=device, fmap=fmap, item_embeddings=item_embeddings, dmp=dmp,
        optimizers=optimizers, schedule=lr_schedule(optimizers.dense, cfg.optim, total_steps, state.step),
        train_loader=train_loader, valid_loader=valid_loader, steps_per_epoch=steps_per_epoch,
        total_steps=total_steps, eval_every=cfg.eval_every or steps_per_epoch, state=state, tracker=tracker,
    )  # fmt: skip


def _train_step(run: _Run, batch: RankBatch) -> float:
    """One optimiser step on ``batch`` (this rank's share); returns its loss."""
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.device.type == "cuda"):
        loss, _ = run.dmp(batch.to(run.device))
    run.optimizers.combined.zero_grad()
    loss.backward()
    if run.cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.optimizers.dense_params, run.cfg.optim.grad_clip)
    run.optimizers.combined.step()
    run.schedule.step()
    run.state.step += 1
    _fault("step", run.state.step)
    return float(loss.detach())


def _validate_and_checkpoint(run: _Run, epoch: int, losses: _LossSums) -> None:
    """Validates, tracks the best step and early stopping, adds a history record, saves a checkpoint, logs."""
    state, tasks = run.state, run.fmap.labels
    valid = validate(run.dmp, run.valid_loader, run.device, tasks)
    first_auc = valid[f"{tasks[0]}/auc"] or 0.0
    if first_auc > state.best_auc:
        state.best_auc, state.best_step, state.bad_evals = first_auc, state.step, 0
    else:
        state.bad_evals += 1
    state.epoch = epoch
    record = {"step": state.step, "epoch": epoch, "train/loss": mean_over_ranks(losses.take_window())}
    record.update({f"valid/{k}": v for k, v in valid.items()})
    state.history.append(record)
    save_checkpoint(run.ckpt_root, run.dmp, run.optimizers.combined, state, run.cfg.keep_checkpoints)
    run.tracker.metrics(record, state.step)  # after the save: logging can never cost a checkpoint
    if run.rank == 0:
        print(f"[train] step {state.step}: " + json.dumps(record), flush=True)


def _results(run: _Run, stopped_early: bool, seconds: float) -> dict[str, Any]:
    return {
        "steps": run.state.step,
        "best_step": run.state.best_step,
        "best_valid_auc": run.state.best_auc,
        "stopped_early": stopped_early,
        "train_seconds": round(seconds, 2),
        "rows_skipped_per_epoch": run.train_loader.rows_skipped,
        "sharding_plan": describe_plan(run.dmp),
        "world_size": run.world,
        "history": run.state.history,
        # Graphs torch.compile built on this rank (`compile: true`): 1 per batch shape and mode, more means recompiles.
        **({"compiled_graphs": int(dynamo_counters["stats"]["unique_graphs"])} if run.cfg.compile else {}),
    }


def _export_and_test(run: _Run, results: dict[str, Any]) -> None:
    """Rank 0: exports the best checkpoint, scores the test split with the export, logs it, writes results.json."""
    cfg, fmap, state, tracker = run.cfg, run.fmap, run.state, run.tracker
    out_dir, features = Path(cfg.out_dir), Path(cfg.features)
    best = run.ckpt_root / f"step-{state.best_step:08d}"
    checkpoints.verify(best)
    export_dir = export.export_checkpoint(
        best, fmap, features, cfg.model, to_dict(cfg), out_dir / "export", run.item_embeddings
    )
    model_cpu = export.load_exported(export_dir)
    test_loader = RankLoader(processed_files(features, "test"), fmap, cfg.eval_batch_size, mode="eval")
    scored = predict(test_loader, model_cpu)
    results["test"] = task_metrics(scored, fmap.labels)
    results["export_dir"] = str(export_dir)
    results["model_uri"] = tracker.log_model(export_dir)
    tracker.metrics({f"test/{k}": v for k, v in results["test"].items()}, state.step)
    results["mlflow"] = tracker.record()
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    # The logged model holds the export; a plain copy only when it could not be logged, so it is stored once.
    unlogged = [] if results["model_uri"] else [export_dir]
    tracker.finish([out_dir / "results.json", export_dir / FEATURE_MAP, *unlogged], state.step)
    print(f"[train] test metrics of the exported model: {json.dumps(results['test'])}", flush=True)


@record  # a rank's exception goes to torchrun's error file, which the launcher's failure line quotes
def main(argv: list[str] | None = None) -> int:
    """Entry point of one rank under torchrun."""
    parser = argparse.ArgumentParser(description="one training rank (launch with `ranker train`)")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--stop-at-step",
        type=int,
        default=int(os.environ.get("RANKER_STOP_AT_STEP", 0)),
        help="end right after the checkpoint at this step, as an interruption would (tests of --resume)",
    )
    args = parser.parse_args(argv)
    silence_known_library_noise()
    cfg = load_config(args.config, parse_overrides(args.set))
    default_threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", default_threads)))
    # torchrun --max-restarts starts the ranks again after one died: they continue from the last checkpoint.
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0
    resume = args.resume or (restarted and bool(checkpoints.complete(Path(cfg.out_dir) / CHECKPOINTS)))
    init_distributed(cfg.dist_timeout)
    # A scheduler's preemption or torchrun stopping the other ranks sends SIGTERM: end as after Ctrl-C (the MLflow
    # run is marked KILLED, not left RUNNING) instead of dying without any cleanup.
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    try:
        train(cfg, resume=resume, stop_at_step=args.stop_at_step)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def _exit_without_finalizers(code: int) -> None:
    """Ends the rank once every output is written, skipping interpreter finalisation.

    Seen once in ~30 runs: a rank that had finished and written everything aborted at interpreter shutdown
    ("terminate called without an active exception", SIGABRT), which torchrun reports as a failed job. C++ threads
    of the runtime being torn down during finalisation do that; nothing is left to clean up at this point.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_without_finalizers(main())
