"""The pipeline config (``ranker run PIPELINE.yaml``) and ``load_job``, which checks it and every config it names."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import ConfigError, load_yaml
from features.schema import load_schema
from pipelines import metrics as M
from pipelines.data import DATASETS
from pipelines.job import OPTIONAL, STEPS


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
