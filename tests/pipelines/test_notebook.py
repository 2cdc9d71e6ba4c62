"""notebooks/explore_predictions.ipynb runs end to end on a tiny evaluation run, in this environment's kernel."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipelines import metrics as M
from pipelines import report as R
from tests.pipelines.test_metrics import synthetic_predictions

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "explore_predictions.ipynb"


def test_explore_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    synthetic_predictions(n_rows=1500, n_groups=120).write_parquet(run_dir / "predictions.parquet")
    R.run_evaluation(
        run_dir / "predictions.parquet",
        run_dir,
        slice_columns=["country"],
        eval_config=M.EvalConfig(n_bootstrap=10, min_slice_size=100),
    )
    monkeypatch.setenv("RANKER_RUN_DIR", str(run_dir))
    monkeypatch.setenv("RANKER_TASK", "like")
    # JUPYTER_PATH comes first in the kernelspec search, so a user-level "python3" spec cannot shadow this
    # environment's; jupyter_client then starts that spec's "python" as sys.executable.
    monkeypatch.setenv("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel starts in the repository root, so `import pipelines` works without an installed package.
    client = nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == "stdout")
    stderr = "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == "stderr")
    assert "Warning:" not in stderr, stderr  # Python warnings (deprecations etc.), not the kernel's log lines
    assert f"prefix {sys.prefix}" in text, text  # the kernel ran in this environment
    assert "task 'like'" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3 + 2 + 1  # ROC, calibration, scores; country + cold/warm forests; group-size bars
