"""One function per step of the main job: ``(job, force) -> whether it did any work``."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from common.config import to_dict
from features.processor import FEATURE_MAP
from features.schema import load_schema
from features.source import SOURCE_DIR
from pipelines import steps
from pipelines.job.config import Job

PENDING = "pending.json"  # in the train folder while a training run is unfinished: the fingerprint it trains for


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


def headline(manifest: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
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
    before = headline(steps.read_manifest(job.work / "evaluate"))
    after = headline(evaluated)
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


RUNNERS: dict[str, Callable[[Job, bool], bool]] = {
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


def finished(job: Job, step: str) -> Path | None:
    """The file that shows ``step`` finished in an earlier run (None when it did), for ``--from``."""
    if step == "tower" and job.tower_checkpoint is not None:
        marker = job.tower_checkpoint
    elif step == "data" and job.cfg.data.schema:
        marker = job.schema
    else:
        marker = job.folder(step) / steps.MANIFEST
    return None if marker.exists() else marker
