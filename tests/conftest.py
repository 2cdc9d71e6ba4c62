"""Shared test set-up: deterministic torch, few threads (CI has 2 cores)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
