"""A small synthetic raw data set on disk, in the shape users bring: parquet + schema YAML."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import write_tiny_dataset


@pytest.fixture
def tiny_data(tmp_path: Path) -> Callable[..., Path]:
    """Writes train/valid/test parquet and schema.yaml; returns the schema path. Keyword args edit the schema."""

    def build(n: int = 400, **schema_overrides: object) -> Path:
        return write_tiny_dataset(tmp_path / "raw", n, **schema_overrides)

    return build
