"""`ranker sweep`: trial generation, strict configs, checks before any run, the pick, resuming, MLflow nesting."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from common.config import ConfigError, from_dict, load_yaml
from pipelines import cli
from pipelines.build_features import build_features
from pipelines.sweep import (
    SweepConfig,
    TrialResult,
    draw,
    load_sweep,
    plan,
    rank_trials,
    summarise,
    trial_id,
    trial_list,
)
from pipelines.train import TrainConfig, load_config
from tests.helpers import write_tiny_dataset
from tests.pipelines.test_train import _config

ROOT = Path(__file__).parents[2]
TINY_SWEEP = ROOT / "configs" / "sweep" / "tiny.yaml"


def _sweep_cfg(**data: Any) -> SweepConfig:
    return from_dict(SweepConfig, {"base": "b.yaml", "out_dir": "out", **data}, where="sweep.yaml:")


@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    build_features(write_tiny_dataset(root / "raw", n=400), root / "features", progress=False)
    return root / "features"


@pytest.fixture
def base(tiny_features: Path, tmp_path: Path) -> Path:
    """The tiny train config of tests/pipelines/test_train.py (without MLflow)."""
    return _config(tmp_path / "train.yaml", tiny_features, tmp_path / "unused")


# -- Trial generation ------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_grid_is_the_product_of_the_lists_in_key_order() -> None:
    space = {"optim.dense_lr": [0.001, 0.003], "model.embedding_dim": [8, 16, 32], "model.dense_tokens": [1, 2]}
    cfg = _sweep_cfg(space=space)
    trials = trial_list(cfg)
    expected = [
        {"optim.dense_lr": lr, "model.embedding_dim": d, "model.dense_tokens": t}
        for lr in space["optim.dense_lr"]
        for d in space["model.embedding_dim"]
        for t in space["model.dense_tokens"]
    ]
    assert [t.overrides for t in trials] == expected
    assert len({t.id for t in trials}) == 12
    assert trial_list(_sweep_cfg(space=space)) == trials  # the same YAML, the same trials and ids
    # The id depends on the configuration only, not on the order of its keys.
    assert trial_id({"a": 1, "b": [2, 3]}) == trial_id({"b": [2, 3], "a": 1}) != trial_id({"a": 1, "b": [3, 2]})


@pytest.mark.unit
def test_random_search_is_an_independent_seeded_draw() -> None:
    space = {
        "optim.dense_lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "optim.weight_decay": {"low": 0.0, "high": 0.5},
        "model.interaction_kwargs.dcnv2.num_cross_layers": {"low": 1, "high": 4, "int": True},
        "batch_size": {"low": 16, "high": 512, "log": True, "int": True},
        "model.interaction_kwargs.dcnv2.hidden": [[256, 128], [64]],
    }
    cfg = _sweep_cfg(space=space, search="random", trials=20, seed=7)
    trials = trial_list(cfg)
    # The reference: numpy's generator drawn key by key, in the space's order.
    rng = np.random.default_rng(7)
    expected = []
    while len(expected) < 20:
        lr = float(f"{math.exp(rng.uniform(math.log(1e-4), math.log(1e-2))):.4g}")
        wd = float(f"{rng.uniform(0.0, 0.5):.4g}")
        layers = int(rng.integers(1, 5))
        batch = min(512, int(math.exp(rng.uniform(math.log(16), math.log(513)))))
        hidden = [[256, 128], [64]][int(rng.integers(2))]
        draw_ = {
            "optim.dense_lr": lr,
            "optim.weight_decay": wd,
            "model.interaction_kwargs.dcnv2.num_cross_layers": layers,
            "batch_size": batch,
            "model.interaction_kwargs.dcnv2.hidden": hidden,
        }
        if draw_ not in expected:
            expected.append(draw_)
    assert [t.overrides for t in trials] == expected
    assert trial_list(cfg) == trials
    assert [t.overrides for t in trial_list(_sweep_cfg(space=space, search="random", trials=20, seed=8))] != expected
    for t in trials:
        assert 1e-4 <= t.overrides["optim.dense_lr"] <= 1e-2 and 16 <= t.overrides["batch_size"] <= 512
        assert type(t.overrides["batch_size"]) is int and type(t.overrides["optim.dense_lr"]) is float


@pytest.mark.unit
def test_random_draws_follow_their_distributions() -> None:
    rng = np.random.default_rng(0)
    cfg = _sweep_cfg(
        search="random",
        trials=1,
        space={"a": {"low": 1e-4, "high": 1e-2, "log": True}, "b": {"low": 1, "high": 100, "log": True, "int": True}},
    )
    log_floats = np.array([draw(rng, cfg.space["a"]) for _ in range(4000)])  # type: ignore[arg-type]
    log_ints = np.array([draw(rng, cfg.space["b"]) for _ in range(4000)])  # type: ignore[arg-type]
    choices = np.array([draw(rng, ["x", "y", "z", "w"]) for _ in range(4000)])
    assert abs(np.mean(log_floats < 1e-3) - 0.5) < 0.03  # log-uniform: half below the geometric midpoint
    assert abs(np.mean(log_ints < 10) - math.log(10) / math.log(101)) < 0.03  # the mass of [1, 10) in [1, 101)
    assert log_ints.min() == 1 and log_ints.max() == 100
    assert all(abs(np.mean(choices == c) - 0.25) < 0.03 for c in "xyzw")


# -- Strict configs --------------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"serach": "grid"}, "unknown key(s) ['serach']"),
        ({"space": {"optim.dense_lr": 0.1}}, "space.optim.dense_lr: expected a list or a mapping (Range), got 0.1"),
        ({"space": {"optim.dense_lr": {"low": 0.1}}}, "missing required key 'high'"),
        ({"space": {"optim.dense_lr": {"low": 1, "high": 2, "step": 1}}}, "unknown key(s) ['step'] for Range"),
        ({"space": {"optim.dense_lr": {"low": 1, "high": 2}}}, "space.optim.dense_lr: a range needs `search: random`"),
        ({"space": {"batch_size": []}}, "space.batch_size: empty list"),
        ({"space": {"batch_size": [16, 16]}}, "space.batch_size: repeated value"),
        ({"space": {"out_dir": ["a", "b"]}}, "'out_dir' cannot be searched"),
        ({"space": {"seed": [0, 1]}}, "training seeds go under `seeds:`"),
        ({"space": {"experiment": ["a"]}}, "'experiment' cannot be searched"),
        ({"space": {"epochs": [1]}, "fixed": {"epochs": 2}}, "'epochs' is also under fixed:"),
        ({"fixed": {"seed": 3}}, "'seed' cannot be fixed"),
        ({"trials": 3}, "trials: only for search: random"),
        ({"search": "random"}, "trials must be >= 1"),
        ({"search": "bayes"}, "search: 'bayes' is not one of ['grid', 'random']"),
        ({"search": "random", "trials": 3, "space": {"epochs": [1, 2]}}, "trials: 3 exceeds the 2 distinct"),
        (
            {"search": "random", "trials": 1, "space": {"lr": {"low": 0.0, "high": 1.0, "log": True}}},
            "log: low must be > 0",
        ),
        ({"search": "random", "trials": 1, "space": {"lr": {"low": 2, "high": 1}}}, "low 2.0 must be below high"),
        (
            {"search": "random", "trials": 1, "space": {"n": {"low": 1, "high": 2.5, "int": True}}},
            "int: low and high must be whole numbers",
        ),
        ({"seeds": []}, "seeds: a non-empty list of distinct"),
        ({"seeds": [1, 1]}, "seeds: a non-empty list of distinct"),
        ({"metric": "test/auc"}, "the pick uses validation metrics only"),
        ({"metric": "like/accuracy"}, "'accuracy' is not a validation metric"),
        ({"metric": "calibration"}, "needs `mode: max` or `mode: min`"),
        ({"mode": "up"}, "mode: 'up' is not one of"),
        ({"nproc": 0}, "nproc must be >= 1"),
    ],
)
def test_bad_sweep_configs_name_the_key(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "b.yaml", "out_dir": "out", **extra}))
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert message in str(err.value) and str(err.value).startswith(f"{path}:")


@pytest.mark.unit
def test_an_override_through_a_value_that_is_no_mapping_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("features: f\nout_dir: o\nepochs: 2\n")
    with pytest.raises(ConfigError, match=r"override 'epochs.x': epochs is 2, not a mapping"):
        load_yaml(TrainConfig, path, {"epochs.x": 1})


@pytest.mark.unit
@pytest.mark.parametrize(
    ("space", "extra", "message"),
    [
        (
            {"model.interaction_kwargs.hiformer.num_layerz": [1, 2]},
            {},
            "space.model.interaction_kwargs.hiformer.num_layerz: value 1: ",
        ),
        ({"model.embedding_dimm": [8]}, {}, "space.model.embedding_dimm: value 8: "),
        ({"batch_size": ["big"]}, {}, 'space.batch_size: value "big": '),
        ({"optim.dense_lr": [0.001, -1]}, {}, "space.optim.dense_lr: value -1: "),
        ({"model.interaction_kwargs.hiformer.num_heads": [1, 3]}, {}, "num_heads: value 3: model: cannot build"),
        ({"model.interaction": ["hiformer", "nope"]}, {}, 'space.model.interaction: value "nope": '),
        (
            {"model.interaction_kwargs.dcnv2.num_cross_layers": [1, 2]},
            {},
            "no trial uses this key: it is a hyper-parameter of 'dcnv2', but every trial trains 'hiformer'",
        ),
        ({"epochs": [1]}, {"fixed": {"patience": 0}}, "with `fixed:`: "),
        ({"epochs": [1]}, {"metric": "like/auc"}, "metric: 'like' is not a task of"),
        # Each value passes on its own (with 2 heads, or width 8); together, width 6 is not divisible by 4 heads.
        (
            {"model.embedding_dim": [8, 6], "model.interaction_kwargs.hiformer.num_heads": [2, 4]},
            {},
            "(model.embedding_dim=6 model.interaction_kwargs.hiformer.num_heads=4): model: cannot build",
        ),
    ],
)
def test_every_value_is_checked_before_any_run(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], space: dict, extra: dict, message: str
) -> None:
    sweep = tmp_path / "sweep.yaml"
    out = tmp_path / "sweep-out"
    sweep.write_text(yaml.safe_dump({"base": str(base), "out_dir": str(out), "space": space, **extra}))
    assert cli.main(["sweep", str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ranker: error: {sweep}: ") and message in err[0], err
    assert not out.exists()  # nothing started


# -- The pick and the summary (runs written by hand) ------------------------------------------------------------------


def _fake_results(run_dir: Path, rng: np.random.Generator) -> None:
    """A results.json as pipelines.train writes it: validation records, the best first-task AUC's step."""
    history = [
        {
            "step": s,
            "valid/click/auc": float(rng.uniform(0.5, 0.8)),
            "valid/click/logloss": float(rng.uniform(0.4, 0.7)),
        }
        for s in (4, 8, 12)
    ]
    best = max(history, key=lambda h: h["valid/click/auc"])
    results = {"best_step": best["step"], "history": history, "test": {"click/auc": 1.0, "click/logloss": 0.0}}
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(results))


@pytest.mark.unit
@pytest.mark.parametrize(("metric", "maximise"), [("auc", True), ("logloss", False)])
def test_the_pick_is_the_best_validation_mean_over_seeds(
    base: Path, tmp_path: Path, metric: str, maximise: bool
) -> None:
    cfg = _sweep_cfg(
        base=str(base), out_dir=str(tmp_path / "s"), space={"optim.dense_lr": [0.001, 0.002, 0.003, 0.004]},
        seeds=[0, 1, 2], metric=metric,
    )  # fmt: skip
    runs, key = plan(cfg, "sweep.yaml:")
    assert key == f"valid/click/{metric}" and len(runs) == 12
    rng = np.random.default_rng(0)
    for run in runs:
        _fake_results(run.dir, rng)
    failed = runs[4].name  # one seed of the second trial
    result = summarise(cfg, "sweep.yaml", runs, key, {failed: "training failed"})
    # Independently: each run's value is its exported model's, i.e. the record at best_step (for logloss not the
    # minimum over the history); test metrics (which here would win every pick) are never read.
    means = {}
    for trial in {r.trial.id for r in runs}:
        values = []
        for run in (r for r in runs if r.trial.id == trial):
            res = json.loads((run.dir / "results.json").read_text())
            values.append(next(h for h in res["history"] if h["step"] == res["best_step"])[key])
        if all(r.name != failed for r in runs if r.trial.id == trial):
            means[trial] = (np.mean(values), np.std(values, ddof=1))
    best = (max if maximise else min)(means, key=lambda t: means[t][0])
    assert result["best"]["trial"] == best
    assert result["best"]["mean"] == pytest.approx(means[best][0]) and result["best"]["std"] == pytest.approx(
        means[best][1]
    )
    order = [t["id"] for t in result["trials"]]
    assert order[:3] == sorted(means, key=lambda t: means[t][0], reverse=maximise)
    assert order[3] == runs[4].trial.id  # the trial with a failed seed: listed last, never picked
    # best.yaml: the best trial's config at the first seed, in its own out_dir; `ranker train` loads it as is.
    picked = next(r for r in runs if r.trial.id == best and r.seed == 0)
    best_cfg = load_config(tmp_path / "s" / "best.yaml")
    assert best_cfg.optim.dense_lr == picked.cfg.optim.dense_lr and best_cfg.out_dir == str(tmp_path / "s" / "best")
    assert best_cfg == load_config(base, {"optim.dense_lr": picked.cfg.optim.dense_lr, "out_dir": best_cfg.out_dir})
    md = (tmp_path / "s" / "summary.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith(f"| **1** | **{best}** |") and " ± " in rows[0]
    assert rows[3].startswith(f"| - | {runs[4].trial.id} |") and "n/a" in rows[3]
    html = (tmp_path / "s" / "summary.html").read_text()
    assert html.count('class="best"') == 1 and f'font-weight:600"><td>1</td><td>{best}</td>' in html


@pytest.mark.unit
def test_ranking_without_a_complete_trial_picks_nothing() -> None:
    cfg = _sweep_cfg(space={"epochs": [1, 2]})
    results = [TrialResult(t, {0: None}) for t in trial_list(cfg)]
    assert [r.complete for r in rank_trials(results, maximise=True)] == [False, False]


# -- End to end ------------------------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The SQLite store `ranker train` uses with RANKER_RUNS in tmp_path.

    ``mlflow.set_tracking_uri`` (called by the sweep in this process) exports ``MLFLOW_TRACKING_URI`` for
    subprocesses; recorded here as unset, it is removed again after the test instead of steering later tests' runs.
    """
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("RANKER_RUNS", str(tmp_path / "mlruns"))
    return tmp_path / "mlruns" / "mlflow.db"


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _states(listing: str) -> dict[str, str]:
    """Run name -> the first word of its state in a ``--dry-run`` listing."""
    return {line.split()[0]: line.split()[1] for line in listing.splitlines() if line.startswith("  ")}


def _mlflow_runs(db: Path) -> dict[str, tuple[str, str | None, str]]:
    """run id -> (name, parent run id, status), read from the SQLite store with sqlite3."""
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT r.run_uuid, r.name, t.value, r.status FROM runs r "
            "LEFT JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId'"
        ).fetchall()
    return {run_id: (name, parent, status) for run_id, name, parent, status in rows}


@pytest.mark.e2e
@pytest.mark.dist
@pytest.mark.slow  # ~100 s; the default suite keeps the dry run and the config checks
def test_tiny_sweep_picks_on_validation_nests_runs_resumes_and_best_yaml_reruns(
    tiny_features: Path,
    mlflow_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(ROOT)  # the tiny sweep's base path is relative, as in the README
    out = tmp_path / "sweep"
    args = ["sweep", str(TINY_SWEEP), "--set", f"fixed.features={tiny_features}", "--set", f"out_dir={out}"]
    assert cli.main([*args, "--max-parallel", "2"]) == 0
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 2
    # The pick, read independently: the validation AUC of each run's exported (best) checkpoint, the argmax.
    values, histories = {}, {}
    for run in runs:
        res = json.loads((run / "results.json").read_text())
        values[run.name] = next(h for h in res["history"] if h["step"] == res["best_step"])["valid/click/auc"]
        histories[run.name] = res
        assert values[run.name] == max(h["valid/click/auc"] for h in res["history"])
    picked = max(values, key=values.__getitem__)
    summary = json.loads((out / "sweep.json").read_text())
    assert f"{summary['best']['trial']}-s0" == picked and summary["best"]["mean"] == values[picked]
    layers = sorted(
        yaml.safe_load((run / "config.yaml").read_text())["model"]["interaction_kwargs"]["hiformer"]["num_layers"]
        for run in runs
    )
    assert layers == [1, 2]  # the grid of configs/sweep/tiny.yaml, one run each
    best_yaml = yaml.safe_load((out / "best.yaml").read_text())
    run_yaml = yaml.safe_load((out / "runs" / picked / "config.yaml").read_text())
    assert best_yaml.pop("out_dir") == str(out / "best") and run_yaml.pop("out_dir") == str(out / "runs" / picked)
    assert best_yaml == run_yaml
    # MLflow: one parent, each run a child under it, in the store `ranker train` uses.
    db = mlflow_db
    parent = json.loads((out / "mlflow_parent.json").read_text())["run_id"]
    mlflow_runs = _mlflow_runs(db)
    assert mlflow_runs[parent] == ("sweep", None, "FINISHED")
    children = {name: p for run_id, (name, p, status) in mlflow_runs.items() if run_id != parent}
    assert children == {run.name: parent for run in runs}

    # A re-run trains nothing: every file of the runs is untouched and MLflow gets no new run.
    before = _mtimes(out / "runs")
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "[sweep] 2 skipped, 0 trained" in capsys.readouterr().out
    assert _mtimes(out / "runs") == before
    assert _mlflow_runs(db).keys() == mlflow_runs.keys()

    # A run that died before it was marked finished is trained again (or continued with --resume).
    other = next(run for run in runs if run.name != picked)
    (other / "manifest.json").unlink()
    assert cli.main([*args, "--dry-run"]) == 0
    assert _states(capsys.readouterr().out) == {other.name: "to", picked: "finished"}  # "to train"
    assert cli.main([*args, "--dry-run", "--resume"]) == 0
    assert _states(capsys.readouterr().out) == {other.name: "resumable", picked: "finished"}

    # best.yaml runs as is with `ranker train`, and retrains the picked run exactly.
    assert cli.main(["train", "--config", str(out / "best.yaml")]) == 0
    rerun = json.loads((out / "best" / "results.json").read_text())
    assert rerun["history"] == histories[picked]["history"] and rerun["test"] == histories[picked]["test"]


@pytest.mark.e2e
@pytest.mark.dist
@pytest.mark.slow
def test_an_interrupted_sweep_fails_clearly_and_resumes(
    tiny_features: Path,
    mlflow_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "sweep"
    args = ["sweep", str(TINY_SWEEP), "--set", f"fixed.features={tiny_features}", "--set", f"out_dir={out}"]
    monkeypatch.setenv("RANKER_STOP_AT_STEP", "8")  # every run ends right after its checkpoint at step 8
    assert cli.main(args) == 2
    err = capfd.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ranker: error: sweep: 2 of 2 runs failed") and "without writing results.json" in err
    assert not (out / "best.yaml").exists()
    monkeypatch.delenv("RANKER_STOP_AT_STEP")
    assert cli.main([*args, "--resume"]) == 0
    assert capfd.readouterr().out.count("resume from step 8") == 2
    for run in (out / "runs").iterdir():
        assert [h["step"] for h in json.loads((run / "results.json").read_text())["history"]] == [4, 8, 12]
    assert (out / "best.yaml").exists()
    parents = {p for _, p, _ in _mlflow_runs(mlflow_db).values() if p}
    assert parents == {json.loads((out / "mlflow_parent.json").read_text())["run_id"]}  # one parent, re-opened


@pytest.mark.unit
def test_shipped_sweeps_are_valid_and_stable() -> None:
    """Every configs/sweep/*.yaml loads and opens with its command; a random sweep's trials never change."""
    for path in sorted((ROOT / "configs" / "sweep").glob("*.yaml")):
        load_sweep(path)
        assert path.read_text().startswith(f"# ranker sweep configs/sweep/{path.name}"), path
    trials = trial_list(load_sweep(ROOT / "configs" / "sweep" / "movielens-hiformer.yaml"))
    assert len(trials) == 12 and len({t.id for t in trials}) == 12
    # Pinned: a re-run of the same sweep (any machine, any day) must find its finished runs under the same ids.
    assert trials[0].id == "757cb15bf2" and trials[0].overrides["optim.dense_lr"] == 0.0028
