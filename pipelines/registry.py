"""Packaged models in the MLflow registry: ``ranker register``, ``ranker promote`` (the gate) and ``ranker rollback``.

MLflow calls go through :mod:`pipelines.tracking`; this module holds what is not MLflow: where a run's model URI is
recorded, the gate's typed config, its holdout, conditions, decision and report, and the lock that serialises gates.

- ``register RUN`` logs the run's export as a pyfunc model unless it is logged in the current store already,
  registers it and points alias ``challenger`` at the new version.
- ``promote NAME`` scores the challenger and the ``champion`` on the same frozen holdout (raw parquet of a
  ``files:`` schema, labels from the schema's rules) and moves ``champion`` only when every condition of the
  :class:`PromoteConfig` holds; the old champion becomes ``previous``. Decision, reason and deltas are tagged on the
  version and recorded as a run of the gate experiment with the HTML report. MLflow has no compare-and-set for
  aliases, so a gate holds an exclusive lock (``fcntl``, one file per tracking URI and model name) from reading the
  aliases to moving them, and re-reads ``champion`` afterwards.
- ``rollback NAME`` swaps ``champion`` and ``previous`` under the same lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import glob
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from common.config import load_yaml, to_dict
from features.processor import TRAIN_VALUES, FeatureMap, cold_exprs, label_expr
from features.schema import Schema, load_schema
from features.source import SOURCE_DIR
from pipelines import metrics as M
from pipelines import steps
from pipelines.report import render_gate
from ranker.export import find_export

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
PACKAGE_EXPERIMENT = "hiformer-ranker"  # where an export logged by `ranker register` gets its run
EXAMPLE_ROWS = 5
_CHAMPION_PREFIX, _CHALLENGER_PREFIX = "champion_", "challenger_"
COLD_SCOPE = "cold:"  # a slice rule's scope "cold:<entity>": the rows whose entity was unseen in training


# -- Which model a run or export is -----------------------------------------------------------------------------------


def _record_path(export_dir: Path) -> Path | None:
    """The JSON file that records the export's model URI: a compressed export's manifest, or the run's results."""
    manifest = export_dir / steps.MANIFEST
    if manifest.exists():
        return manifest
    results = export_dir.parent / "results.json"
    return results if results.exists() else None


def resolve_export(path: Path) -> Path:
    """The export folder of ``path``: a training run folder (``RUN/export``) or an export folder itself."""
    found = find_export(path)
    if found is not None:
        return found
    raise FileNotFoundError(f"{path}: neither an export (model.pt) nor a training run folder (export/model.pt)")


def recorded_model_uri(export_dir: Path) -> str | None:
    record = _record_path(export_dir)
    if record is None:
        return None
    data = json.loads(record.read_text())
    return (data.get("results", {}) if record.name == steps.MANIFEST else data).get("model_uri")


def record_model_uri(export_dir: Path, model_uri: str) -> None:
    """Writes ``model_uri`` into the export's record (results.json or the compress manifest), if it has one."""
    record = _record_path(export_dir)
    if record is None:
        return
    data = json.loads(record.read_text())
    (data.setdefault("results", {}) if record.name == steps.MANIFEST else data)["model_uri"] = model_uri
    record.write_text(json.dumps(data, indent=2, default=str) + "\n")


def raw_split_files(features_dir: Path, split: str) -> list[Path]:
    """The raw parquet a feature build read for ``split``: the staged source split, or the schema's files."""
    staged = features_dir / SOURCE_DIR / f"{split}.parquet"
    if staged.exists():
        return [staged]
    schema = (steps.read_manifest(features_dir) or {}).get("config", {}).get("schema", {})
    pattern = schema.get("files", {}).get(split)
    if not pattern:
        return []
    return sorted(Path(p) for p in glob.glob(str(Path(schema.get("base_dir", "")) / pattern)))


def example_rows(export_dir: Path, n: int = EXAMPLE_ROWS) -> Any | None:
    """``n`` raw rows (pandas, model input columns only) of the training data's test (or train) split, or None
    when the export does not say where its features came from."""
    config = export_dir / "train_config.json"
    features = json.loads(config.read_text()).get("features") if config.exists() else None
    if not features:
        return None
    fmap = FeatureMap.load(export_dir)
    for split in ("test", "train"):
        files = raw_split_files(Path(features), split)
        if files:
            return pl.read_parquet(files[0], n_rows=n, columns=fmap.input_columns).to_pandas()
    return None


def ensure_logged(path: Path) -> tuple[Path, str]:
    """The export of ``path`` and its model URI in the current tracking store, logging it there first if needed."""
    from pipelines import tracking

    export_dir = resolve_export(path)
    uri = recorded_model_uri(export_dir)
    if uri and tracking.logged_model_exists(uri):
        return export_dir, uri
    tracking.start_run(PACKAGE_EXPERIMENT, export_dir, run_name=f"package-{export_dir.parent.name}")
    try:
        uri = tracking.log_model(export_dir, example_rows(export_dir)).model_uri
    finally:
        tracking.end_run()
    record_model_uri(export_dir, uri)
    return export_dir, uri


def register_run(path: Path, name: str) -> int:
    """Registers the model of run/export ``path`` under ``name`` with alias ``challenger``; returns its version."""
    from pipelines import tracking

    tracking.connect()
    export_dir, uri = ensure_logged(path)
    version = tracking.register(uri, name, {"export": str(export_dir.resolve())})
    tracking.set_alias(name, CHALLENGER, version)
    return version


# -- Gate config --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldoutConfig:
    """The frozen holdout: the ``split`` files of a ``files:`` schema (raw columns and labels)."""

    schema: str = ""
    split: str = "test"


@dataclass(frozen=True)
class SliceRule:
    """No value of ``scope`` may regress beyond ``max_regression`` on ``metric`` (challenger vs champion).

    ``scope``: a slice column of the holdout schema (every value with at least ``min_slice_size`` rows is checked)
    or ``cold:<entity>`` (rows whose user, item or other cold entity the challenger never saw in training).
    Regression: the AUC drop, or the NE rise, in absolute terms.
    """

    scope: str
    metric: Literal["auc", "ne"] = "auc"
    max_regression: float = 0.02


@dataclass(frozen=True)
class PromoteConfig:
    """``ranker promote --config promote.yaml`` (unknown keys are rejected); see docs/registry.md.

    Args:
        holdout: the data both models are scored on.
        ne_tolerance: the challenger's NE may exceed the champion's by at most this (per task).
        auc_tolerance: fail when the paired interval of AUC(challenger) - AUC(champion) lies wholly below
            ``-auc_tolerance``, i.e. the challenger is worse beyond the interval (per task).
        calibration: bounds of the challenger's calibration (sum of scores / sum of labels) per task.
        slices: slice rules (column values and cold entities).
        min_slice_size: slices with fewer rows are reported but not judged.
        n_bootstrap, ci_level, seed: the paired bootstrap (groups resampled, the same for both models).
        experiment: MLflow experiment of the gate runs (decision, deltas, report).
        report_dir: local folder of the gate reports.
        lock_dir: folder of the gate lock files; empty: ``$RANKER_LOCK_DIR`` or ``<tmp>/ranker-gate-locks``.
            Every gate of one registry must see the same folder (one machine; see docs/registry.md).
        lock_timeout_s: how long a gate waits for another one to finish.
    """

    holdout: HoldoutConfig = HoldoutConfig()
    ne_tolerance: float = 0.0
    auc_tolerance: float = 0.0
    calibration: tuple[float, float] = (0.9, 1.1)
    slices: tuple[SliceRule, ...] = ()
    min_slice_size: int = 200
    n_bootstrap: int = 200
    ci_level: float = 0.95
    seed: int = 0
    experiment: str = "ranker-gate"
    report_dir: str = "runs/gates"
    lock_dir: str = ""
    lock_timeout_s: float = 600.0
    tasks: tuple[str, ...] = ()  # tasks judged; empty: every task of the challenger

    def __post_init__(self) -> None:
        low, high = self.calibration if len(self.calibration) == 2 else (1.0, 0.0)
        if not 0 < low <= 1 <= high:
            raise ValueError(f"calibration must be two bounds [low <= 1 <= high], got {list(self.calibration)}")
        if self.ne_tolerance < 0 or self.auc_tolerance < 0 or any(r.max_regression < 0 for r in self.slices):
            raise ValueError("tolerances and max_regression must be >= 0")


def load_promote_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> PromoteConfig:
    """The gate config of YAML ``path`` (None: the defaults) with ``--set`` ``overrides`` applied."""
    return load_yaml(PromoteConfig, path, overrides)


# -- Holdout and comparison ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holdout:
    schema: Schema
    files: list[Path]
    rows: pl.DataFrame  # raw columns and label_<name> per label
    digest: str  # of the files' sizes and modification times: the same digest, the same holdout


def load_holdout(cfg: HoldoutConfig) -> Holdout:
    if not cfg.schema:
        raise ValueError("the gate needs a holdout: set holdout.schema (a files: schema YAML) and holdout.split")
    schema = load_schema(cfg.schema)
    if schema.source is not None:
        raise ValueError(
            f"{cfg.schema}: a source: schema; point holdout.schema at a files: schema over the staged split "
            f"(FEATURES/{SOURCE_DIR}/{cfg.split}.parquet)"
        )
    files = schema.split_files(cfg.split)
    rows = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    labels = rows.select([label_expr(lb).alias(f"{M.LABEL_PREFIX}{lb.name}") for lb in schema.labels])
    for column in labels.columns:
        nulls = labels[column].null_count()
        if nulls:
            raise ValueError(f"holdout {cfg.schema} split {cfg.split}: {nulls} row(s) without a label for {column}")
    if rows[schema.group].null_count():
        raise ValueError(f"holdout {cfg.schema}: {rows[schema.group].null_count()} row(s) without {schema.group!r}")
    return Holdout(schema, files, rows.with_columns(labels), steps.fingerprint({"split": cfg.split}, files))


def _scopes(rule: SliceRule, comparison: dict[str, Any]) -> dict[str, Any]:
    if rule.scope.startswith(COLD_SCOPE):
        by_entity = comparison["cold_warm_by_entity"][rule.scope.removeprefix(COLD_SCOPE)]
        return {rule.scope: by_entity["cold"]}
    return comparison["slices"][rule.scope]


def compare_on_holdout(holdout: Holdout, champion: Any, challenger: Any, cfg: PromoteConfig) -> dict[str, Any]:
    """``metrics.compare`` of champion (A) and challenger (B) predictors on the holdout, paired bootstrap."""
    tasks = list(cfg.tasks) or challenger.tasks
    for who, predictor in (("challenger", challenger), ("champion", champion)):
        absent = [t for t in tasks if t not in predictor.tasks]
        if absent:
            raise ValueError(f"the {who} has no task(s) {absent}; it has {predictor.tasks}")
    absent = [t for t in tasks if f"{M.LABEL_PREFIX}{t}" not in holdout.rows.columns]
    if absent:
        raise ValueError(f"holdout {holdout.files[0]}: no label for task(s) {absent}")
    judged = [r.scope.removeprefix(COLD_SCOPE) for r in cfg.slices if r.scope.startswith(COLD_SCOPE)]
    # Cold rows of every entity the challenger's export knows are reported; those of a rule must be there.
    shown = [
        e
        for e in challenger.fmap.cold_entities
        if e in holdout.rows.columns and (challenger.export_dir / TRAIN_VALUES / f"{e}.parquet").exists()
    ]
    entities = list(dict.fromkeys(judged + shown))
    columns = [r.scope for r in cfg.slices if not r.scope.startswith(COLD_SCOPE)]
    unknown = [c for c in columns if c not in holdout.rows.columns]
    if unknown:
        raise ValueError(f"slice rule scope(s) {unknown}: not columns of the holdout (or cold:<entity>)")
    frame = holdout.rows.select(
        pl.col(holdout.schema.group).alias(M.GROUP_COLUMN),
        *[pl.col(f"{M.LABEL_PREFIX}{t}") for t in tasks],
        *cold_exprs(challenger.fmap, challenger.export_dir, entities),
        *[pl.col(c) for c in dict.fromkeys(columns + list(holdout.schema.slices))],
    )
    for prefix, predictor in ((_CHAMPION_PREFIX, champion), (_CHALLENGER_PREFIX, challenger)):
        scores = predictor.predict(holdout.rows, where=f"holdout {holdout.files[0]}")  # (B, K)
        frame = frame.with_columns(
            [pl.Series(f"{prefix}{t}", scores[:, predictor.tasks.index(t)].astype(np.float64)) for t in tasks]
        )
    config = M.EvalConfig(
        min_slice_size=cfg.min_slice_size, n_bootstrap=cfg.n_bootstrap, ci_level=cfg.ci_level, seed=cfg.seed
    )
    return M.compare(
        frame,
        None,
        tasks=tasks,
        slice_columns=list(dict.fromkeys(columns + list(holdout.schema.slices))),
        config=config,
        score_prefix_a=_CHAMPION_PREFIX,
        score_prefix_b=_CHALLENGER_PREFIX,
        names=("champion", "challenger"),
    )


@dataclass(frozen=True)
class Check:
    name: str
    held: bool
    detail: str


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def conditions(comparison: dict[str, Any], cfg: PromoteConfig) -> list[Check]:
    """Every condition of ``cfg`` on a champion (A) vs challenger (B) comparison."""
    checks = []
    low, high = cfg.calibration
    for task in comparison["data"]["tasks"]:
        m = comparison["overall"]["tasks"][task]["metrics"]
        ne, auc, cal = m["ne"], m["auc"], m["calibration"]
        checks.append(
            Check(
                f"{task}: NE not worse",
                ne["delta"] is not None and ne["delta"] <= cfg.ne_tolerance,
                f"NE {ne['a']:.4f} -> {ne['b']:.4f} (delta {_f(ne['delta'])}, tolerance {cfg.ne_tolerance})"
                if ne["delta"] is not None
                else str(ne["reason"]),
            )
        )
        upper = auc["ci_high"] if auc["ci_high"] is not None else auc["delta"]
        checks.append(
            Check(
                f"{task}: AUC not worse beyond the paired interval",
                upper is not None and upper >= -cfg.auc_tolerance,
                f"AUC {auc['a']:.4f} -> {auc['b']:.4f} (delta {_f(auc['delta'])}, interval "
                f"[{_f(auc['ci_low'])}, {_f(auc['ci_high'])}], tolerance {cfg.auc_tolerance})"
                if auc["delta"] is not None
                else str(auc["reason"]),
            )
        )
        checks.append(
            Check(
                f"{task}: calibration within [{low}, {high}]",
                cal["b"] is not None and low <= cal["b"] <= high,
                f"calibration {cal['b']:.4f}" if cal["b"] is not None else str(cal["reason"]),
            )
        )
    for rule in cfg.slices:
        sign = -1.0 if rule.metric == "auc" else 1.0  # regression: AUC down, NE up
        for value, scope in _scopes(rule, comparison).items():
            label = value if rule.scope.startswith(COLD_SCOPE) else f"{rule.scope}={value}"
            if scope["status"] != "ok":
                continue  # too small to judge: the report lists it with its row count
            for task in comparison["data"]["tasks"]:
                m = scope["tasks"][task]["metrics"][rule.metric]
                if m["delta"] is None:
                    continue
                regression = sign * m["delta"]
                checks.append(
                    Check(
                        f"{task}: slice {label} {rule.metric.upper()} regression <= {rule.max_regression}",
                        regression <= rule.max_regression,
                        f"{rule.metric.upper()} {m['a']:.4f} -> {m['b']:.4f} ({scope['n_rows']:,} rows)",
                    )
                )
    return checks


# -- Serialising gates --------------------------------------------------------------------------------------------


def lock_path(tracking_uri: str, name: str, lock_dir: str = "") -> Path:
    """One lock file per registry (tracking URI) and model name."""
    folder = Path(lock_dir or os.environ.get("RANKER_LOCK_DIR") or Path(tempfile.gettempdir()) / "ranker-gate-locks")
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{tracking_uri}\n{name}".encode()).hexdigest()[:20]
    return folder / f"gate-{key}.lock"


@contextlib.contextmanager
def gate_lock(path: Path, timeout_s: float, say: Callable[[str], None]) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``path`` (released when the process ends, even by a crash)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline, waited = time.monotonic() + timeout_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    holder = path.read_text().strip() or "another process"
                    say(f"waiting for the gate lock {path} (held by {holder})")
                    waited = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path}: another gate held the lock for over {timeout_s:.0f} s") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {_now()}".encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- The gate -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: int  # 0: promoted or nothing to do; 1: rejected
    message: str
    report: Path | None = None


def _write_report(
    cfg: PromoteConfig, name: str, version: int, decision: str, reason: str, checks: list[Check],
    facts: dict[str, Any], comparison: dict[str, Any] | None,
) -> Path:  # fmt: skip
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    out = Path(cfg.report_dir) / f"{name}-v{version}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    page = render_gate(
        f"Promotion gate: {name} v{version}", decision, reason, [(c.name, c.held, c.detail) for c in checks],
        facts, comparison,
    )  # fmt: skip
    (out / "gate.html").write_text(page, encoding="utf-8")
    record = {"decision": decision, "reason": reason, "checks": [c.__dict__ for c in checks], "facts": facts}
    (out / "gate.json").write_text(json.dumps(record | {"comparison": comparison}, indent=2, default=str) + "\n")
    return out / "gate.html"


def _deltas(comparison: dict[str, Any] | None) -> dict[str, float]:
    if comparison is None:
        return {}
    out = {}
    for task, entry in comparison["overall"]["tasks"].items():
        for metric in ("auc", "ne", "calibration"):
            delta = entry["metrics"][metric]["delta"]
            if delta is not None:
                out[f"delta.{task}.{metric}"] = float(delta)
    return out


def promote(name: str, cfg: PromoteConfig, version: int | None = None, say: Callable[[str], None] = print) -> Outcome:
    """Runs the gate for ``version`` (default: alias ``challenger``) of ``name``; see the module docstring."""
    from pipelines import tracking

    uri = tracking.connect()
    with gate_lock(lock_path(uri, name, cfg.lock_dir), cfg.lock_timeout_s, say):
        aliases = tracking.aliases(name)
        candidate = version if version is not None else aliases.get(CHALLENGER)
        if candidate is None:
            raise ValueError(f"{name}: no version given and no {CHALLENGER!r} alias; `ranker register RUN` first")
        champion = aliases.get(CHAMPION)
        if champion == candidate:
            return Outcome(0, f"{name} v{candidate} is already the champion; nothing to do")
        facts: dict[str, Any] = {"model": name, "challenger": candidate, "champion": champion, "tracking": uri}
        comparison = None
        if champion is None:
            checks: list[Check] = []
            decision, reason = "passed", "first promotion: no champion yet, nothing to compare with"
        else:
            holdout = load_holdout(cfg.holdout)
            facts |= {"holdout": [str(f) for f in holdout.files], "holdout digest": holdout.digest}
            facts |= {"holdout rows": holdout.rows.height, "config": json.dumps(to_dict(cfg))}
            say(f"gate: scoring v{candidate} (challenger) and v{champion} (champion) on {holdout.rows.height:,} rows")
            comparison = compare_on_holdout(
                holdout,
                tracking.load_predictor(f"models:/{name}/{champion}"),
                tracking.load_predictor(f"models:/{name}/{candidate}"),
                cfg,
            )
            checks = conditions(comparison, cfg)
            failed = [c for c in checks if not c.held]
            decision = "failed" if failed else "passed"
            reason = (
                "; ".join(f"{c.name} ({c.detail})" for c in failed)
                if failed
                else f"all {len(checks)} conditions held against v{champion}"
            )
        report = _write_report(cfg, name, candidate, decision, reason, checks, facts, comparison)
        tags = {"gate.decision": decision, "gate.reason": reason[:4000], "gate.compared_to": str(champion or "")}
        tags |= {"gate.decided_at": _now(), "gate.report": str(report.resolve())}
        tags |= {f"gate.{k}": f"{v:+.6f}" for k, v in _deltas(comparison).items()}
        run_tags = {"gate.model": name, "gate.version": str(candidate)} | tags
        run_name = f"gate-{name}-v{candidate}"
        run_id = tracking.log_gate_run(cfg.experiment, run_name, run_tags, _deltas(comparison), [report])
        tracking.set_version_tags(name, candidate, tags | {"gate.run_id": run_id})
        if decision != "passed":
            return Outcome(1, f"rejected {name} v{candidate}: {reason}", report)
        if champion is not None:
            tracking.set_alias(name, PREVIOUS, champion)
        tracking.set_alias(name, CHAMPION, candidate)
        if aliases.get(CHALLENGER) == candidate:
            tracking.delete_alias(name, CHALLENGER)
        now = tracking.aliases(name).get(CHAMPION)
        if now != candidate:  # only a writer that bypassed the lock (another machine, another lock dir) gets here
            raise RuntimeError(f"{name}: champion is v{now} right after setting v{candidate}: another writer moved it")
        previous = f" (previous: v{champion})" if champion is not None else ""
        return Outcome(0, f"promoted {name} v{candidate} to {CHAMPION}{previous}: {reason}", report)


def rollback(name: str, cfg: PromoteConfig, say: Callable[[str], None] = print) -> Outcome:
    """Moves ``champion`` back to ``previous`` (which then names the rolled-back version), recorded as a gate run."""
    from pipelines import tracking

    uri = tracking.connect()
    with gate_lock(lock_path(uri, name, cfg.lock_dir), cfg.lock_timeout_s, say):
        aliases = tracking.aliases(name)
        current, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
        if current is None or previous is None:
            raise ValueError(f"{name}: rollback needs both {CHAMPION!r} and {PREVIOUS!r} aliases, it has {aliases}")
        tracking.set_alias(name, CHAMPION, previous)
        tracking.set_alias(name, PREVIOUS, current)
        if tracking.aliases(name).get(CHAMPION) != previous:
            raise RuntimeError(f"{name}: champion moved by another writer during the rollback")
        tags = {"gate.model": name, "gate.version": str(previous), "gate.decision": "rollback"}
        tags |= {"gate.reason": f"rolled back from v{current}", "gate.decided_at": _now()}
        out = Path(cfg.report_dir) / f"{name}-rollback-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "rollback.json").write_text(json.dumps(tags, indent=2) + "\n")
        tracking.log_gate_run(cfg.experiment, f"rollback-{name}-v{current}", tags, {}, [out / "rollback.json"])
        tracking.set_version_tags(name, current, {"gate.rolled_back_at": tags["gate.decided_at"]})
        return Outcome(0, f"rolled back {name}: {CHAMPION} v{current} -> v{previous} ({PREVIOUS} is now v{current})")
