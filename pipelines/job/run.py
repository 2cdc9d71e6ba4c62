"""Runs the job's steps in order, each step's output in WORK/logs/<step>.log and one line per step on the terminal."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.config import parse_overrides
from pipelines.job.config import Job, load_job
from pipelines.job.runners import RUNNERS, finished
from pipelines.job.summary import SUMMARY, build_summary, duration, print_summary

_WARNING = re.compile(r"\b\w*Warning\b")


@contextlib.contextmanager
def _output_to(log: Path, verbose: bool) -> Iterator[None]:
    """Sends everything the step and its child processes print (file descriptors 1 and 2) to ``log``."""
    if verbose:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with log.open("ab") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def _warnings_in(log: Path, offset: int) -> list[str]:
    """The lines of ``log`` after ``offset`` that report a Python warning (shown, never hidden in the log)."""
    if not log.exists():
        return []
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [line for line in text.splitlines() if _WARNING.search(line) and ":" in line]


def run_pipeline(
    job: Job, start: str | None = None, until: str | None = None, force: bool = False, verbose: bool = False
) -> dict[str, Any]:
    """Runs the job's steps from ``start`` to ``until`` (inclusive); returns the summary (also WORK/summary.json)."""
    names = job.cfg.steps
    for flag, step in (("--from", start), ("--until", until)):
        if step is not None and step not in names:
            raise ValueError(f"{flag} {step}: not a step of {job.source} (its steps: {', '.join(names)})")
    first = names.index(start) if start else 0
    last = names.index(until) if until else len(names) - 1
    if first > last:
        raise ValueError(f"--from {start} comes after --until {until}")
    for earlier in names[:first]:
        missing = finished(job, earlier)
        if missing is not None:
            raise ValueError(
                f"--from {start}: step {earlier} has not finished in an earlier run ({missing} is missing); "
                f"run `ranker run {job.source} --from {earlier}` first"
            )
    job.work.mkdir(parents=True, exist_ok=True)
    logs = job.work / "logs"
    print(f"ranker run: {job.cfg.name}, {len(names)} steps in {job.work} (step output: {logs}/)", flush=True)
    began = time.time()
    for i, step in enumerate(names):
        if not first <= i <= last:
            continue
        log = logs / f"{step}.log"
        offset = log.stat().st_size if log.exists() else 0
        print(f"[{i + 1}/{len(names)}] {step} ...", end=" ", flush=True)
        started = time.time()
        try:
            with _output_to(log, verbose):
                ran = RUNNERS[step](job, force)
        except KeyboardInterrupt:
            print(f"interrupted after {duration(time.time() - started)}; finished steps are kept (log: {log})")
            raise
        except BaseException:
            print(f"failed after {duration(time.time() - started)} (log: {log})", flush=True)
            raise
        print(f"done in {duration(time.time() - started)}" if ran else "skipped (unchanged)", flush=True)
        for line in _warnings_in(log, offset):
            print(f"  {step}: {line.strip()}", file=sys.stderr)
    summary = build_summary(job, time.time() - began)
    (job.work / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print_summary(summary)
    return summary


def run_from_cli(
    path: Path, sets: list[str], start: str | None, until: str | None, force: bool, verbose: bool
) -> dict[str, Any]:
    """``ranker run``: loads and checks everything, then runs the steps."""
    job = load_job(path, parse_overrides(sets))
    return run_pipeline(job, start, until, force, verbose)
