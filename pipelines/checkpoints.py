"""Training checkpoints on disk: which ones are complete, which are intact, and which one a resume starts from.

A checkpoint is a folder ``step-NNNNNNNN`` written by ``torch.distributed.checkpoint`` plus the trainer's state.
Rank 0 then writes ``FILES.json`` (every file's size and SHA-256) and, last of all, the empty ``COMPLETE`` marker:

- a folder without ``COMPLETE`` was interrupted mid-save (a killed rank, a full disk) and is never used;
- a complete folder whose files no longer match ``FILES.json`` (bytes flipped, truncated, deleted) is damaged:
  loading it is refused with the file named, and a resume falls back to the newest intact one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

COMPLETE = "COMPLETE"
FILES = "FILES.json"
_CHUNK = 1 << 20


class DamagedCheckpoint(ValueError):
    """A complete checkpoint whose files do not match the sizes and checksums recorded when it was saved."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (FILES, COMPLETE))


def seal(folder: Path) -> None:
    """Records every file's size and checksum, then marks the checkpoint complete (the marker is written last)."""
    listing = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)}
    (folder / FILES).write_text(json.dumps(listing, indent=1, sort_keys=True) + "\n")
    (folder / COMPLETE).touch()


def complete(root: Path) -> list[Path]:
    """The checkpoint folders under ``root`` that finished saving, oldest first."""
    return sorted(p for p in Path(root).glob("step-*") if (p / COMPLETE).exists())


def verify(folder: Path) -> None:
    """Raises ``DamagedCheckpoint`` naming the first file that is missing, of another size, or of other bytes."""
    folder = Path(folder)
    if not (folder / COMPLETE).exists():
        raise DamagedCheckpoint(f"checkpoint {folder}: incomplete (no {COMPLETE} marker; interrupted while saving)")
    listing_path = folder / FILES
    try:
        listing = json.loads(listing_path.read_text())
    except (OSError, ValueError) as err:
        raise DamagedCheckpoint(f"checkpoint {folder}: {listing_path} is missing or unreadable ({err})") from err
    for name, expected in sorted(listing.items()):
        path = folder / name
        if not path.is_file():
            raise DamagedCheckpoint(f"checkpoint {folder}: {path} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise DamagedCheckpoint(
                f"checkpoint {folder}: {path} has {size} bytes, {expected['bytes']} were saved (truncated or altered)"
            )
        if _sha256(path) != expected["sha256"]:
            raise DamagedCheckpoint(f"checkpoint {folder}: {path} does not match its saved checksum (corrupted)")


def newest_intact(root: Path, say: Callable[[str], None] = print) -> Path:
    """The newest complete checkpoint that passes :func:`verify`; each damaged newer one is reported through ``say``.

    Raises ``FileNotFoundError`` when there is none (the message lists what was wrong with each).
    """
    problems = []
    for folder in reversed(complete(root)):
        try:
            verify(folder)
        except DamagedCheckpoint as err:
            problems.append(str(err))
            say(f"[train] {err}; falling back to the previous complete checkpoint")
            continue
        return folder
    detail = "".join(f"\n  {p}" for p in problems)
    raise FileNotFoundError(f"{root}: no complete, intact checkpoint to resume from{detail}")
