"""Code conventions that review keeps missing (TorchRec's module linter, in spirit)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).parents[1]
MODULE_BASES = ("nn.Module", "Module", "MetaFormer", "ConVit")


def _module_classes() -> list[tuple[str, ast.ClassDef]]:
    found = []
    for package in ("features", "ranker", "vision_towers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and any(ast.unparse(b) in MODULE_BASES for b in node.bases):
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node))
    return found


def test_every_module_documents_its_arguments() -> None:
    classes = _module_classes()
    assert len(classes) > 20, "the scan found too few nn.Module classes: the check itself is broken"
    missing = [where for where, node in classes if "Args:" not in (ast.get_docstring(node) or "")]
    assert not missing, f"nn.Module classes without an 'Args:' docstring section: {missing}"


def test_torch_load_is_weights_only() -> None:
    offenders = []
    for package in ("common", "features", "ranker", "vision_towers", "pipelines"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                    kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
                    if kwargs.get("weights_only") != "True":
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


def test_only_tracking_imports_mlflow() -> None:
    importers = set()
    for package in ("common", "features", "ranker", "vision_towers", "pipelines"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                    importers.add(str(path.relative_to(ROOT)))
    assert importers == {"pipelines/tracking.py"}
