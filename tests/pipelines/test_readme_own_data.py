"""The README's "Your own data" walkthrough, run as written: its schema and train YAML, its three commands."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests import readme
from tests.helpers import write_raw_tables

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
# Fewer steps than the README's three epochs: the commands stay the README's, the run stays short.
TRAIN_OVERRIDES = ["--set", "max_steps=12", "--set", "eval_every=6", "--set", "tracking=false"]


def _walkthrough() -> tuple[dict[str, str], list[str]]:
    """Files (by the path in their first comment line) and the ``ranker`` commands of the README section."""
    yaml_files = [body for body in readme.blocks("From raw tables, end to end", "yaml") if body.startswith("# shop/")]
    files = {body.splitlines()[0].removeprefix("# "): body for body in yaml_files}
    return files, [shlex.join(["ranker", *argv]) for argv in readme.commands("From raw tables, end to end")]


def test_readme_raw_tables_walkthrough(tmp_path: Path) -> None:
    files, commands = _walkthrough()
    assert sorted(files) == ["shop/schema.yaml", "shop/train.yaml"] and len(commands) == 3
    write_raw_tables(tmp_path / "shop", n=3000)  # the tables the README describes, generated
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    outputs = []
    for command in commands:
        args = shlex.split(command)[1:] + (TRAIN_OVERRIDES if command.startswith("ranker train") else [])
        cmd = [sys.executable, "-m", "pipelines.cli", *args]
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"{command}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        outputs.append(out.stdout)
    assert "source rows in      3,000" in outputs[0]
    manifest = json.loads((tmp_path / "features" / "shop" / "manifest.json").read_text())
    counts = manifest["results"]["source"]["split"]["counts"]
    assert [counts[s]["rows"] for s in ("train", "valid", "test")] == [2400, 300, 300]
    results = json.loads((tmp_path / "runs" / "shop" / "results.json").read_text())
    assert results["steps"] == 12 and set(results["test"]) >= {"like/auc", "engaged/auc"}
    metrics = json.loads((tmp_path / "runs" / "shop" / "eval-test" / "metrics.json").read_text())
    assert set(metrics["data"]["tasks"]) == {"like", "engaged"}
    assert set(metrics["cold_warm_by_entity"]) == {"user_id", "item_id"}
    summary = (tmp_path / "runs" / "shop" / "eval-test" / "summary.md").read_text()
    assert f"user_id {100 * metrics['data']['cold_share']['user_id']:.1f}%" in summary
