"""Every ``ranker`` command the README shows is run by a test, and the data commands of the README run here."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pipelines.cli import main
from tests import readme
from tests.helpers import build_tiny_export

ROOT = Path(__file__).parents[1]


def _claimed() -> set[str]:
    """Section titles passed to ``readme.commands`` / ``readme.blocks`` by a test module."""
    pattern = re.compile(r"readme\.(?:commands|blocks)\(\s*\"([^\"]+)\"")
    return {m for path in (ROOT / "tests").rglob("test_*.py") for m in pattern.findall(path.read_text())}


@pytest.mark.unit
def test_every_section_with_commands_is_run_by_a_test() -> None:
    with_commands = {title for title in readme.sections() if readme.commands(title)}
    assert len(with_commands) >= 8  # the README documents every step with a command
    unclaimed = sorted(with_commands - _claimed())
    assert not unclaimed, f"README sections whose `ranker` commands no test runs: {unclaimed}"
    assert not sorted(_claimed() - set(readme.sections())), "a test reads a README section that no longer exists"


# The README's data set sizes, made small; every other argument stays as written.
SMALLER = {"1000000": "20000"}


@pytest.mark.e2e
def test_readme_data_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`ranker data list/build`, `features build/show` as written (fashion-clicks with 20k rows, not 1M)."""
    commands = readme.commands("The `ranker` command")
    assert [c[:2] for c in commands] == [
        ["--help"], ["data", "list"], ["data", "build"], ["data", "build"], ["features", "build"], ["features", "show"]
    ]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANKER_DATA", raising=False)
    with pytest.raises(SystemExit) as help_exit:
        main(commands[0])
    assert help_exit.value.code == 0 and "features" in capsys.readouterr().out
    for command in commands[1:]:
        assert main([SMALLER.get(a, a) for a in command]) == 0, command
    out = capsys.readouterr().out
    assert "movielens-100k" in out and "fashion-clicks" in out
    manifest = json.loads((tmp_path / "data" / "raw" / "fashion-clicks" / "manifest.json").read_text())
    assert manifest["config"]["rows"] == 20000
    assert (tmp_path / "data" / "raw" / "movielens-100k" / "ratings.parquet").is_file()
    assert (tmp_path / "data" / "features" / "fashion-clicks" / "feature_map.json").is_file()


@pytest.mark.e2e
def test_readme_compression_and_evaluation_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`ranker compress`, `evaluate` (trained and compressed) and `compare` as written, where the README's paths
    hold the tiny export and its features (the compression's fine-tune shortened to 5 steps, no served program)."""
    export, features = build_tiny_export(tmp_path / "tiny")
    shutil.copytree(export, tmp_path / "runs" / "demo-movielens" / "train" / "export")
    shutil.copytree(features, tmp_path / "data" / "features" / "movielens-100k")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANKER_RUNS", str(tmp_path / "runs"))
    (compress,) = readme.commands("Compression and serving")
    assert (
        main([*compress, "--set", "finetune.steps=5", "--set", "serve.program=false", "--set", "tracking=false"]) == 0
    )
    compressed = tmp_path / compress[compress.index("--out") + 1]
    assert json.loads((compressed / "compression.json").read_text())["applied"]["prune_last"]  # done or recorded
    shutil.copytree(compressed, tmp_path / "runs" / "demo-movielens" / "compress" / "export")

    trained_eval, compressed_eval, compare = readme.commands("Evaluation")
    assert main([*trained_eval, "--bootstrap", "20"]) == 0 and main([*compressed_eval, "--bootstrap", "20"]) == 0
    assert main([*compare, "--bootstrap", "20"]) == 0
    out = tmp_path / compare[2]
    assert {"comparison.json", "comparison.md", "comparison.html", "report.html"} <= {p.name for p in out.iterdir()}
    auc = {
        name: json.loads((tmp_path / "runs" / "demo-movielens" / name / "eval-test" / "metrics.json").read_text())[
            "overall"
        ]["tasks"]["click"]["metrics"]["auc"]["value"]
        for name in ("train", "compress")
    }
    delta = json.loads((out / "comparison.json").read_text())["overall"]["tasks"]["click"]["metrics"]["auc"]
    assert (delta["a"], delta["b"]) == pytest.approx((auc["train"], auc["compress"]), abs=1e-12)
    assert delta["delta"] == pytest.approx(auc["compress"] - auc["train"], abs=1e-12)
