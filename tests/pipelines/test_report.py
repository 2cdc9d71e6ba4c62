"""The HTML report is self-contained, complete, and survives degenerate metrics."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import polars as pl
import pytest
from PIL import Image

from pipelines import metrics as M
from pipelines import report as R
from pipelines.cli import main
from tests.pipelines.test_metrics import synthetic_predictions

pytestmark = pytest.mark.unit

CFG = M.EvalConfig(n_bootstrap=20, min_slice_size=300, ks=(3, 10))
# As training logs them: train loss every step, validation every 20 steps.
CURVES = [
    {"step": s, "epoch": s // 50, "train/loss": 0.7 * 0.98**s}
    | ({"valid/loss": 0.72 * 0.985**s, "valid/auc": 0.6 + s / 1000} if s % 20 == 0 else {})
    for s in range(100)
]


class _Collector(HTMLParser):
    """Tags and attributes of a document."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _parse(path: Path) -> list[tuple[str, dict[str, str | None]]]:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    return collector.tags


def _self_contained_images(path: Path) -> list[str]:
    """Alt texts of the page's images, after checking that it fetches nothing and every image is a valid PNG."""
    tags = _parse(path)
    assert not [t for t, _ in tags if t in {"script", "link", "iframe"}]
    urls = [v for _, attrs in tags for k, v in attrs.items() if k in {"src", "href"} and v]
    assert urls and all(u.startswith("data:image/png;base64,") for u in urls)
    for url in urls:
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100
    return [str(attrs["alt"]) for t, attrs in tags if t == "img"]


def test_run_evaluation_writes_a_self_contained_report(tmp_path: Path) -> None:
    predictions = tmp_path / "predictions.parquet"
    synthetic_predictions(n_rows=2000, n_groups=150).write_parquet(predictions)
    paths = R.run_evaluation(
        predictions,
        tmp_path / "eval",
        slice_columns=["country"],
        eval_config=CFG,
        model_config={"model": "hiformer", "tower": {"name": "convformer_s18"}, "note": "<b>escaped</b>"},
        data_version="fashion-clicks@v1",
        training_curves=CURVES,
    )
    assert {p.name for p in paths.values()} == {"metrics.json", "summary.md", "report.html"}
    text = paths["report"].read_text(encoding="utf-8")
    alts = _self_contained_images(paths["report"])
    # 2 tasks x (ROC, calibration, score distribution) + 2 x country + 2 x cold/warm + training curves.
    assert len(alts) == 2 * 3 + 2 + 2 + 1
    assert {"ROC curve click", "calibration plot like", "score distribution click", "training curves"} <= set(alts)

    for needle in ("Slice <code>country</code>", "Cold vs warm items", "Training curves", "fashion-clicks@v1"):
        assert needle in text
    assert "&lt;b&gt;escaped&lt;/b&gt;" in text and "<b>escaped</b>" not in text
    assert json.loads(paths["json"].read_text())["kind"] == "evaluation"


def test_report_of_degenerate_metrics(tmp_path: Path) -> None:
    """Single-class task, slices all below the minimum, no cold column, no predictions file, no curves."""
    df = synthetic_predictions(n_rows=400, n_groups=40).drop("is_cold")
    df = df.with_columns(pl.lit(0, dtype=pl.Int8).alias("label_like"))
    metrics = M.evaluate(df, slice_columns=["surface"], config=M.EvalConfig(n_bootstrap=5, min_slice_size=10_000))
    path = R.write_report(metrics, None, tmp_path)
    text = path.read_text(encoding="utf-8")
    assert M.REASON_SINGLE_CLASS in text and "below min size" in text
    assert "Cold vs warm" not in text and "Training curves" not in text
    assert len(_self_contained_images(path)) == 2 * 2 + 2  # ROC + calibration per task, one forest plot per task


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    predictions = tmp_path / "p.parquet"
    synthetic_predictions(n_rows=500, n_groups=50, tasks=("click",)).write_parquet(predictions)
    config = tmp_path / "model.json"
    config.write_text(json.dumps({"layers": 2}))
    main(
        ["compare", str(predictions), str(tmp_path / "out"), "--slice", "country", "--bootstrap", "5", "--ks", "2", "4"]
    )
    main(["compare", str(predictions), str(tmp_path / "out2"), "--model-config", str(config), "--data-version", "v9"])
    main(["compare", str(predictions), str(tmp_path / "gate"), "--baseline", str(predictions), "--bootstrap", "5"])
    assert "report: " in capsys.readouterr().out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["config"]["ks"] == [2, 4] and list(metrics["slices"]) == ["country"]
    assert "v9" in (tmp_path / "out2" / "report.html").read_text()
    gate = json.loads((tmp_path / "gate" / "comparison.json").read_text())
    assert gate["overall"]["tasks"]["click"]["metrics"]["auc"]["delta"] == 0.0  # a file against itself
    assert (tmp_path / "gate" / "comparison.html").exists() and (tmp_path / "gate" / "comparison.md").exists()


def test_comparison_report(tmp_path: Path) -> None:
    df = synthetic_predictions(n_rows=2000, n_groups=150)
    better = df.with_columns((pl.col("score_click") * 0.7 + pl.col("label_click") * 0.25).alias("score_click"))
    comparison = M.compare(df, better, slice_columns=["country"], config=CFG, names=("champion", "challenger"))
    path = R.write_comparison_report(comparison, tmp_path)
    text = path.read_text(encoding="utf-8")
    # Per task the delta chart, then per task one forest plot for country and one for cold/warm.
    assert len(_self_contained_images(path)) == 2 + 2 + 2
    assert "<title>challenger vs champion</title>" in text and "Δ AUC" in text
    assert ">better</td>" in text and ">inconclusive</td>" in text  # click improved, like unchanged
    with pytest.raises(ValueError, match="compare"):
        R.render_comparison(M.evaluate(df, config=CFG))
    with pytest.raises(ValueError, match="evaluate"):
        R.render_report(comparison)


def test_training_figure_groups_splits_of_a_metric() -> None:
    fig = R.training_figure(CURVES)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(panels) == {"loss", "auc"}  # step and epoch are axes, train/valid share the loss panel
    assert sorted(line.get_label() for line in panels["loss"].get_lines()) == ["train", "valid"]
    assert len(panels["auc"].get_lines()[0].get_xdata()) == 5
    plt.close(fig)


def test_forest_plot_draws_an_interval_that_misses_its_point() -> None:
    """A percentile bootstrap interval need not contain the point estimate (few resamples, small slices): the plot
    draws it from its ends instead of crashing (matplotlib's errorbar refuses negative widths)."""
    metric = {"value": 0.70, "ci_low": 0.71, "ci_high": 0.75}  # the point lies left of its interval
    entry = {"metrics": {"auc": metric, "ne": {"value": 0.9, "ci_low": 0.8, "ci_high": 0.85}}}
    scopes = {"DE": {"n_rows": 50, "status": "ok", "tasks": {"click": entry}}}
    fig = R.forest_figure(scopes, entry, "click")
    segments = fig.axes[0].collections[0].get_segments()  # the interval line of the AUC panel
    assert [tuple(p) for p in segments[0]] == [(0.71, 0.0), (0.75, 0.0)]
    plt.close(fig)
