"""The main job: ``ranker run PIPELINE.yaml`` runs every step from raw data to a promoted model and batch scores.

Steps, in order (``tower``, ``compress`` and ``score`` only when the pipeline config names them)::

    data -> features -> tower -> train -> evaluate -> compress -> register -> promote -> score

Each step writes one folder under ``work_dir`` (data and features may live elsewhere, e.g. ``data/``) with a
``manifest.json``: its config, a fingerprint of its inputs and what it produced. A step whose fingerprint is
unchanged is skipped; the steps that have their own skip logic (data, features, evaluate, compress, score) keep it.
A job interrupted by a crash or Ctrl-C keeps its finished steps, and training continues from its newest intact
checkpoint (``ranker train --resume``). ``register`` records the registry version of every export keyed by the
export's content digest, so re-running it never creates a new version of an unchanged model.

The promotion decision is between two models: ``register`` registers the trained export, then the compressed one;
``promote`` runs the gate on each in that order. The trained model becomes the champion (on a first run: "first
promotion, no champion yet"; later, gated against the champion of earlier runs), then the compressed model is the
challenger, judged against it on the frozen holdout: the compression is shipped only if it costs no more quality
than the gate allows. See docs/pipeline.md.

Everything is checked before the first step runs: the pipeline config (unknown keys are errors naming the file and
the key) and every config it references (training, compression, gate). Each step's output goes to
``work_dir/logs/<step>.log``; the terminal shows one line per step and a summary at the end (also written to
``work_dir/summary.json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from common.config import ConfigError, load_yaml, parse_overrides, to_dict
from features.processor import FEATURE_MAP
from features.schema import load_schema
from features.source import SOURCE_DIR
from pipelines import metrics as M
from pipelines import steps
from pipelines.data import DATASETS

STEPS = ("data", "features", "tower", "train", "evaluate", "compress", "register", "promote", "score")
OPTIONAL = ("tower", "compress", "score")
SUMMARY = "summary.json"
PENDING = "pending.json"  # in the train folder while a training run is unfinished: the fingerprint it trains for
_WARNING = re.compile(r"\b\w*Warning\b")


# -- Config ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataStep:
    """A built-in data set (``dataset``, with ``rows`` and ``seed`` for the simulated one) or your own ``schema``."""

    dataset: str = ""
    schema: str = ""  # your own schema YAML (source: or files: form); the data step then only checks it
    rows: int = 200_000
    seed: int = 0
    out: str = ""  # folder of a built-in data set; "": WORK/data

    def __post_init__(self) -> None:
        if bool(self.dataset) == bool(self.schema):
            raise ValueError("give either dataset (a built-in data set) or schema (your own schema YAML), not both")
        if self.dataset and self.dataset not in DATASETS:
            raise ValueError(f"dataset {self.dataset!r} is not built in; built-in data sets: {list(DATASETS)}")
        if self.rows < 1:
            raise ValueError(f"rows must be >= 1, got {self.rows}")


@dataclass(frozen=True)
class FeaturesStep:
    out: str = ""  # "": WORK/features
    row_group_size: int = 65_536


@dataclass(frozen=True)
class TowerStep:
    """A vision tower pretrained on Fashion-MNIST classes for the training config's ``model.vision``."""

    name: str
    n_train: int = 3000
    epochs: int = 1
    seed: int = 0


@dataclass(frozen=True)
class TrainStep:
    """``ranker train --config CONFIG --nproc NPROC --set KEY=VALUE...``; ``features`` and ``out_dir`` (and, with a
    tower step, ``model.vision.pretrained``) are set by the pipeline."""

    config: str
    nproc: int = 1
    set: dict[str, Any] = field(default_factory=dict)  # training config keys, dotted or nested
    max_restarts: int = 0

    def __post_init__(self) -> None:
        if self.nproc < 1 or self.max_restarts < 0:
            raise ValueError(f"nproc must be >= 1 and max_restarts >= 0, got {self.nproc} and {self.max_restarts}")


@dataclass(frozen=True)
class EvaluateStep:
    split: Literal["train", "valid", "test"] = "test"
    metrics: M.EvalConfig = field(default_factory=M.EvalConfig)


@dataclass(frozen=True)
class CompressStep:
    """``ranker compress --config CONFIG --set KEY=VALUE...``; its fine-tuning and pruning use the pipeline's
    features. The compressed export is evaluated like the trained one, for the compression table."""

    config: str
    set: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegisterStep:
    """Registers ``exports`` in this order under ``name``; empty: the trained export, then the compressed one."""

    name: str
    exports: tuple[Literal["trained", "compressed"], ...] = ()


@dataclass(frozen=True)
class PromoteStep:
    """The gate (``ranker promote --config CONFIG``) on every registered export in order. Its holdout is the
    ``holdout_split`` of the pipeline's own data and its reports go to WORK/promote/gates, whatever the gate config
    says."""

    config: str = ""  # "": the gate's defaults (configs/promote/default.yaml documents them)
    set: dict[str, Any] = field(default_factory=dict)
    holdout_split: Literal["train", "valid", "test"] = "test"


@dataclass(frozen=True)
class ScoreStep:
    """``ranker score --model models:/NAME@ALIAS``: batch scores of the champion by default."""

    input: str = ""  # raw parquet glob; "": the raw rows of the data's test split (their labels are not read)
    alias: str = "champion"
    nproc: int = 1
    batch_size: int = 8192
    keep: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """``ranker run PIPELINE.yaml`` (unknown keys are rejected); paths are relative to the working directory."""

    name: str
    work_dir: str
    data: DataStep
    features: FeaturesStep = FeaturesStep()
    tower: TowerStep | None = None
    train: TrainStep
    evaluate: EvaluateStep = EvaluateStep()
    compress: CompressStep | None = None
    register: RegisterStep
    promote: PromoteStep = PromoteStep()
    score: ScoreStep | None = ScoreStep()

    def __post_init__(self) -> None:
        if "compressed" in self.register.exports and self.compress is None:
            raise ValueError("register.exports names 'compressed' but the pipeline has no compress step")

    @property
    def steps(self) -> tuple[str, ...]:
        return tuple(s for s in STEPS if s not in OPTIONAL or getattr(self, s) is not None)

    @property
    def exports(self) -> tuple[str, ...]:
        return self.register.exports or (("trained", "compressed") if self.compress else ("trained",))


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested ``set:`` mappings as dotted keys: ``{model: {interaction: x}}`` -> ``{model.interaction: x}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _as_set_args(values: dict[str, Any]) -> list[str]:
    """``KEY=VALUE`` strings for ``--set`` (values as JSON, which YAML reads back as the same value)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


@dataclass(frozen=True)
class Job:
    """A checked pipeline: its config and every referenced config loaded, and where each step writes."""

    cfg: PipelineConfig
    source: Path  # the pipeline YAML
    work: Path
    data: Path
    features: Path
    train_args: list[str]  # --set arguments of the training run
    train: Any  # TrainConfig
    compress: Any  # CompressConfig | None
    gate: Any  # PromoteConfig, with the pipeline's holdout and report folder

    def folder(self, step: str) -> Path:
        return {"data": self.data, "features": self.features}.get(step, self.work / step)

    @property
    def schema(self) -> Path:
        return self.data / "schema.yaml" if self.cfg.data.dataset else Path(self.cfg.data.schema)

    @property
    def tower_checkpoint(self) -> Path | None:
        return self.work / "tower" / f"{self.cfg.tower.name}.pt" if self.cfg.tower else None

    @property
    def trained_export(self) -> Path:
        return self.work / "train" / "export"

    @property
    def compressed_export(self) -> Path:
        return self.work / "compress" / "export"

    @property
    def holdout_schema(self) -> Path:
        return self.work / "promote" / "holdout.yaml"


def _where(path: Path, key: str) -> str:
    return f"{path}: {key}:"


@contextlib.contextmanager
def _section(path: Path, key: str) -> Iterator[None]:
    """Prefixes an error of a config that section ``key`` of the pipeline ``path`` references with both."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{path}: {key}: {err}") from err


def load_job(path: str | Path, overrides: dict[str, Any] | None = None) -> Job:
    """Loads and checks the pipeline config and every config it references; raises ``ConfigError`` (one line)."""
    from pipelines.compress import load_compress_config
    from pipelines.registry import load_promote_config
    from pipelines.train import load_config

    path = Path(path)
    cfg = load_yaml(PipelineConfig, path, overrides)
    work = Path(cfg.work_dir)
    data = Path(cfg.data.out) if cfg.data.out else work / "data"
    if cfg.data.schema:
        if cfg.data.out:
            raise ConfigError(f"{_where(path, 'data.out')} only for a built-in dataset; your schema names its files")
        load_schema(cfg.data.schema)  # its errors name the schema file and key
    features = Path(cfg.features.out) if cfg.features.out else work / "features"
    with _section(path, "train"):
        train_set = _flat(cfg.train.set) | {"features": str(features), "out_dir": str(work / "train")}
        train = load_config(cfg.train.config, train_set)
    if cfg.tower is not None:
        from vision_towers import list_towers

        if cfg.tower.name not in list_towers():
            raise ConfigError(f"{_where(path, 'tower.name')} unknown tower {cfg.tower.name!r}; towers: {list_towers()}")
        if train.model.vision is None or train.model.vision.tower != cfg.tower.name:
            raise ConfigError(
                f"{_where(path, 'tower')} the training config {cfg.train.config} has no model.vision with tower "
                f"{cfg.tower.name!r} to use the pretrained tower"
            )
        train_set["model.vision.pretrained"] = str(work / "tower" / f"{cfg.tower.name}.pt")
        train = load_config(cfg.train.config, train_set)
    compress = None
    if cfg.compress is not None:
        with _section(path, "compress"):
            compress_set = _flat(cfg.compress.set)
            compress = load_compress_config(cfg.compress.config, compress_set)
            for part in ("prune", "finetune"):  # fine-tune and prune on the pipeline's features
                if getattr(compress, part) is not None:
                    compress_set[f"{part}.features"] = str(features)
            compress = load_compress_config(cfg.compress.config, compress_set)
    promote_set = _flat(cfg.promote.set) | {
        "holdout.schema": str(work / "promote" / "holdout.yaml"),
        "holdout.split": cfg.promote.holdout_split,
        "report_dir": str(work / "promote" / "gates"),
    }
    with _section(path, "promote"):
        gate = load_promote_config(cfg.promote.config or None, promote_set)
    return Job(cfg, path, work, data, features, _as_set_args(train_set), train, compress, gate)


# -- Steps ------------------------------------------------------------------------------------------------------------


def _changed(folder: Path, call: Callable[[], Any]) -> bool:
    """Runs a step with its own skip logic; whether it did any work (its manifest is new or changed)."""
    before = steps.read_manifest(folder)
    call()
    return steps.read_manifest(folder) != before


def _step_data(job: Job, force: bool) -> bool:
    d = job.cfg.data
    if d.dataset:
        from pipelines.data import build_dataset

        return _changed(job.data, lambda: build_dataset(d.dataset, job.data, d.rows, d.seed, force, progress=True))
    # Your own data: nothing to build; the step records the schema and the files it names.
    from pipelines.build_features import source_files

    schema = load_schema(d.schema)
    folder = job.work / "data"
    config = {"schema": str(Path(d.schema).resolve())}
    files = [Path(d.schema), *source_files(schema)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"{d.schema}: file(s) not found: {', '.join(missing)}")
    fp = steps.fingerprint(config, files)
    if not force and steps.is_complete(folder, "data", fp):
        return False
    steps.write_manifest(folder, "data", fp, config, {"inputs": steps.input_stamps(files)}, time.time())
    return True


def _step_features(job: Job, force: bool) -> bool:
    from pipelines.build_features import build_features

    row_group_size = job.cfg.features.row_group_size
    return _changed(job.features, lambda: build_features(job.schema, job.features, row_group_size, force))


def _step_tower(job: Job, force: bool) -> bool:
    from vision_towers.pretrain import pretrain

    t = job.cfg.tower
    assert t is not None and job.tower_checkpoint is not None
    folder = job.work / "tower"
    config = to_dict(t)
    fp = steps.fingerprint(config)
    if not force and steps.is_complete(folder, "tower", fp) and job.tower_checkpoint.exists():
        return False
    started = time.time()
    with steps.staged(folder) as partial:
        pretrain(t.name, partial / job.tower_checkpoint.name, n_train=t.n_train, epochs=t.epochs, seed=t.seed)
        steps.write_manifest(partial, "tower", fp, config, {"checkpoint": str(job.tower_checkpoint)}, started)
    return True


def _train_fingerprint(job: Job) -> tuple[dict[str, Any], str]:
    config = {
        "train": to_dict(job.train),
        "nproc": job.cfg.train.nproc,
        "feature_map": json.loads((job.features / FEATURE_MAP).read_text()),
        "tower": (steps.read_manifest(job.work / "tower") or {}).get("fingerprint") if job.cfg.tower else None,
    }
    return config, steps.fingerprint(config)


def _step_train(job: Job, force: bool) -> bool:
    from pipelines import checkpoints
    from pipelines.launch import launch_training
    from pipelines.train import CHECKPOINTS

    folder = job.work / "train"
    config, fp = _train_fingerprint(job)
    if not force and steps.is_complete(folder, "train", fp) and (folder / "results.json").exists():
        return False
    pending = folder / PENDING
    same_run = pending.exists() and json.loads(pending.read_text()).get("fingerprint") == fp
    resume = not force and same_run and bool(checkpoints.complete(folder / CHECKPOINTS))
    if not resume:  # another config (or --force): start clean, never from checkpoints of another run
        for stale in (CHECKPOINTS, "export"):
            shutil.rmtree(folder / stale, ignore_errors=True)
        for stale in ("results.json", steps.MANIFEST):
            (folder / stale).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    pending.write_text(json.dumps({"fingerprint": fp}) + "\n")
    started = time.time()
    print(f"[run] train: {'resuming' if resume else 'starting'} {job.cfg.train.config}", flush=True)
    launch_training(Path(job.cfg.train.config), job.cfg.train.nproc, job.train_args, resume, job.cfg.train.max_restarts)
    results = json.loads((folder / "results.json").read_text())
    summary = {"export": str(job.trained_export), "test": results.get("test"), "resumed": resume}
    summary |= {"model_uri": results.get("model_uri"), "steps": results.get("steps")}
    steps.write_manifest(folder, "train", fp, config, summary, started)
    pending.unlink()
    return True


def _step_evaluate(job: Job, force: bool) -> bool:
    from pipelines.evaluate import evaluate_model

    split, out = job.cfg.evaluate.split, job.work / "evaluate"
    return _changed(
        out, lambda: evaluate_model(job.trained_export, job.features, out, split, job.cfg.evaluate.metrics, force)
    )


def _headline(manifest: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per task: AUC, GAUC, NE and logloss of an evaluate manifest."""
    overall = ((manifest or {}).get("results") or {}).get("overall") or {}
    return {t: {k: m.get(k) for k in ("auc", "gauc", "ne", "logloss")} for t, m in overall.items()}


def _step_compress(job: Job, force: bool) -> bool:
    from pipelines.compress import compress_export
    from pipelines.evaluate import evaluate_model

    assert job.compress is not None
    folder = job.work / "compress"
    config = {"compress": to_dict(job.compress), "trained": _model_digest(job.trained_export)}
    config |= {"features": (steps.read_manifest(job.features) or {}).get("fingerprint")}
    fp = steps.fingerprint(config)
    if not force and steps.is_complete(folder, "compress", fp):
        return False
    started = time.time()
    compressed = compress_export(job.trained_export, job.compress, job.compressed_export, force)["results"]
    split = job.cfg.evaluate.split
    evaluated = evaluate_model(
        job.compressed_export, job.features, folder / "eval", split, job.cfg.evaluate.metrics, force
    )
    before = _headline(steps.read_manifest(job.work / "evaluate"))
    after = _headline(evaluated)
    table = {
        "trained": {
            "model_bytes": compressed["source_model_bytes"],
            "parameters": compressed["applied"]["parameters_before"],
        },
        "compressed": {"model_bytes": compressed["model_bytes"], "parameters": compressed["parameters"]},
    }
    for task in after:
        for name, metrics in (("trained", before.get(task, {})), ("compressed", after[task])):
            table[name][f"{task}/auc"] = metrics.get("auc")
    results = {"export": str(job.compressed_export), "applied": compressed["applied"], "table": table}
    results |= {"report": evaluated["results"]["report"], "test": after}
    steps.write_manifest(folder, "compress", fp, config, results, started)
    return True


def _exports(job: Job) -> dict[str, Path]:
    return {"trained": job.trained_export, "compressed": job.compressed_export}


def _model_digest(export_dir: Path) -> str:
    """The export's content digest without its step manifest, which registering annotates with the model URI."""
    from ranker.export import export_digest

    return export_digest(export_dir, exclude=(steps.MANIFEST,))


def _step_register(job: Job, force: bool) -> bool:
    from pipelines import tracking
    from pipelines.registry import register_run

    folder, name = job.work / "register", job.cfg.register.name
    uri = tracking.shown_uri(tracking.connect())
    digests = {label: _model_digest(_exports(job)[label]) for label in job.cfg.exports}
    config = {"name": name, "tracking": uri, "exports": digests}
    fp = steps.fingerprint(config)
    manifest = steps.read_manifest(folder) or {}
    # Every version this pipeline registered under this name and store, by model digest: an unchanged model keeps
    # its version instead of getting a new one.
    known = (manifest.get("results") or {}).get("known") or {}
    if (manifest.get("config") or {}).get("tracking") != uri or (manifest.get("config") or {}).get("name") != name:
        known = {}
    known = {d: v for d, v in known.items() if tracking.version_exists(name, v)}
    if not force and steps.is_complete(folder, "register", fp) and all(d in known for d in digests.values()):
        return False
    started = time.time()
    versions = []
    for label, digest in digests.items():
        if force or digest not in known:
            known[digest] = register_run(_exports(job)[label], name)
            print(f"[run] registered {name} v{known[digest]} ({label} export)", flush=True)
        versions.append({"export": label, "version": known[digest], "digest": digest})
    steps.write_manifest(folder, "register", fp, config, {"name": name, "versions": versions, "known": known}, started)
    return True


def write_holdout_schema(job: Job) -> Path:
    """A ``files:`` schema over the data the gate judges on: the schema itself, or (for a ``source:`` schema)
    the split rows that the feature build staged under ``FEATURES/source/``."""
    schema = load_schema(job.schema)
    data = yaml.safe_load(job.schema.read_text())
    if schema.source is not None:
        data.pop("source")
        data["files"] = {s: str((job.features / SOURCE_DIR / f"{s}.parquet").resolve()) for s in ("train", "test")}
        data["bad_rows"] = "quarantine"  # as the staged rows were built
    else:
        data["files"] = {s: str(schema.resolve(p)) for s, p in schema.files.items()}
    if schema.image is not None:  # paths of the schema's folder, written elsewhere
        data["image"] |= {"items": str(schema.resolve(schema.image.items))}
        if schema.image.array:
            data["image"]["array"] = str(schema.resolve(schema.image.array))
    job.holdout_schema.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(data, sort_keys=False)
    if not job.holdout_schema.exists() or job.holdout_schema.read_text() != text:
        job.holdout_schema.write_text(text)
    return job.holdout_schema


def _step_promote(job: Job, force: bool) -> bool:
    from pipelines import tracking
    from pipelines.registry import CHAMPION, promote

    folder, name = job.work / "promote", job.cfg.register.name
    versions = (steps.read_manifest(job.work / "register") or {})["results"]["versions"]
    write_holdout_schema(job)
    data = (steps.read_manifest(job.features) or {}).get("fingerprint")
    config = {"name": name, "versions": versions, "gate": to_dict(job.gate), "data": data}
    config |= {"tracking": tracking.shown_uri(tracking.connect())}
    fp = steps.fingerprint(config)
    if not force and steps.is_complete(folder, "promote", fp):
        return False
    started = time.time()
    decisions = []
    for entry in versions:
        outcome = promote(name, job.gate, entry["version"])
        tags = tracking.version_tags(name, entry["version"]) if outcome.report is not None else {}
        decision = "no change" if outcome.report is None else "promoted" if outcome.code == 0 else "rejected"
        decisions.append(
            entry
            | {"decision": decision, "reason": tags.get("gate.reason") or outcome.message, "message": outcome.message}
            | {"compared_to": tags.get("gate.compared_to") or None, "report": str(outcome.report or "")}
        )
        print(f"[run] {outcome.message}", flush=True)
    aliases = tracking.aliases(name)
    results = {"decisions": decisions, "aliases": aliases, "champion": aliases.get(CHAMPION)}
    steps.write_manifest(folder, "promote", fp, config, results, started)
    return True


def score_input(job: Job) -> str:
    """What the score step reads: ``score.input``, or the raw rows of the data's test split."""
    assert job.cfg.score is not None
    if job.cfg.score.input:
        return job.cfg.score.input
    staged = job.features / SOURCE_DIR / "test.parquet"
    if staged.exists():
        return str(staged)
    schema = load_schema(job.schema)
    return str(schema.resolve(schema.files["test"]))


def _step_score(job: Job, force: bool) -> bool:
    from pipelines.score import score

    s = job.cfg.score
    assert s is not None
    model = f"models:/{job.cfg.register.name}@{s.alias}"
    out = job.work / "score"
    return _changed(out, lambda: score(model, score_input(job), out, s.nproc, s.batch_size, s.keep, force))


_RUNNERS: dict[str, Callable[[Job, bool], bool]] = {
    "data": _step_data,
    "features": _step_features,
    "tower": _step_tower,
    "train": _step_train,
    "evaluate": _step_evaluate,
    "compress": _step_compress,
    "register": _step_register,
    "promote": _step_promote,
    "score": _step_score,
}


def _finished(job: Job, step: str) -> Path | None:
    """The file that shows ``step`` finished in an earlier run (None when it did), for ``--from``."""
    if step == "tower" and job.tower_checkpoint is not None:
        marker = job.tower_checkpoint
    elif step == "data" and job.cfg.data.schema:
        marker = job.schema
    else:
        marker = job.folder(step) / steps.MANIFEST
    return None if marker.exists() else marker


# -- Running ----------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _output_to(log: Path, verbose: bool) -> Iterator[None]:
    """Sends everything the step and its child processes print (file descriptors 1 and 2) to ``log``."""
    if verbose:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with log.open("ab") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def _warnings_in(log: Path, offset: int) -> list[str]:
    """The lines of ``log`` after ``offset`` that report a Python warning (shown, never hidden in the log)."""
    if not log.exists():
        return []
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [line for line in text.splitlines() if _WARNING.search(line) and ":" in line]


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else f"{int(value // 60)} min {value % 60:.0f} s"


def run_pipeline(
    job: Job, start: str | None = None, until: str | None = None, force: bool = False, verbose: bool = False
) -> dict[str, Any]:
    """Runs the job's steps from ``start`` to ``until`` (inclusive); returns the summary (also WORK/summary.json)."""
    names = job.cfg.steps
    for flag, step in (("--from", start), ("--until", until)):
        if step is not None and step not in names:
            raise ValueError(f"{flag} {step}: not a step of {job.source} (its steps: {', '.join(names)})")
    first = names.index(start) if start else 0
    last = names.index(until) if until else len(names) - 1
    if first > last:
        raise ValueError(f"--from {start} comes after --until {until}")
    for earlier in names[:first]:
        missing = _finished(job, earlier)
        if missing is not None:
            raise ValueError(
                f"--from {start}: step {earlier} has not finished in an earlier run ({missing} is missing); "
                f"run `ranker run {job.source} --from {earlier}` first"
            )
    job.work.mkdir(parents=True, exist_ok=True)
    logs = job.work / "logs"
    print(f"ranker run: {job.cfg.name}, {len(names)} steps in {job.work} (step output: {logs}/)", flush=True)
    began = time.time()
    for i, step in enumerate(names):
        if not first <= i <= last:
            continue
        log = logs / f"{step}.log"
        offset = log.stat().st_size if log.exists() else 0
        print(f"[{i + 1}/{len(names)}] {step} ...", end=" ", flush=True)
        started = time.time()
        try:
            with _output_to(log, verbose):
                ran = _RUNNERS[step](job, force)
        except KeyboardInterrupt:
            print(f"interrupted after {_seconds(time.time() - started)}; finished steps are kept (log: {log})")
            raise
        except BaseException:
            print(f"failed after {_seconds(time.time() - started)} (log: {log})", flush=True)
            raise
        print(f"done in {_seconds(time.time() - started)}" if ran else "skipped (unchanged)", flush=True)
        for line in _warnings_in(log, offset):
            print(f"  {step}: {line.strip()}", file=sys.stderr)
    summary = build_summary(job, time.time() - began)
    (job.work / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print_summary(summary)
    return summary


# -- Summary ----------------------------------------------------------------------------------------------------------


def mlflow_ui_command() -> str:
    """How to look at the runs, models and gate decisions of the current tracking store."""
    from pipelines import tracking

    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {tracking.shown_uri(uri)} in a browser"
    return f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def build_summary(job: Job, seconds: float) -> dict[str, Any]:
    """What the job produced, from its steps' manifests (steps not run yet are left out)."""

    def results(step: str) -> dict[str, Any]:
        return (steps.read_manifest(job.folder(step)) or {}).get("results") or {}

    summary: dict[str, Any] = {"name": job.cfg.name, "config": str(job.source), "work_dir": str(job.work)}
    summary["seconds"] = round(seconds, 1)
    evaluated = results("evaluate")
    if evaluated:
        summary["metrics"] = _headline({"results": evaluated})
        summary["reports"] = {"evaluation": evaluated["report"]}
    compressed = results("compress")
    if compressed:
        summary["compression"] = compressed["table"]
        summary.setdefault("reports", {})["compressed evaluation"] = compressed["report"]
    promoted = results("promote")
    if promoted:
        summary["registry"] = {"name": job.cfg.register.name} | promoted
        for d in promoted["decisions"]:
            if d["report"]:
                summary.setdefault("reports", {})[f"gate v{d['version']}"] = d["report"]
    elif results("register"):
        summary["registry"] = {"name": job.cfg.register.name, "decisions": results("register")["versions"]}
    scored = results("score")
    if scored:
        summary["scores"] = {"out": str(job.work / "score"), "rows": scored["rows_out"], "model": scored["model"]}
    summary["mlflow_ui"] = mlflow_ui_command()
    return summary


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n{summary['name']}: finished in {_seconds(summary['seconds'])}")
    for task, m in (summary.get("metrics") or {}).items():
        print(f"  test {task}: AUC {_number(m['auc'])}  GAUC {_number(m['gauc'])}  NE {_number(m['ne'])}")
    table = summary.get("compression")
    if table:
        print(
            "  compression       model.pt bytes   parameters   " + "   ".join(k for k in table["trained"] if "/" in k)
        )
        for name, row in table.items():
            aucs = [_number(v) for k, v in row.items() if "/" in k]
            print(f"    {name:15s} {row['model_bytes']:>14,} {row['parameters']:>12,}   " + "   ".join(aucs))
        deltas = [
            f"{k.split('/')[0]} AUC {v - table['trained'][k]:+.4f}"
            for k, v in table["compressed"].items()
            if "/" in k and v is not None and table["trained"].get(k) is not None
        ]
        if deltas:
            print(f"    compressed vs trained: {', '.join(deltas)}")
    registry = summary.get("registry")
    if registry:
        print(f"  registry {registry['name']}:")
        for d in registry["decisions"]:
            if "decision" not in d:
                print(f"    v{d['version']} ({d['export']}): registered, not judged yet")
                continue
            against = f" vs champion v{d['compared_to']}" if d.get("compared_to") else ""
            print(f"    v{d['version']} ({d['export']}){against}: {d['decision']}: {d['reason']}")
        if "aliases" in registry:
            aliases = ", ".join(f"{a} = v{v}" for a, v in sorted(registry["aliases"].items()))
            print(f"    aliases: {aliases}")
    for what, path in (summary.get("reports") or {}).items():
        print(f"  report ({what}): {path}")
    scores = summary.get("scores")
    if scores:
        print(f"  scores: {scores['out']}/part-*.parquet ({scores['rows']:,} rows, {scores['model']['uri']})")
    print(f"  summary: {Path(summary['work_dir']) / SUMMARY}")
    print(f"  MLflow UI: {summary['mlflow_ui']}")


def run_from_cli(
    path: Path, sets: list[str], start: str | None, until: str | None, force: bool, verbose: bool
) -> dict[str, Any]:
    """``ranker run``: loads and checks everything, then runs the steps."""
    job = load_job(path, parse_overrides(sets))
    return run_pipeline(job, start, until, force, verbose)
