"""Hyper-parameter sweeps: a grid or seeded random search over training config keys (``ranker sweep SWEEP.yaml``).

A sweep is a YAML file (:class:`SweepConfig`, unknown keys rejected): a base training config, a search space of
dotted config keys (the keys ``ranker train --set`` takes, the interactions' own included), the training seeds run
for each configuration, and the validation metric to pick on.

- Checked first, in this process, before any run starts: every value of the space on its own, then every trial's
  full config, with ``ranker train``'s own checks (the config loader and ``pipelines.train.preflight``), so that a
  bad key or value is one error naming it.
- A trial is one configuration; its id is a hash of its overrides. Each of its seeds is one ``ranker train`` run
  (``pipelines.launch``) in ``OUT/runs/ID-sSEED/``, whose resolved config is saved there as ``config.yaml``.
- Resumable: a finished run gets a ``manifest.json`` (``pipelines.steps``) fingerprinting its resolved config and
  the features' build, and a re-run of the sweep skips it. A crashed or interrupted run is trained again from
  scratch, or with ``resume`` continued from its newest intact checkpoint.
- MLflow: one parent run for the sweep; every training run is its child (``mlflow.parentRunId``), in the store
  ``ranker train`` uses.
- The pick reads validation metrics only: of each run, the exported model's (its best checkpoint's) validation
  metrics from ``results.json``; configurations rank by the mean over seeds. Outputs in ``OUT``: ``summary.md``,
  ``summary.html``, ``sweep.json`` and ``best.yaml``, a train config of the best configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from common.config import load_yaml, to_dict
from features.processor import FeatureMap
from pipelines import checkpoints, steps
from pipelines.launch import exclusive, launch_training
from pipelines.report import _e, _num, _page
from pipelines.train import CHECKPOINTS, TRAINING_METRICS, TrainConfig, load_config, preflight

RUNS = "runs"
RUN_CONFIG = "config.yaml"
RESULTS = "results.json"
BEST = "best.yaml"
MLFLOW_STATE = "mlflow_parent.json"
MAX_DRAWS_PER_TRIAL = 100  # random search: draws tried per distinct configuration before giving up
# Keys the sweep sets itself, or that must be the same for every run.
RESERVED = {
    "out_dir": "every run's out_dir is set by the sweep (OUT/runs/ID-sSEED)",
    "seed": "training seeds go under `seeds:`",
    "experiment": "the sweep's runs share one MLflow experiment: set it in the base config or under `fixed:`",
    "tracking": "set it in the base config or under `fixed:`",
}
HIGHER_IS_BETTER = {"auc": True, "gauc": True, "logloss": False, "ne": False}


@dataclass(frozen=True)
class Range:
    """A random-search range: uniform in [low, high], log-uniform with ``log``, integers with ``int``."""

    low: float
    high: float
    log: bool = False
    int: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: low must be > 0, got {self.low}")
        if self.int and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"int: low and high must be whole numbers, got {self.low} and {self.high}")

    def ends(self) -> list[Any]:
        """The two ends, as the config would receive them."""
        return [int(self.low), int(self.high)] if self.int else [self.low, self.high]


@dataclass(frozen=True)
class SweepConfig:
    """A sweep. Paths are relative to the working directory, as in a train config.

    ``space`` maps dotted train config keys (``optim.dense_lr``, ``model.interaction_kwargs.hiformer.num_layers``)
    to a list of values (grid, or a uniform choice in a random search) or a :class:`Range` (random search only).
    ``fixed`` maps dotted keys to one value applied to every run (before the space's). ``metric`` is a validation
    metric (``auc``, ``gauc``, ``logloss``, ``ne``, ``calibration``) of the first task, or ``TASK/METRIC``.
    """

    base: str  # a train config YAML
    out_dir: str
    space: dict[str, list[Any] | Range] = field(default_factory=dict)
    search: Literal["grid", "random"] = "grid"
    trials: int = 0  # random search: distinct configurations drawn (a grid runs all of its combinations)
    seed: int = 0  # of the random search
    seeds: tuple[int, ...] = (0,)  # training seeds run for every configuration
    fixed: dict[str, Any] = field(default_factory=dict)
    metric: str = "auc"
    mode: Literal["max", "min"] | None = None  # None: max for auc/gauc, min for logloss/ne
    nproc: int = 1  # processes per training run

    def __post_init__(self) -> None:
        for key, domain in self.space.items():
            if key.split(".")[0] in RESERVED:
                raise ValueError(f"space: {key!r} cannot be searched: {RESERVED[key.split('.')[0]]}")
            if key in self.fixed:
                raise ValueError(f"space: {key!r} is also under fixed:; give it in one place")
            if isinstance(domain, Range) and self.search == "grid":
                raise ValueError(f"space.{key}: a range needs `search: random`; a grid takes a list of values")
            if isinstance(domain, list):
                if not domain:
                    raise ValueError(f"space.{key}: empty list of values")
                if len({_canonical(v) for v in domain}) < len(domain):
                    raise ValueError(f"space.{key}: repeated value in {domain}")
        for key in self.fixed:
            if key.split(".")[0] in ("out_dir", "seed"):
                raise ValueError(f"fixed: {key!r} cannot be fixed: {RESERVED[key.split('.')[0]]}")
        if self.search == "random":
            if self.trials < 1:
                raise ValueError(f"trials must be >= 1 for search: random, got {self.trials}")
            if all(isinstance(d, list) for d in self.space.values()):
                size = math.prod(len(d) for d in self.space.values())  # type: ignore[arg-type]
                if self.trials > size:
                    raise ValueError(f"trials: {self.trials} exceeds the {size} distinct configurations of the space")
        elif self.trials:
            raise ValueError("trials: only for search: random (a grid runs every combination)")
        if not self.seeds or len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"seeds: a non-empty list of distinct training seeds, got {list(self.seeds)}")
        if self.nproc < 1:
            raise ValueError(f"nproc must be >= 1, got {self.nproc}")
        task, name = self.metric_parts
        if task is not None and task in ("test", "train"):
            raise ValueError(f"metric: {self.metric!r}: the pick uses validation metrics only (e.g. auc, like/auc)")
        if name not in TRAINING_METRICS:
            raise ValueError(f"metric: {name!r} is not a validation metric; choose from {list(TRAINING_METRICS)}")
        if self.mode is None and name not in HIGHER_IS_BETTER:
            raise ValueError(f"metric: {name!r} needs `mode: max` or `mode: min`")

    @property
    def metric_parts(self) -> tuple[str | None, str]:
        """(task or None for the first task, metric name), from ``metric``, ``valid/`` prefix allowed."""
        parts = self.metric.removeprefix("valid/").split("/")
        return (None, parts[0]) if len(parts) == 1 else ("/".join(parts[:-1]), parts[-1])

    @property
    def maximise(self) -> bool:
        return self.mode == "max" if self.mode else HIGHER_IS_BETTER[self.metric_parts[1]]


@dataclass(frozen=True)
class Trial:
    """One configuration: ``overrides`` maps the space's dotted keys to this trial's values."""

    id: str
    overrides: dict[str, Any]

    def describe(self) -> str:
        return " ".join(f"{k}={_canonical(v)}" for k, v in self.overrides.items()) or "(the base config)"


@dataclass(frozen=True)
class Run:
    """One training run: a trial at one seed, with its resolved train config (``cfg.out_dir`` is the run's)."""

    trial: Trial
    seed: int
    cfg: TrainConfig

    @property
    def dir(self) -> Path:
        return Path(self.cfg.out_dir)

    @property
    def name(self) -> str:
        return self.dir.name


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    return load_yaml(SweepConfig, path, overrides)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def trial_id(overrides: dict[str, Any]) -> str:
    """A stable id of a configuration: a hash of its overrides, independent of their order."""
    return hashlib.sha256(_canonical(overrides).encode()).hexdigest()[:10]


def draw(rng: np.random.Generator, domain: list[Any] | Range) -> Any:
    """One value: a uniform choice from a list, or from a range (floats rounded to 4 significant digits)."""
    if isinstance(domain, list):
        return domain[int(rng.integers(len(domain)))]
    if domain.int:
        low, high = int(domain.low), int(domain.high)
        if not domain.log:
            return int(rng.integers(low, high + 1))
        # Log-uniform over the integers low..high: each integer k gets the mass of [k, k + 1).
        return min(high, int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))))
    if domain.log:
        return float(f"{math.exp(rng.uniform(math.log(domain.low), math.log(domain.high))):.4g}")
    return float(f"{rng.uniform(domain.low, domain.high):.4g}")


def trial_list(cfg: SweepConfig) -> list[Trial]:
    """The sweep's configurations, the same for the same config: a grid in the order of ``space``'s keys and values
    (the last key varying fastest), or ``trials`` distinct random draws from ``numpy.random.default_rng(seed)``
    (each draw takes the keys in order; a draw repeating an earlier configuration is passed over).
    """
    if cfg.search == "grid":
        assignments = [dict(zip(cfg.space, values, strict=True)) for values in itertools.product(*cfg.space.values())]
    else:
        rng = np.random.default_rng(cfg.seed)
        assignments, seen = [], set()
        for _ in range(MAX_DRAWS_PER_TRIAL * cfg.trials):
            assignment = {key: draw(rng, domain) for key, domain in cfg.space.items()}
            if trial_id(assignment) not in seen:
                seen.add(trial_id(assignment))
                assignments.append(assignment)
            if len(assignments) == cfg.trials:
                break
        else:
            raise ValueError(
                f"space: only {len(assignments)} distinct configurations in {MAX_DRAWS_PER_TRIAL * cfg.trials} "
                f"draws, fewer than trials: {cfg.trials}"
            )
    return [Trial(trial_id(a), a) for a in assignments]


def run_dir(cfg: SweepConfig, trial: Trial, seed: int) -> Path:
    return Path(cfg.out_dir) / RUNS / f"{trial.id}-s{seed}"


def resolve(cfg: SweepConfig, overrides: dict[str, Any], seed: int, out_dir: Path) -> TrainConfig:
    """The base config with ``fixed``, then ``overrides``, then the seed and out_dir applied (``--set``'s way)."""
    return load_config(cfg.base, {**cfg.fixed, **overrides, "seed": seed, "out_dir": str(out_dir)})


def _unused(key: str, trial_cfgs: list[TrainConfig]) -> str | None:
    """Why no trial uses ``key``, or None: an interaction's own key does nothing unless that interaction trains."""
    parts = key.split(".")
    if parts[:2] != ["model", "interaction_kwargs"] or len(parts) < 3:
        return None
    trained = sorted({c.model.interaction for c in trial_cfgs})
    if parts[2] in trained:
        return None
    return f"it is a hyper-parameter of {parts[2]!r}, but every trial trains {' or '.join(map(repr, trained))}"


def plan(cfg: SweepConfig, where: str) -> tuple[list[Run], str]:
    """Checks everything a run would fail on, in this process; returns the runs and the metric's history key.

    First ``fixed`` on the base config, then each value of the space on its own (so that the error names the key),
    then every trial's full config. Raises ``ValueError`` / ``FileNotFoundError`` prefixed with ``where``.
    """

    def check(overrides: dict[str, Any], what: str) -> TrainConfig:
        try:
            train_cfg = resolve(cfg, overrides, cfg.seeds[0], Path(cfg.out_dir))
            preflight(train_cfg)
        except (ValueError, FileNotFoundError) as err:
            raise type(err)(f"{where} {what}: {err}") from err
        return train_cfg

    base = check({}, f"base {cfg.base}" + (" with `fixed:`" if cfg.fixed else ""))
    for key, domain in cfg.space.items():
        for value in domain.ends() if isinstance(domain, Range) else domain:
            check({key: value}, f"space.{key}: value {_canonical(value)}")
    trials = trial_list(cfg)
    trial_cfgs = [check(t.overrides, f"trial {t.id} ({t.describe()})") for t in trials]
    for key in cfg.space:
        reason = _unused(key, trial_cfgs)
        if reason:
            raise ValueError(f"{where} space.{key}: no trial uses this key: {reason}")
    labels = FeatureMap.load(base.features).labels
    task, name = cfg.metric_parts
    if task is not None and task not in labels:
        raise ValueError(f"{where} metric: {task!r} is not a task of {base.features} (tasks: {list(labels)})")
    runs = [Run(t, seed, resolve(cfg, t.overrides, seed, run_dir(cfg, t, seed))) for t in trials for seed in cfg.seeds]
    return runs, f"valid/{task or labels[0]}/{name}"


def _fingerprint(train_cfg: TrainConfig) -> str:
    """The resolved config and the features' build (their manifest changes when they are rebuilt)."""
    manifest = Path(train_cfg.features) / steps.MANIFEST
    return steps.fingerprint(to_dict(train_cfg), [manifest] if manifest.exists() else [])


def is_finished(run: Run) -> bool:
    return steps.is_complete(run.dir, "train", _fingerprint(run.cfg)) and (run.dir / RESULTS).is_file()


def _config_text(train_cfg: TrainConfig, header: str = "") -> str:
    return header + yaml.safe_dump(to_dict(train_cfg), sort_keys=False)


def _resumable(run: Run) -> bool:
    """Whether the run folder holds an intact checkpoint of this very config to continue from."""
    saved = run.dir / RUN_CONFIG
    if not saved.is_file() or saved.read_text() != _config_text(run.cfg):
        return False
    try:
        checkpoints.newest_intact(run.dir / CHECKPOINTS, say=lambda _: None)
    except FileNotFoundError:
        return False
    return True


def train_run(run: Run, nproc: int, resume: bool) -> None:
    """Trains one run with ``ranker train``'s launcher, then marks it finished (``manifest.json``)."""
    started = time.time()
    resume = resume and _resumable(run)
    if run.dir.exists() and not resume:
        shutil.rmtree(run.dir)  # what a crashed or outdated run left must not mix with a fresh one
    run.dir.mkdir(parents=True, exist_ok=True)
    config = run.dir / RUN_CONFIG
    config.write_text(_config_text(run.cfg))
    launch_training(config, nproc, [], resume=resume)
    if not (run.dir / RESULTS).is_file():
        raise ChildProcessError(f"{run.dir}: training ended without writing {RESULTS}")
    results = json.loads((run.dir / RESULTS).read_text())
    summary = {k: results[k] for k in ("steps", "best_step", "best_valid_auc", "stopped_early")}
    steps.write_manifest(run.dir, "train", _fingerprint(run.cfg), to_dict(run.cfg), summary, started)


def run_value(run: Run, key: str) -> float | None:
    """The validation ``key`` (``valid/TASK/METRIC``) of the run's exported model: its best checkpoint's."""
    results = json.loads((run.dir / RESULTS).read_text())
    record = next(r for r in results["history"] if r["step"] == results["best_step"])
    return record.get(key)


@dataclass
class TrialResult:
    """A trial's values over its seeds (None: that run failed or has no value), mean and sample std."""

    trial: Trial
    values: dict[int, float | None]

    @property
    def complete(self) -> bool:
        return all(v is not None for v in self.values.values())

    @property
    def mean(self) -> float | None:
        done = [v for v in self.values.values() if v is not None]
        return float(np.mean(done)) if done else None

    @property
    def std(self) -> float | None:
        done = [v for v in self.values.values() if v is not None]
        return float(np.std(done, ddof=1)) if len(done) > 1 else None


def rank_trials(results: list[TrialResult], maximise: bool) -> list[TrialResult]:
    """Complete trials best first by their mean, then the incomplete ones (never picked) in trial order."""
    done = sorted((r for r in results if r.complete), key=lambda r: -r.mean if maximise else r.mean)  # type: ignore
    return done + [r for r in results if not r.complete]


def _mean_std(result: TrialResult) -> str:
    return _num(result.mean) + (f" ± {result.std:.4f}" if result.std is not None else "")


def _values(result: TrialResult) -> str:
    return ", ".join(_num(v) for v in result.values.values())


def _table(cfg: SweepConfig, ranked: list[TrialResult], key: str) -> tuple[list[str], list[list[str]]]:
    """The summary's header and rows (ranked; a trial with a failed seed has no rank)."""
    header = ["rank", "trial", *cfg.space, key, "per seed"]
    rows = [
        [str(i + 1) if r.complete else "-", r.trial.id, *(_canonical(r.trial.overrides[k]) for k in cfg.space)]
        + [_mean_std(r), _values(r)]
        for i, r in enumerate(ranked)
    ]
    return header, rows


def _note(cfg: SweepConfig, key: str) -> str:
    return (
        f"{cfg.search} search, seeds {list(cfg.seeds)}, base {cfg.base}. Picked on validation {key} "
        f"({'max' if cfg.maximise else 'min'}): mean ± sample std over seeds, each run's value being its exported "
        f"model's (its best checkpoint's). No test metric is read. The best is highlighted and written to {BEST}."
    )


def summary_markdown(cfg: SweepConfig, where: str, ranked: list[TrialResult], key: str) -> str:
    header, rows = _table(cfg, ranked, key)
    lines = [f"# Sweep `{where}`", "", _note(cfg, key), "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    for i, row in enumerate(rows):
        if i == 0 and ranked[0].complete:
            row = [f"**{c}**" for c in row]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def summary_html(cfg: SweepConfig, where: str, ranked: list[TrialResult], key: str) -> str:
    """The table of :func:`summary_markdown` as a page in the style of ``pipelines.report``'s reports."""
    header, rows = _table(cfg, ranked, key)
    html_rows = []
    for i, row in enumerate(rows):
        style = ' class="best" style="background:#ebfbee;font-weight:600"' if i == 0 and ranked[0].complete else ""
        html_rows.append(f"<tr{style}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"
    badges = "".join(
        f'<span class="badge">{_e(b)}</span>'
        for b in (f"{cfg.search} search", f"{len(ranked)} configurations", f"seeds {list(cfg.seeds)}")
    )
    body = [
        "<h2>Trials</h2>",
        f'<p class="note">{_e(_note(cfg, key))}</p>',
        f"<table>{head}{''.join(html_rows)}</table>",
    ]
    return _page(f"Sweep {where}", badges, body)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block (the launcher hands the environment to the runs)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _parent_run(cfg: SweepConfig, train_cfg: TrainConfig) -> Iterator[str | None]:
    """The sweep's MLflow run (None without tracking), re-opened by a re-run of the same sweep."""
    if not train_cfg.tracking:
        yield None
        return
    from pipelines import tracking

    state = Path(cfg.out_dir) / MLFLOW_STATE
    fp = steps.fingerprint(to_dict(cfg))
    previous = json.loads(state.read_text()) if state.exists() else {}
    same = previous.get("fingerprint") == fp
    parent = tracking.start_parent_run(
        train_cfg.experiment, Path(cfg.out_dir), Path(cfg.out_dir).name, previous.get("run_id") if same else None
    )
    try:
        if parent != previous.get("run_id"):
            state.write_text(json.dumps({"run_id": parent, "fingerprint": fp}) + "\n")
            tracking.log_params(to_dict(cfg))
        yield parent
    finally:
        tracking.end_run()


def run_sweep(
    cfg: SweepConfig,
    where: str | Path,
    max_parallel: int = 1,
    resume: bool = False,
    dry_run: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs the sweep (``where``: its YAML, for messages); returns ``sweep.json``'s content (``{}`` on a dry run).

    Raises ``ValueError`` for a bad config before any run, and ``ChildProcessError`` after the sweep when a run
    failed (the summary then covers the configurations whose every seed finished).
    """
    if max_parallel < 1:
        raise ValueError(f"--max-parallel must be >= 1, got {max_parallel}")
    where = f"{where}:"
    runs, key = plan(cfg, where)
    finished = {run.name for run in runs if is_finished(run)}
    n_trials = len(runs) // len(cfg.seeds)
    say(
        f"[sweep] {cfg.search} search: {n_trials} configurations x {len(cfg.seeds)} seed(s) = {len(runs)} runs "
        f"({len(finished)} finished before), picked on {key} ({'max' if cfg.maximise else 'min'})"
    )
    if dry_run:
        for run in runs:
            state = "finished" if run.name in finished else "resumable" if resume and _resumable(run) else "to train"
            say(f"  {run.name:16s} {state:10s} {run.trial.describe()}")
        return {}
    out = Path(cfg.out_dir)
    started = time.time()
    pending = [run for run in runs if run.name not in finished]
    failures: dict[str, str] = {}
    threads = max(1, (os.cpu_count() or 1) // (cfg.nproc * max_parallel))
    with exclusive(out), _parent_run(cfg, runs[0].cfg) as parent:
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
        if parent:
            from pipelines.tracking import PARENT_RUN_ENV

            env[PARENT_RUN_ENV] = parent
        with _environment(env), ThreadPoolExecutor(max_parallel) as pool:
            futures = {pool.submit(train_run, run, cfg.nproc, resume): run for run in pending}
            for done, future in enumerate(as_completed(futures), 1):
                run = futures[future]
                try:
                    future.result()
                except (ChildProcessError, ValueError, OSError) as err:
                    failures[run.name] = str(err)
                    say(f"[sweep] {done}/{len(pending)} {run.name} failed: {err}")
                    continue
                say(f"[sweep] {done}/{len(pending)} {run.name} finished: {key} {_num(run_value(run, key))}")
        result = summarise(cfg, where.rstrip(":"), runs, key, failures)
        steps.write_manifest(out, "sweep", steps.fingerprint(to_dict(cfg)), to_dict(cfg), result, started)
        if parent:
            from pipelines import tracking

            if result["best"]:
                tracking.log_metrics({f"best/{key}": result["best"]["mean"]}, step=0)
            for name in ("summary.md", "summary.html", "sweep.json", BEST):
                if (out / name).exists():
                    tracking.log_artifact(out / name)
    if failures:
        first = next(iter(failures.items()))
        raise ChildProcessError(
            f"sweep: {len(failures)} of {len(runs)} runs failed (first: {first[0]}: {first[1]}); the summary "
            f"covers the configurations whose every seed finished; re-run the sweep to retry the failed runs"
        )
    say(f"[sweep] {len(runs) - len(pending)} skipped, {len(pending)} trained in {time.time() - started:.0f} s")
    return result


def summarise(cfg: SweepConfig, where: str, runs: list[Run], key: str, failures: dict[str, str]) -> dict[str, Any]:
    """Writes summary.md, summary.html, sweep.json and (when a configuration finished) best.yaml."""
    out = Path(cfg.out_dir)
    by_trial: dict[str, TrialResult] = {}
    for run in runs:
        value = None if run.name in failures else run_value(run, key)
        by_trial.setdefault(run.trial.id, TrialResult(run.trial, {})).values[run.seed] = value
    ranked = rank_trials(list(by_trial.values()), cfg.maximise)
    (out / "summary.md").write_text(summary_markdown(cfg, where, ranked, key))
    (out / "summary.html").write_text(summary_html(cfg, where, ranked, key), encoding="utf-8")
    best = ranked[0] if ranked and ranked[0].complete else None
    (out / BEST).unlink(missing_ok=True)
    if best is not None:
        best_cfg = resolve(cfg, best.trial.overrides, cfg.seeds[0], out / "best")
        header = (
            f"# ranker train --config {out / BEST}\n"
            f"# The best configuration of the sweep {where}: trial {best.trial.id} ({best.trial.describe()}),\n"
            f"# validation {key} {_mean_std(best)} over seeds {list(cfg.seeds)}.\n"
        )
        (out / BEST).write_text(_config_text(best_cfg, header))
    result = {
        "metric": key,
        "mode": "max" if cfg.maximise else "min",
        "best": None if best is None else {"trial": best.trial.id, "mean": best.mean, "std": best.std},
        "trials": [
            {"id": r.trial.id, "overrides": r.trial.overrides, "values": r.values, "mean": r.mean, "std": r.std}
            for r in ranked
        ],
        "failed": failures,
    }
    (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
