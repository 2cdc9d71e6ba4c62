"""Step fingerprints: a step made by other code, another config or other inputs is not taken for finished."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from pipelines import steps

pytestmark = pytest.mark.unit


def project_copy(tmp_path: Path) -> Path:
    """The project's packages copied (sources and a doc file) into a scratch root."""
    root = tmp_path / "project"
    for package in steps.PACKAGES:
        shutil.copytree(steps.ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "ranker" / "NOTES.md").write_text("not code\n")
    return root


def test_code_version_follows_source_files_only(tmp_path: Path) -> None:
    root = project_copy(tmp_path)
    first = steps.code_version.__wrapped__(root)
    assert first == steps.code_version.__wrapped__(root)  # stable
    (root / "ranker" / "NOTES.md").write_text("edited\n")
    assert steps.code_version.__wrapped__(root) == first  # documentation is not code
    kernel = root / "ranker" / "interactions" / "csrc" / "short_attention.cpp"
    kernel.write_text(kernel.read_text() + "\n// edited\n")
    second = steps.code_version.__wrapped__(root)
    assert second != first  # C++ sources count
    model = root / "ranker" / "model.py"
    model.write_text(model.read_text().replace("import math", "import math  # edited", 1))
    assert steps.code_version.__wrapped__(root) not in (first, second)


def test_a_finished_step_counts_as_finished_only_for_the_same_code(tmp_path: Path, monkeypatch) -> None:
    config, inputs = {"rows": 10}, [tmp_path / "input.parquet"]
    inputs[0].write_bytes(b"x")
    fp = steps.fingerprint(config, inputs)
    steps.write_manifest(tmp_path / "out", "data", fp, config, {}, time.time())
    assert steps.read_manifest(tmp_path / "out")["code_version"] == steps.code_version()
    assert steps.is_complete(tmp_path / "out", "data", steps.fingerprint(config, inputs))
    monkeypatch.setattr(steps, "code_version", lambda: "other-code")
    assert not steps.is_complete(tmp_path / "out", "data", steps.fingerprint(config, inputs))
