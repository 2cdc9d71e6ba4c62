"""``ranker run``: the main job on configs/pipeline/tiny.yaml, run as a user would (the CLI in a subprocess).

Module fixture ``job``: a full run, then a re-run that finds nothing to do. ``crashed`` (slow): a run killed in
training by the ``RANKER_FAULT`` hook (a real SIGKILL of the rank after step 15, with the checkpoint of step 10
written), then a run that continues from that checkpoint. The tests read what each run printed and left behind:
manifests, file times, registry versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipelines import steps
from pipelines.cli import main
from pipelines.train import FAULT_ENV
from tests import readme

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
TINY = ROOT / "configs" / "pipeline" / "tiny.yaml"
STEP_NAMES = ("data", "features", "train", "evaluate", "compress", "register", "promote", "score")


def _paths(root: Path) -> list[str]:
    """``--set`` arguments that put everything the job writes under ``root``."""
    return [
        f"work_dir={root / 'work'}",
        f"data.out={root / 'data' / 'raw'}",
        f"features.out={root / 'data' / 'features'}",
    ]


def _readme(i: int) -> list[str]:
    """The README's i-th `ranker run` command (they run configs/pipeline/tiny.yaml, relative to the checkout)."""
    commands = readme.commands("The main job: `ranker run`")
    assert len(commands) == 3 and all(c[:2] == ["run", "configs/pipeline/tiny.yaml"] for c in commands)
    return commands[i]


def _run(
    root: Path, *args: str, env: dict[str, str] | None = None, command: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``command`` (default: ``run`` of tiny.yaml) with everything the job writes put under ``root``."""
    sets = [item for s in _paths(root) for item in ("--set", s)]
    cmd = [sys.executable, "-m", "pipelines.cli", *(command or ["run", str(TINY)]), *sets, *args]
    full = os.environ | {"RANKER_RUNS": str(root / "runs"), "RANKER_LOCK_DIR": str(root / "locks")} | (env or {})
    full.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, timeout=1200)


def _stamps(work: Path) -> dict[str, int]:
    """Modification time of every file the job wrote, but the logs (appended to) and the summary (rewritten)."""
    files = [p for p in work.rglob("*") if p.is_file() and "logs" not in p.parts and p.name != "summary.json"]
    return {str(p): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("run")
    first = _run(root, command=_readme(0))
    before = _stamps(root / "work")
    rerun = _run(root, command=_readme(0))
    return {"root": root, "first": first, "before": before, "rerun": rerun}


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("crash")
    crash = _run(root, "--until", "train", env={FAULT_ENV: "kill:0:15"})
    features = root / "data" / "features" / steps.MANIFEST
    features_mtime = features.stat().st_mtime_ns if features.exists() else None
    resumed = _run(root, "--until", "train")
    return {"root": root, "crash": crash, "features_mtime": features_mtime, "resumed": resumed}


def _status(out: str) -> dict[str, str]:
    """Step name -> what its progress line says after the dots."""
    lines = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")]
    return {line.split(" ... ")[0]: line.split(" ... ")[1] for line in lines}


def test_a_full_run_does_every_step_and_leaves_a_manifest_each(job) -> None:
    first = job["first"]
    assert first.returncode == 0, first.stdout + first.stderr
    status = _status(first.stdout)
    assert list(status) == list(STEP_NAMES)
    assert all(status[s].startswith("done in") for s in STEP_NAMES), status
    assert "[3/8] train ... done in" in first.stdout
    for step in STEP_NAMES[2:]:
        manifest = steps.read_manifest(job["root"] / "work" / step)
        assert manifest is not None and manifest["step"] == step
    assert not (job["root"] / "work" / "train" / "pending.json").exists()


@pytest.mark.slow
def test_a_crash_in_training_is_one_line_and_the_next_run_resumes(crashed) -> None:
    crash = crashed["crash"]
    assert crash.returncode == 2, crash.stdout + crash.stderr
    status = _status(crash.stdout)
    assert list(status) == ["data", "features", "train"]
    assert status["data"].startswith("done") and status["features"].startswith("done")
    assert status["train"].startswith("failed") and "train.log" in status["train"]
    errors = [line for line in crash.stderr.splitlines() if line.startswith("ranker: error:")]
    assert len(errors) == 1 and "rank 0 was killed by SIGKILL" in errors[0], crash.stderr
    assert "Traceback" not in crash.stderr

    resumed = crashed["resumed"]
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    status = _status(resumed.stdout)
    assert status == {"data": "skipped (unchanged)", "features": "skipped (unchanged)"} | {"train": status["train"]}
    assert status["train"].startswith("done in")
    features = crashed["root"] / "data" / "features" / steps.MANIFEST
    assert features.stat().st_mtime_ns == crashed["features_mtime"]
    log = (crashed["root"] / "work" / "logs" / "train.log").read_text()
    assert "resuming configs/demo/movielens.yaml" in log and "resume from step 10" in log
    train = steps.read_manifest(crashed["root"] / "work" / "train")
    assert train is not None and train["results"]["resumed"] is True
    assert not (crashed["root"] / "work" / "train" / "pending.json").exists()


def test_the_summary_gives_metrics_compression_and_the_gate_decision_with_its_reason(job) -> None:
    out = job["first"].stdout
    summary = json.loads((job["root"] / "work" / "summary.json").read_text())
    auc = summary["metrics"]["like"]["auc"]
    assert 0.5 < auc < 1 and f"AUC {auc:.4f}" in out
    table = summary["compression"]
    assert table["compressed"]["parameters"] < table["trained"]["parameters"]
    assert "compressed vs trained: like AUC" in out
    first, second = summary["registry"]["decisions"]
    assert (first["export"], first["decision"]) == ("trained", "promoted")
    assert first["reason"].startswith("first promotion")
    # The real decision: the compressed model judged against the trained champion, with the conditions' reason.
    assert second["export"] == "compressed" and second["compared_to"] == str(first["version"])
    assert second["decision"] in ("promoted", "rejected")
    assert "NE" in second["reason"] or "conditions held" in second["reason"]
    assert f"v{second['version']} (compressed) vs champion v{first['version']}: {second['decision']}" in out
    assert Path(second["report"]).name == "gate.html" and Path(second["report"]).exists()
    champion = second["version"] if second["decision"] == "promoted" else first["version"]
    assert summary["registry"]["aliases"]["champion"] == champion
    assert summary["scores"]["rows"] == 10_000 and summary["scores"]["model"]["version"] == str(champion)
    assert "mlflow ui --backend-store-uri sqlite:///" in out and str(job["root"] / "runs" / "mlflow.db") in out


def test_a_rerun_skips_every_step_and_registers_nothing(job, monkeypatch) -> None:
    rerun = job["rerun"]
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert set(_status(rerun.stdout).values()) == {"skipped (unchanged)"}
    assert _stamps(job["root"] / "work") == job["before"]
    from pipelines import tracking

    monkeypatch.setenv("RANKER_RUNS", str(job["root"] / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.connect()
    assert tracking.version_exists("tiny", 2) and not tracking.version_exists("tiny", 3)


def test_from_and_until_run_part_of_the_job(job) -> None:
    until = _run(job["root"], command=_readme(1))  # --until evaluate: all done already
    assert until.returncode == 0, until.stdout + until.stderr
    assert _status(until.stdout) == dict.fromkeys(STEP_NAMES[:4], "skipped (unchanged)")
    out = _run(job["root"], command=_readme(2))  # --from promote --force
    assert out.returncode == 0, out.stdout + out.stderr
    status = _status(out.stdout)
    assert list(status) == ["promote", "score"] and all(s.startswith("done") for s in status.values())
    assert "[7/8] promote" in out.stdout
    summary = json.loads((job["root"] / "work" / "summary.json").read_text())
    first, second = summary["registry"]["decisions"]
    if summary["registry"]["champion"] == first["version"]:  # the compressed model was rejected: v1 stays champion
        assert first["decision"] == "no change" and second["decision"] == "rejected"


def test_from_a_step_whose_inputs_are_missing_is_one_line(tmp_path: Path, capsys) -> None:
    sets = [item for s in _paths(tmp_path) for item in ("--set", s)]
    assert main(["run", str(TINY), *sets, "--from", "promote"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("ranker: error: --from promote: step data has not finished")
    assert not (tmp_path / "work" / "promote").exists()


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"trian": {"config": "x.yaml"}}, "unknown key(s) ['trian']"),
        ({"train": {"config": "configs/demo/movielens.yaml", "nproc": "two"}}, "train.nproc: expected int"),
        ({"train": {"config": "configs/demo/movielens.yaml", "set": {"epoks": 1}}}, "configs/demo/movielens.yaml:"),
        ({"compress": {"config": "configs/compress/hiformer.yaml", "set": {"low_rank": {"energi": 1}}}}, "energi"),
        ({"promote": {"set": {"ne_tolerance": -1}}}, "tolerances and max_regression must be >= 0"),
    ],
)
def test_a_bad_config_is_one_line_naming_file_and_key_and_nothing_runs(tmp_path, capsys, change, where) -> None:
    import yaml

    data = yaml.safe_load(TINY.read_text()) | change
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    sets = [item for s in _paths(tmp_path) for item in ("--set", s)]
    assert main(["run", str(path), *sets]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    assert captured.err.startswith("ranker: error: ") and where in captured.err
    assert captured.err.startswith(f"ranker: error: {path}: ")
    assert not (tmp_path / "work").exists()
