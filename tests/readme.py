"""The README's sections and the ``ranker`` commands in their ``bash`` blocks, for the tests that run them.

A section runs from its heading (``##`` or ``###``) to the next heading of either level. Every section with
commands is run by a test that reads it through :func:`commands` (``tests/test_readme.py`` checks that one does).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"
_HEADING = re.compile(r"^#{2,3} (.+)$", re.M)
_BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def sections() -> dict[str, str]:
    """Heading -> body of every ``##`` / ``###`` section of the README."""
    text = README.read_text()
    heads = list(_HEADING.finditer(text))
    ends = [h.start() for h in heads[1:]] + [len(text)]
    return {h.group(1).strip(): text[h.end() : end] for h, end in zip(heads, ends, strict=True)}


def blocks(title: str, lang: str) -> list[str]:
    """The bodies of the section's fenced blocks in ``lang``."""
    return [body for kind, body in _BLOCK.findall(sections()[title]) if kind == lang]


def commands(title: str) -> list[list[str]]:
    """The section's ``ranker`` commands as argument lists without ``ranker`` (comments dropped)."""
    lines = [line for body in blocks(title, "bash") for line in body.splitlines()]
    return [shlex.split(line, comments=True)[1:] for line in lines if line.startswith("ranker ")]
