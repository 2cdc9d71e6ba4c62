"""Training configs are checked when loaded and before launch: every shipped YAML, every interaction switch,
and the errors a user sees for a typo, a key of another interaction, a bad value or missing features."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.config import ConfigError
from features.processor import FeatureMap, fit
from features.schema import load_schema
from pipelines.train import load_config, preflight
from ranker import interactions
from ranker.build import check_model_config, replace_pretrained
from tests.helpers import write_tiny_dataset

pytestmark = pytest.mark.unit
ROOT = Path(__file__).parents[2]
# Training configs; configs/compress/, configs/promote/, configs/pipeline/ and configs/sweep/ hold `ranker compress`,
# `ranker promote`, `ranker run` and `ranker sweep` configs (sweeps: tests/pipelines/test_sweep.py).
OTHER_KINDS = ("compress", "promote", "pipeline", "sweep")
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name not in OTHER_KINDS)
COMPRESS_CONFIGS = sorted((ROOT / "configs" / "compress").glob("*.yaml"))
PROMOTE_CONFIGS = sorted((ROOT / "configs" / "promote").glob("*.yaml"))
PIPELINE_CONFIGS = sorted((ROOT / "configs" / "pipeline").glob("*.yaml"))


@pytest.fixture(scope="module")
def fmap(tmp_path_factory: pytest.TempPathFactory) -> FeatureMap:
    root = tmp_path_factory.mktemp("configs")
    return fit(load_schema(write_tiny_dataset(root / "raw", n=200)), root / "features")


def _meta_build(fmap: FeatureMap, path: Path, overrides: dict[str, object] | None = None) -> None:
    cfg = load_config(path, overrides)
    model = replace_pretrained(cfg.model, None)  # the tower checkpoint is a run artefact, not part of the repo
    if model.vision is not None:  # the tiny data set has no photos; give its feature map a catalogue of 3
        fmap = dataclasses.replace(fmap, image_shape=(1, 28, 28), num_images=3)
    check_model_config(fmap, model)


def test_configs_exist() -> None:
    assert len(CONFIGS) >= 6, CONFIGS


@pytest.mark.parametrize("path", COMPRESS_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_compress_config_loads(path: Path) -> None:
    from pipelines.compress import load_compress_config

    assert COMPRESS_CONFIGS
    load_compress_config(path)


@pytest.mark.parametrize("path", PIPELINE_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_pipeline_config_loads_with_the_configs_it_names(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ranker run`'s own check: the pipeline config and its training, compression and gate configs."""
    from pipelines.job.config import load_job

    monkeypatch.chdir(ROOT)  # their paths are relative to the checkout, as the commands opening them say
    assert len(PIPELINE_CONFIGS) >= 4
    assert path.read_text().startswith(f"# ranker run {path.relative_to(ROOT)}")
    load_job(path)


@pytest.mark.parametrize("path", PROMOTE_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_promote_config_loads(path: Path) -> None:
    from pipelines.registry import PromoteConfig, load_promote_config

    assert PROMOTE_CONFIGS
    cfg = load_promote_config(path)
    if path.name == "default.yaml":  # the documented defaults are the dataclass's, apart from the data
        assert dataclasses.replace(cfg, holdout=PromoteConfig().holdout, slices=()) == PromoteConfig()


def test_promote_config_rejects_unknown_keys_and_bad_bounds(tmp_path: Path) -> None:
    from pipelines.registry import load_promote_config

    path = tmp_path / "p.yaml"
    path.write_text("slices: [{scope: country, max_regresion: 0.1}]\n")
    with pytest.raises(ConfigError, match="max_regresion"):
        load_promote_config(path)
    path.write_text("calibration: [1.2, 1.5]\n")
    with pytest.raises(ConfigError, match="calibration"):
        load_promote_config(path)
    assert load_promote_config(None, {"ne_tolerance": 0.01}).ne_tolerance == 0.01


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_builds_on_meta(fmap: FeatureMap, path: Path) -> None:
    _meta_build(fmap, path)


@pytest.mark.parametrize("interaction", interactions.list_names())
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_switching_the_interaction_from_the_command_line(fmap: FeatureMap, path: Path, interaction: str) -> None:
    """`--set model.interaction=NAME` works on every shipped config: only NAME's kwargs section is used."""
    _meta_build(fmap, path, {"model.interaction": interaction})


def _write(tmp_path: Path, model: dict[str, object]) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"features": "f", "out_dir": "o", "model": model}))
    return path


def test_a_misspelt_interaction_key_names_it_and_lists_the_valid_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, {"interaction": "hiformer", "interaction_kwargs": {"hiformer": {"num_layer": 2}}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "num_layer" in message and "'num_layers'" in message and "rank_k" in message


def test_a_key_of_another_interaction_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, {"interaction": "hiformer", "interaction_kwargs": {"dlrm": {"num_layers": 2}}})
    with pytest.raises(ConfigError, match=r"interaction_kwargs.dlrm: unknown key\(s\) \['num_layers'\]"):
        load_config(path)


def test_flat_kwargs_point_to_the_per_interaction_form(tmp_path: Path) -> None:
    path = _write(tmp_path, {"interaction": "hiformer", "interaction_kwargs": {"num_layers": 2}})
    with pytest.raises(ConfigError, match="sections are keyed by interaction name"):
        load_config(path)


def test_unknown_tower_overrides_are_rejected(tmp_path: Path) -> None:
    vision = {"tower": "caformer_fm", "overrides": {"depth": 3}}
    with pytest.raises(ConfigError, match=r"vision.overrides: unknown key\(s\) \['depth'\].*'depths'"):
        load_config(_write(tmp_path, {"vision": vision}))
    with pytest.raises(ConfigError, match="unknown tower 'caformer'"):
        load_config(_write(tmp_path, {"vision": {"tower": "caformer"}}))


def test_a_bad_value_fails_the_meta_build(fmap: FeatureMap, tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, {"interaction": "hiformer", "interaction_kwargs": {"hiformer": {"num_heads": 0}}})
    )
    with pytest.raises(ValueError, match="cannot build 'hiformer'.*num_heads"):
        check_model_config(fmap, cfg.model)


def test_preflight_names_the_command_that_builds_features(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {}), {"features": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match="ranker features build"):
        preflight(cfg)


def test_vision_without_images_or_pretrained_file_is_caught(fmap: FeatureMap, tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {"vision": {"tower": "caformer_fm", "frozen": True}}))
    with pytest.raises(ValueError, match="have no item images"):
        check_model_config(fmap, cfg.model)
    with_photos = dataclasses.replace(fmap, image_shape=(1, 28, 28), num_images=3)
    missing = dataclasses.replace(cfg.model.vision, pretrained=str(tmp_path / "none.pt"))
    with pytest.raises(ValueError, match="ranker pretrain-tower caformer_fm"):
        check_model_config(with_photos, dataclasses.replace(cfg.model, vision=missing))


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"model": {"interaction": "hiformer", "interaction_kwargs": {"hiformer": {"num_layer": 2}}}}, "num_layer"),
        ({"model": {"interaction": "dcnv2", "interaction_kwargs": {"dcnv2": {"structure": "sideways"}}}}, "structure"),
        ({"id_dropout": {"tags": 0.1}}, "id_dropout: 'tags' is multi-valued"),
    ],
    ids=["hiformer_key", "dcnv2_value", "id_dropout"],
)
def test_ranker_train_prints_one_error_line_before_launching(
    tmp_path: Path, extra: dict[str, object], expected: str
) -> None:
    schema = write_tiny_dataset(tmp_path / "raw", n=200)
    from pipelines.build_features import build_features

    build_features(schema, tmp_path / "features", progress=False)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"features": str(tmp_path / "features"), "out_dir": str(tmp_path / "run"), **extra}))
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(path), "--nproc", "2"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ranker: error: "), out.stderr
    assert expected in lines[0] and "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "run").exists(), "nothing may start before the config is valid"
