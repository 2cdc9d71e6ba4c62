"""Pipeline-step plumbing: output directories with a JSON manifest, and resuming finished steps.

A step is a function from a typed config and input artifacts to an output directory. The directory's
``manifest.json`` records the step name, its config, a fingerprint of its inputs and of the project's code, what it
produced and its headline numbers. A step whose manifest matches the current fingerprint is complete and is skipped
on re-runs (``force`` re-runs it); after a code change every step runs again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "features", "ranker", "vision_towers", "pipelines")  # the code a step's output depends on
SOURCE_SUFFIXES = (".py", ".cpp")


@functools.cache
def code_version(root: Path = ROOT) -> str:
    """Hash of the project's source files (names and bytes of every .py / .cpp under its packages).

    Part of every fingerprint, so that a step made by other code is not mistaken for finished (a model trained
    before a change in the attention, say); documentation and configs do not count.
    """
    h = hashlib.sha256()
    for package in PACKAGES:
        for f in sorted((root / package).rglob("*")):
            if f.suffix in SOURCE_SUFFIXES and f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _stamps(paths: Iterable[Path]) -> Iterable[tuple[Path, int, int]]:
    """(file, size, modification time in ns) of every file under ``paths``, in a stable order."""
    for p in sorted(Path(x) for x in paths):
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            st = f.stat()
            yield f, st.st_size, st.st_mtime_ns


def fingerprint(config: Any, paths: Iterable[Path] = ()) -> str:
    """Hash of the config, of the project's code (:func:`code_version`) and of the input files' names, sizes and
    modification times."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(code_version().encode())
    for f, size, mtime in _stamps(paths):
        h.update(f"{f}:{size}:{mtime}".encode())
    return h.hexdigest()[:16]


def input_stamps(paths: Iterable[Path]) -> dict[str, list[int]]:
    """Absolute path -> [size, modification time in ns] of every input file, for :func:`changed_inputs` later."""
    return {str(f.resolve()): [size, mtime] for f, size, mtime in _stamps(paths)}


def changed_inputs(stamps: dict[str, list[int]]) -> list[str]:
    """The files of ``input_stamps`` that are gone or differ now, each with what changed."""
    changed = []
    for name, (size, mtime) in sorted(stamps.items()):
        path = Path(name)
        if not path.is_file():
            changed.append(f"{name} (deleted)")
        elif (path.stat().st_size, path.stat().st_mtime_ns) != (size, mtime):
            changed.append(f"{name} (size or modification time differs)")
    return changed


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = Path(out_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def is_complete(out_dir: Path, step: str, fp: str) -> bool:
    manifest = read_manifest(out_dir)
    return bool(manifest and manifest.get("step") == step and manifest.get("fingerprint") == fp)


def write_manifest(out_dir: Path, step: str, fp: str, config: Any, results: dict[str, Any], started: float) -> dict:
    manifest = {
        "step": step,
        "fingerprint": fp,
        "code_version": code_version(),
        "config": config,
        "results": results,
        "seconds": round(time.time() - started, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "host": platform.node(),
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


@contextlib.contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling folder to write a step's output into; it replaces ``out_dir`` when the block succeeds.

    A failed step never leaves a folder that looks finished: the temporary folder is removed and a previous
    ``out_dir`` stays as it was.
    """
    out_dir = Path(out_dir)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        previous = out_dir.parent / f".{out_dir.name}.previous-{os.getpid()}"
        if out_dir.exists():
            out_dir.rename(previous)
        partial.rename(out_dir)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
