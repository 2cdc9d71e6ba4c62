"""The dense learning rate of `ranker train` per step: linear warm-up, then cosine decay to 0.1 x or constant."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines.train import OptimConfig, lr_schedule

pytestmark = pytest.mark.unit


def _reference_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The schedule's definition, written out: warm-up to 1 over ``warmup`` steps, then cosine from 1 to 0.1."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _rates(optim: OptimConfig, total: int, start: int, steps: int, loaded_lr: float) -> list[float]:
    """The learning rate of every optimiser step from ``start`` on, as the training loop sets it."""
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param], lr=loaded_lr)  # what a checkpoint restored, or the config's rate
    schedule = lr_schedule(optimizer, optim, total, start)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(3)
        optimizer.step()
        schedule.step()
    return rates


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
@pytest.mark.parametrize(("warmup", "total"), [(5, 40), (0, 12), (10, 10), (4, 2)])
def test_rate_per_step_equals_the_definition(schedule: str, warmup: int, total: int) -> None:
    optim = OptimConfig(dense_lr=3e-3, warmup_steps=warmup, schedule=schedule)
    rates = _rates(optim, total, start=0, steps=total + 2, loaded_lr=optim.dense_lr)
    # Exact: the same product dense_lr * factor in float64, step by step (two steps past the end stay at the floor).
    assert rates == [optim.dense_lr * _reference_factor(s, total, warmup, schedule) for s in range(total + 2)]
    if schedule == "cosine" and total > warmup:
        assert rates[-1] == pytest.approx(0.1 * optim.dense_lr)


@pytest.mark.parametrize("start", [3, 17])
def test_a_resumed_schedule_continues_with_the_same_rates(start: int) -> None:
    optim = OptimConfig(dense_lr=1e-2, warmup_steps=5, schedule="cosine")
    uninterrupted = _rates(optim, 30, start=0, steps=30, loaded_lr=optim.dense_lr)
    # The restored optimiser holds the rate of the last step before the checkpoint, not the base rate.
    resumed = _rates(optim, 30, start=start, steps=30 - start, loaded_lr=uninterrupted[start - 1])
    assert resumed == uninterrupted[start:]
