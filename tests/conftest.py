"""Shared test set-up: deterministic torch, few threads (CI has 2 cores)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)


_TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RANKER_RUNS")


@pytest.fixture(autouse=True)
def _isolated_tracking_env() -> Iterator[None]:
    """Restores the tracking variables after each test: ``mlflow.set_tracking_uri`` exports the URI into
    ``os.environ``, so a test that talked to a server would send every later test's training runs there."""
    saved = {k: os.environ.get(k) for k in _TRACKING_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real ``mlflow server`` (sqlite store, 127.0.0.1, free port), started once per session."""
    from tests.mlflow_server import tracking_server

    with tracking_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url
