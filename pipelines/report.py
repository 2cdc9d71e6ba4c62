"""Self-contained HTML evaluation report, and the one-call evaluation step (predictions -> metrics + report).

The report is one HTML file with inline CSS and PNG plots embedded as base64 (matplotlib, Agg backend), so it
opens offline, can be attached to a run or an e-mail, and loads nothing from the network. It shows:

* headline cards and a summary table (value and bootstrap interval of every metric, per task);
* per task: ROC curve (overall, cold, warm), reliability diagram and, when the predictions file is given, the
  score distribution of positives and negatives;
* per slice column: forest plots of AUC and NE per slice value with intervals against the overall value;
* cold vs warm items; training curves when given; the model config and data version.

``render_comparison`` does the same for a ``metrics.compare`` result: deltas B - A with paired intervals and a
verdict per metric, per slice and for cold vs warm.

From the command line (``pipelines/cli.py``)::

    ranker compare challenger.parquet runs/gate --baseline champion.parquet   # + comparison.html
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never open a window, also where no display exists

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pipelines import metrics as M  # noqa: E402

REPORT_NAME = "report.html"
COMPARISON_NAME = "comparison.html"
# Slice values shown per forest plot; the largest slices (by rows) are kept.
MAX_SLICE_VALUES = 30
COLORS = {"overall": "#3b5bdb", "cold": "#e8590c", "warm": "#2b8a3e", "pos": "#c2255c", "neg": "#495057"}
STYLE = {
    "figure.dpi": 110,
    "font.size": 9.5,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e9ecef",
    "grid.linewidth": 0.8,
    "axes.edgecolor": "#adb5bd",
    "legend.frameon": False,
}
CARD_METRICS = ("auc", "gauc", "ne", "calibration")
VERDICT_COLORS = {"better": "#2b8a3e", "worse": "#c92a2a", "inconclusive": "#868e96"}


# ---------------------------------------------------------------------------------------------------------------
# Plots. Each returns a Figure; _png closes it and returns the embeddable data URI.
# ---------------------------------------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def metric_value(entry: Mapping[str, Any] | None, metric: str, key: str = "value") -> float | None:
    """A metric's ``key`` (``"value"``; ``"delta"``, ``"a"`` or ``"b"`` of a comparison) from a task entry.

    None when the scope has no metrics or the metric is undefined.
    """
    if entry is None or entry.get("metrics") is None:
        return None
    return entry["metrics"][metric][key]


def _scoped_entries(metrics: Mapping[str, Any], task: str) -> dict[str, Mapping[str, Any]]:
    """Task entries of the overall scope and, when present with metrics, cold and warm."""
    entries = {"overall": metrics["overall"]["tasks"][task]}
    for name, scope in (metrics.get("cold_warm") or {}).items():
        if scope["tasks"][task].get("roc") is not None:
            entries[name] = scope["tasks"][task]
    return entries


def roc_figure(metrics: Mapping[str, Any], task: str) -> Figure:
    """ROC curves of one task: overall, cold and warm."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        ax.plot([0, 1], [0, 1], ls="--", lw=1, color="#adb5bd", label="random")
        for name, entry in _scoped_entries(metrics, task).items():
            auc = metric_value(entry, "auc")
            label = f"{name}  AUC {auc:.4f}" if auc is not None else f"{name}  AUC n/a"
            ax.plot(
                entry["roc"]["fpr"],
                entry["roc"]["tpr"],
                lw=2 if name == "overall" else 1.4,
                color=COLORS[name],
                label=label,
            )
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="false positive rate",
            ylabel="true positive rate",
            title=f"ROC · {task}",
        )
        ax.set_aspect("equal")
        ax.legend(loc="lower right")
    return fig


def reliability_figure(metrics: Mapping[str, Any], task: str) -> Figure:
    """Reliability diagram: observed positive rate against mean score per equal-count bin, with binomial errors."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        top = 0.0
        for name, entry in _scoped_entries(metrics, task).items():
            curve = entry["reliability"]
            points = [
                (s, r, n)
                for s, r, n in zip(curve["mean_score"], curve["positive_rate"], curve["count"], strict=True)
                if s is not None
            ]
            if not points:
                continue
            s, r, n = (np.array(v, dtype=float) for v in zip(*points, strict=True))
            err = np.sqrt(np.clip(r * (1 - r), 1e-12, None) / np.maximum(n, 1))
            cal = metric_value(entry, "calibration")
            label = f"{name}  calibration {cal:.3f}" if cal is not None else name
            ax.errorbar(s, r, yerr=err, fmt="o-", ms=4, lw=1.4, capsize=2, color=COLORS[name], label=label)
            top = max(top, float(s.max()), float((r + err).max()))
        top = min(1.0, top * 1.08) or 1.0
        ax.plot([0, top], [0, top], ls="--", lw=1, color="#adb5bd", label="perfect")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="mean predicted probability", ylabel="observed positive rate")
        ax.set_title(f"Calibration · {task}")
        ax.set_aspect("equal")
        ax.legend(loc="upper left")
    return fig


def score_histograms(predictions_path: str | Path, tasks: Sequence[str], n_bins: int = 60) -> dict[str, dict[str, Any]]:
    """Score histograms of positives and negatives per task, streamed over the parquet in record batches.

    Bins are evenly spaced on the logit scale between 1e-4 and 1 - 1e-4 (scores outside fall in the end bins),
    which resolves both rare-click score mass near 0 and confident scores near 1.
    """
    edges = 1.0 / (1.0 + np.exp(-np.linspace(-math.log(1e4 - 1), math.log(1e4 - 1), n_bins + 1)))
    hist = {t: {"edges": edges, "pos": np.zeros(n_bins), "neg": np.zeros(n_bins)} for t in tasks}
    columns = [c for t in tasks for c in (f"{M.LABEL_PREFIX}{t}", f"{M.SCORE_PREFIX}{t}")]
    for batch in pq.ParquetFile(predictions_path).iter_batches(batch_size=1 << 20, columns=columns):
        for t in tasks:
            labels = batch.column(f"{M.LABEL_PREFIX}{t}").to_numpy() > 0
            scores = np.clip(batch.column(f"{M.SCORE_PREFIX}{t}").to_numpy(), edges[0], edges[-1])
            hist[t]["pos"] += np.histogram(scores[labels], edges)[0]
            hist[t]["neg"] += np.histogram(scores[~labels], edges)[0]
    return hist


def distribution_figure(hist: Mapping[str, Any], task: str) -> Figure:
    """Score densities of positives and negatives (each normalised to its own total) on a logit axis."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        edges = hist["edges"]
        for key, label in (("neg", "negatives"), ("pos", "positives")):
            counts = hist[key]
            total = counts.sum()
            if total:
                ax.stairs(counts / total, edges, fill=True, alpha=0.35, color=COLORS[key])
                ax.stairs(counts / total, edges, lw=1.5, color=COLORS[key], label=f"{label} ({int(total):,})")
        ax.set_xscale("logit")
        occupied = np.flatnonzero(hist["neg"] + hist["pos"])
        if occupied.size:  # zoom to the populated bins, one empty bin either side
            ax.set_xlim(edges[max(occupied[0] - 1, 0)], edges[min(occupied[-1] + 2, len(edges) - 1)])
        ax.set(xlabel="score (logit scale)", ylabel="share of rows", title=f"Score distribution · {task}")
        ax.legend(loc="upper left")
    return fig


def forest_figure(
    scopes: Mapping[str, Mapping[str, Any]], overall: Mapping[str, Any], task: str, key: str = "value"
) -> Figure:
    """AUC and NE per slice value with bootstrap intervals; the overall value is the reference line.

    With ``key="delta"`` (a comparison) the points are B - A with their paired intervals and 0 is marked too.
    Slices below the minimum size (no metric) are listed greyed with their row count.
    """
    names = sorted(scopes, key=lambda k: -scopes[k]["n_rows"])[:MAX_SLICE_VALUES]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(6.6, 1.1 + 0.3 * len(names)), sharey=True, squeeze=False)
        y = np.arange(len(names))[::-1]
        for ax, metric in zip(axes[0], ("auc", "ne"), strict=True):
            if key == "delta":
                ax.axvline(0.0, color="#868e96", lw=1)
            reference = metric_value(overall, metric, key)
            if reference is not None:
                ax.axvline(reference, color=COLORS["overall"], lw=1.2, ls="--", label=f"overall {reference:.4f}")
                ax.legend(loc="lower right" if metric == "auc" else "lower left", fontsize=8)
            for yi, name in zip(y, names, strict=True):
                entry = scopes[name]["tasks"][task]
                m = None if entry["metrics"] is None else entry["metrics"][metric]
                if m is None or m[key] is None:
                    continue
                _interval(ax, m[key], yi, m["ci_low"], m["ci_high"], COLORS.get(name, "#343a40"), 5)
            ax.set_title(f"{'Δ ' if key == 'delta' else ''}{metric.upper()} · {task}")
        labels = [
            f"{name}  ({scopes[name]['n_rows']:,} rows)"
            if scopes[name]["status"] == "ok"
            else f"{name}  ({scopes[name]['n_rows']:,} rows, {scopes[name]['status'].replace('_', ' ')})"
            for name in names
        ]
        axes[0][0].set_yticks(y, labels)
        for tick, name in zip(axes[0][0].get_yticklabels(), names, strict=True):
            if scopes[name]["status"] != "ok":
                tick.set_color("#adb5bd")
        axes[0][0].set_ylim(-0.7, len(names) - 0.3)
    return fig


def _interval(ax: Any, x: float, y: float, lo: float | None, hi: float | None, color: str, size: float) -> None:
    """A point and its horizontal interval, drawn from the interval's own ends: a percentile bootstrap interval need
    not contain the point estimate (small slices, few resamples), which errorbar's +/- form cannot draw."""
    if lo is not None and hi is not None:
        ax.hlines(y, lo, hi, color=color, lw=1.5)
        ax.plot([lo, hi], [y, y], "|", ms=size + 2, color=color)
    ax.plot(x, y, "o", ms=size, color=color)


def delta_figure(comparison: Mapping[str, Any], task: str) -> Figure:
    """Change of every metric, B vs A, in percent of A with its paired interval, coloured by verdict."""
    entries = comparison["overall"]["tasks"][task]["metrics"]
    rows = [(name, m) for name, m in entries.items() if m["delta"] is not None and m["a"]]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 1.0 + 0.36 * len(rows)))
        ax.axvline(0.0, color="#868e96", lw=1)
        y = np.arange(len(rows))[::-1]
        for yi, (_, m) in zip(y, rows, strict=True):
            scale = 100.0 / abs(m["a"])
            lo, hi = (None, None) if m["ci_low"] is None else (m["ci_low"] * scale, m["ci_high"] * scale)
            _interval(ax, m["delta"] * scale, yi, lo, hi, VERDICT_COLORS[m["verdict"]], 6)
        ax.set_yticks(y, [f"{name}  {m['a']:.4f} → {m['b']:.4f}" for name, m in rows])
        ax.set(xlabel="B − A, % of A", title=f"Change by metric · {task}")
        ax.set_ylim(-0.7, len(rows) - 0.3)
    return fig


def training_figure(curves: Sequence[Mapping[str, float]]) -> Figure:
    """Small multiples against ``step``: one panel per metric, one line per split.

    Keys ``"<split>/<metric>"`` (``"train/loss"``, ``"valid/loss"``) share the panel of ``<metric>``; plain keys get
    their own. ``step`` and ``epoch`` are axes, not metrics. Entries may log different keys (validation every N
    steps).
    """
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for row in curves:
        for key, value in row.items():
            if key in {"step", "epoch"} or value is None:
                continue
            split, _, metric = key.rpartition("/")
            series.setdefault(metric, {}).setdefault(split, []).append((row["step"], value))
    palette = [COLORS["overall"], COLORS["cold"], COLORS["warm"], COLORS["pos"], COLORS["neg"]]
    n_cols = max(1, min(3, len(series)))
    n_rows = max(1, math.ceil(len(series) / n_cols))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 2.9 * n_rows), squeeze=False)
        for ax, (metric, splits) in zip(axes.flat, sorted(series.items()), strict=False):
            for color, (split, points) in zip(itertools.cycle(palette), sorted(splits.items()), strict=False):
                steps, values = zip(*sorted(points), strict=True)
                marker = "o" if len(points) < 30 else None
                ax.plot(steps, values, marker=marker, ms=3, lw=1.6, color=color, label=split or None)
            if any(splits):
                ax.legend()
            ax.set(title=metric, xlabel="step")
        for ax in axes.flat[len(series) :]:
            ax.set_visible(False)
        fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------
# HTML.
# ---------------------------------------------------------------------------------------------------------------

CSS = """
:root { --ink:#212529; --muted:#6c757d; --line:#dee2e6; --card:#f8f9fa; --accent:#3b5bdb; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--ink); background:#fff; }
header { padding:28px 40px 18px; border-bottom:1px solid var(--line);
         background:linear-gradient(135deg,#edf2ff 0%,#fff 70%); }
header h1 { margin:0 0 6px; font-size:24px; }
header .meta { color:var(--muted); }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; background:#dbe4ff; color:#364fc7;
         font-size:12px; margin-right:6px; }
main { padding:8px 40px 40px; max-width:1500px; }
h2 { margin:34px 0 10px; padding-bottom:4px; border-bottom:2px solid var(--line); font-size:19px; }
h3 { margin:22px 0 8px; font-size:16px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(190px,1fr)); gap:12px; margin:14px 0; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 14px; }
.card .name { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .value { font-size:26px; font-weight:600; }
.card .ci { color:var(--muted); font-size:12px; }
.plots { display:grid; grid-template-columns:repeat(auto-fill,minmax(420px,1fr)); gap:16px; align-items:start; }
.plots.wide { grid-template-columns:1fr; }
.plots.forest { grid-template-columns:repeat(auto-fill,minmax(560px,1fr)); }
figure { margin:0; background:#fff; border:1px solid var(--line); border-radius:10px; padding:8px; }
figure img { max-width:100%; height:auto; display:block; margin:0 auto; }  /* natural size, shrink to fit */
table { border-collapse:collapse; margin:8px 0 16px; font-variant-numeric:tabular-nums; }
th, td { padding:5px 12px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }
th:first-child, td:first-child { text-align:left; }
th { background:var(--card); font-weight:600; }
td.na { color:var(--muted); font-style:italic; }
.note { color:var(--muted); font-size:13px; }
.pair { display:grid; grid-template-columns:minmax(0,auto) minmax(360px,720px); gap:24px; align-items:start; }
.columns { display:grid; grid-template-columns:repeat(auto-fit,minmax(320px,1fr)); gap:24px; align-items:start; }
table.kv td { text-align:left; word-break:break-all; white-space:normal; }
table.kv td:first-child { color:var(--muted); white-space:nowrap; }
pre { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px; overflow:auto;
      font-size:12.5px; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _figure(uri: str, alt: str) -> str:
    return f'<figure><img src="{uri}" alt="{_e(alt)}"></figure>'


def _cards(entry: Mapping[str, Any]) -> str:
    cards = []
    for metric in CARD_METRICS:
        m = entry["metrics"][metric]
        ci = f"[{_num(m['ci_low'])}, {_num(m['ci_high'])}]" if m["ci_low"] is not None else (m["reason"] or "")
        cards.append(
            f'<div class="card"><div class="name">{_e(metric)}</div><div class="value">{_num(m["value"])}</div>'
            f'<div class="ci">{_e(ci)}</div></div>'
        )
    return f'<div class="cards">{"".join(cards)}</div>'


def _metric_table(entry: Mapping[str, Any], level: float) -> str:
    rows = []
    for name, m in entry["metrics"].items():
        if m["value"] is None:
            rows.append(f'<tr><td>{_e(name)}</td><td class="na" colspan="2">{_e(m["reason"])}</td></tr>')
        else:
            ci = f"{_num(m['ci_low'])} – {_num(m['ci_high'])}" if m["ci_low"] is not None else ""
            rows.append(f"<tr><td>{_e(name)}</td><td>{_num(m['value'])}</td><td>{ci}</td></tr>")
    head = f"<tr><th>metric</th><th>value</th><th>{round(100 * level)}% interval</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _kv_table(values: Mapping[str, Any]) -> str:
    """Two-column table of a flat dict; lists are joined, strings shown as they are, anything else as JSON."""

    def plain(v: Any) -> str:
        return ", ".join(map(str, v)) if isinstance(v, list) else v if isinstance(v, str) else json.dumps(v)

    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(plain(v))}</td></tr>" for k, v in values.items())
    return f'<table class="kv">{rows}</table>'


def _counts_note(counts: Mapping[str, Any]) -> str:
    return (
        f'<p class="note">{counts["n_rows"]:,} rows, {counts["n_positive"]:,} positives (base rate '
        f"{_num(counts['base_rate'])}). GAUC over {counts['gauc_groups']:,} groups, "
        f"{counts['gauc_groups_single_class']:,} single-class groups skipped; NDCG/Recall over "
        f"{counts['ranking_groups']:,} groups, {counts['ranking_groups_no_positive']:,} without positives skipped.</p>"
    )


def _scope_table(scopes: Mapping[str, Mapping[str, Any]], tasks: Sequence[str], key: str = "value") -> str:
    """Rows, positives and AUC / NE (or their deltas) with intervals per scope and task."""
    prefix = "Δ " if key == "delta" else ""
    head = f"<tr><th>slice</th><th>task</th><th>rows</th><th>positives</th><th>{prefix}AUC</th><th>{prefix}NE</th></tr>"
    rows = []
    for name, scope in scopes.items():
        for task in tasks:
            entry = scope["tasks"][task]
            cells = []
            for metric in ("auc", "ne"):
                m = None if entry["metrics"] is None else entry["metrics"][metric]
                if m is None or m[key] is None:
                    reason = scope["status"].replace("_", " ") if m is None else m["reason"]
                    cells.append(f'<td class="na">{_e(reason)}</td>')
                else:
                    ci = f" [{_num(m['ci_low'])}, {_num(m['ci_high'])}]" if m["ci_low"] is not None else ""
                    cells.append(f"<td>{_num(m[key])}{ci}</td>")
            rows.append(
                f"<tr><td>{_e(name)}</td><td>{_e(task)}</td><td>{scope['n_rows']:,}</td>"
                f"<td>{entry['counts']['n_positive']:,}</td>{''.join(cells)}</tr>"
            )
    return f"<table>{head}{''.join(rows)}</table>"


def _scope_section(
    title_html: str,
    note: str,
    scopes: Mapping[str, Mapping[str, Any]],
    overall: Mapping[str, Any],
    tasks: Sequence[str],
    key: str = "value",
) -> str:
    """Forest plots (one per task) and the table of a set of scopes (a slice column, or cold/warm)."""
    figs = "".join(_figure(_png(forest_figure(scopes, overall[t], t, key)), f"{title_html} {t}") for t in tasks)
    head = f'<h2>{title_html}</h2><p class="note">{_e(note)}</p><div class="plots forest">{figs}</div>'
    return head + _scope_table(scopes, tasks, key)


def _scope_sections(result: Mapping[str, Any], key: str = "value") -> list[str]:
    """One section per slice column, then cold vs warm, of an evaluation or comparison result."""
    tasks, overall = result["data"]["tasks"], result["overall"]["tasks"]
    sections = []
    for column, scopes in result["slices"].items():
        note = f"Slices under {result['config']['min_slice_size']:,} rows get counts only."
        sections.append(_scope_section(f"Slice <code>{_e(column)}</code>", note, scopes, overall, tasks, key))
    shares = result["data"].get("cold_share", {})
    if result.get("cold_warm"):
        note = f"Cold items were not seen in training: {100 * shares.get('item', 0):.1f}% of the rows."
        sections.append(_scope_section("Cold vs warm items", note, result["cold_warm"], overall, tasks, key))
    for entity, scopes in result.get("cold_warm_by_entity", {}).items():
        note = f"Cold rows have a {entity} not seen in training: {100 * shares.get(entity, 0):.1f}% of the rows."
        title = f"Cold vs warm <code>{_e(entity)}</code>"
        sections.append(_scope_section(title, note, scopes, overall, tasks, key))
    return sections


def _badges(result: Mapping[str, Any], *extra: str | None) -> str:
    data = result["data"]
    labels = (
        *extra,
        f"{data['n_rows']:,} rows",
        f"{data['n_groups']:,} groups",
        f"{result['config']['n_bootstrap']} bootstrap replicates (groups resampled)",
        "weighted" if data["weighted"] else None,
    )
    return "".join(f'<span class="badge">{_e(label)}</span>' for label in labels if label)


def _page(title: str, badges: str, body: Sequence[str]) -> str:
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><div class='meta'>{badges} generated {generated}</div></header>"
        f"<main>{''.join(body)}</main></body></html>\n"
    )


def render_report(
    metrics: Mapping[str, Any],
    predictions_path: str | Path | None = None,
    config: Mapping[str, Any] | None = None,
    data_version: str | None = None,
    training_curves: Sequence[Mapping[str, float]] | None = None,
    title: str = "Offline evaluation",
) -> str:
    """The report as one HTML string (see ``write_report``)."""
    if metrics.get("kind") != "evaluation":
        raise ValueError(f"the report renders an evaluate() result, got kind {metrics.get('kind')!r}")
    tasks = metrics["data"]["tasks"]
    level = metrics["config"]["ci_level"]
    hists = score_histograms(predictions_path, tasks) if predictions_path is not None else None
    parts = ["<h2>Summary</h2>"]
    for task in tasks:
        entry = metrics["overall"]["tasks"][task]
        parts += [f"<h3>Task <code>{_e(task)}</code></h3>", _cards(entry), _counts_note(entry["counts"])]
        parts.append(_metric_table(entry, level))
        plots = [_figure(_png(roc_figure(metrics, task)), f"ROC curve {task}")]
        plots.append(_figure(_png(reliability_figure(metrics, task)), f"calibration plot {task}"))
        if hists is not None:
            plots.append(_figure(_png(distribution_figure(hists[task], task)), f"score distribution {task}"))
        parts.append(f'<div class="plots">{"".join(plots)}</div>')
    parts += _scope_sections(metrics)
    if training_curves:
        parts += [
            "<h2>Training curves</h2>",
            f'<div class="plots wide">{_figure(_png(training_figure(training_curves)), "training curves")}</div>',
        ]
    model = f"<pre>{_e(json.dumps(config, indent=2, default=str))}</pre>" if config else "<p>not given</p>"
    parts += [
        "<h2>Model config and data</h2>",
        f"<p>Data version: <b>{_e(data_version or 'not given')}</b></p>",
        f'<div class="columns"><div><h3>Model config</h3>{model}</div>',
        f"<div><h3>Evaluation settings</h3>{_kv_table(metrics['config'])}</div>",
        f"<div><h3>Data</h3>{_kv_table(metrics['data'])}</div></div>",
    ]
    return _page(title, _badges(metrics, f"data {data_version}" if data_version else None), parts)


def _delta_table(entry: Mapping[str, Any], level: float) -> str:
    head = (
        f"<tr><th>metric</th><th>A</th><th>B</th><th>B − A</th><th>{round(100 * level)}% interval</th>"
        "<th>P(B − A &gt; 0)</th><th>verdict</th></tr>"
    )
    rows = []
    for name, m in entry["metrics"].items():
        ci = f"{_num(m['ci_low'])} – {_num(m['ci_high'])}" if m["ci_low"] is not None else _e(m["reason"] or "")
        prob = _num(m["prob_delta_positive"], 2) if m["prob_delta_positive"] is not None else ""
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_num(m['a'])}</td><td>{_num(m['b'])}</td><td>{_num(m['delta'])}</td>"
            f'<td>{ci}</td><td>{prob}</td><td style="color:{VERDICT_COLORS[m["verdict"]]}">{m["verdict"]}</td></tr>'
        )
    return f"<table>{head}{''.join(rows)}</table>"


def render_comparison(comparison: Mapping[str, Any], title: str | None = None, preface: Sequence[str] = ()) -> str:
    """A ``compare`` result as one HTML page: deltas with paired intervals overall, per slice and cold/warm.

    ``preface``: HTML sections shown before the summary (a promotion gate's decision).
    """
    if comparison.get("kind") != "comparison":
        raise ValueError(f"expected a compare() result, got kind {comparison.get('kind')!r}")
    a, b = comparison["models"]["a"]["name"], comparison["models"]["b"]["name"]
    level = comparison["config"]["ci_level"]
    parts = [
        *preface,
        "<h2>Summary</h2>",
        f'<p class="note">A = {_e(a)}, B = {_e(b)}. Intervals are paired: both models are scored on the same '
        "resampled groups. A verdict is given when the interval excludes 0.</p>",
    ]
    for task in comparison["data"]["tasks"]:
        entry = comparison["overall"]["tasks"][task]
        chart = _figure(_png(delta_figure(comparison, task)), f"deltas {task}")
        parts += [
            f"<h3>Task <code>{_e(task)}</code></h3>",
            f'<div class="pair">{_delta_table(entry, level)}{chart}</div>',
        ]
    parts += _scope_sections(comparison, key="delta")
    parts += [
        "<h2>Settings and data</h2>",
        f'<div class="columns"><div><h3>Evaluation settings</h3>{_kv_table(comparison["config"])}</div>',
        f"<div><h3>Data</h3>{_kv_table(comparison['data'])}</div></div>",
    ]
    return _page(title or f"{b} vs {a}", _badges(comparison), parts)


def render_gate(
    title: str,
    decision: str,
    reason: str,
    checks: Sequence[tuple[str, bool, str]],
    facts: Mapping[str, Any],
    comparison: Mapping[str, Any] | None,
) -> str:
    """A promotion gate's report: the decision, each condition (name, held, detail), then the comparison.

    ``comparison``: the ``compare`` result of champion (A) and challenger (B), or None when nothing was compared
    (the first promotion).
    """
    color = VERDICT_COLORS["better" if decision == "passed" else "worse"]
    rows = "".join(
        f'<tr><td>{_e(name)}</td><td style="color:{VERDICT_COLORS["better" if held else "worse"]}">'
        f"{'held' if held else 'failed'}</td><td>{_e(detail)}</td></tr>"
        for name, held, detail in checks
    )
    table = f"<table><tr><th>condition</th><th>result</th><th>detail</th></tr>{rows}</table>" if checks else ""
    preface = [
        f'<h2>Decision: <span style="color:{color}">{_e(decision)}</span></h2>',
        f'<p class="note">{_e(reason)}</p>',
        table,
        f"<h3>Gate</h3>{_kv_table(facts)}",
    ]
    if comparison is None:
        return _page(title, "", preface)
    return render_comparison(comparison, title, preface)


def write_comparison_report(comparison: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``comparison.html`` (see ``render_comparison``) into ``out_dir`` and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / COMPARISON_NAME
    path.write_text(render_comparison(comparison), encoding="utf-8")
    return path


def write_report(
    metrics: Mapping[str, Any],
    predictions_path: str | Path | None,
    out_dir: str | Path,
    config: Mapping[str, Any] | None = None,
    data_version: str | None = None,
    training_curves: Sequence[Mapping[str, float]] | None = None,
) -> Path:
    """Write ``report.html`` into ``out_dir`` and return its path.

    Args:
        metrics: an ``evaluate`` result (the content of ``metrics.json``).
        predictions_path: the predictions parquet, read in batches for the score distributions; None skips them.
        out_dir: output directory (created).
        config: the model config, shown as JSON.
        data_version: shown in the header and the config section.
        training_curves: ``[{"step": 100, "loss": 0.41, "val_auc": 0.71}, ...]``; one panel per metric key.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_NAME
    path.write_text(render_report(metrics, predictions_path, config, data_version, training_curves), encoding="utf-8")
    return path


def run_evaluation(
    predictions_path: str | Path,
    out_dir: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    slice_columns: Sequence[str] = (),
    eval_config: M.EvalConfig | None = None,
    model_config: Mapping[str, Any] | None = None,
    data_version: str | None = None,
    training_curves: Sequence[Mapping[str, float]] | None = None,
) -> dict[str, Path]:
    """Predictions parquet -> ``metrics.json``, ``summary.md`` and ``report.html`` in ``out_dir``.

    Returns:
        ``{"json": ..., "markdown": ..., "report": ...}`` paths.
    """
    metrics = M.evaluate(predictions_path, tasks=tasks, slice_columns=slice_columns, config=eval_config)
    paths = M.write_results(metrics, out_dir)
    paths["report"] = write_report(metrics, predictions_path, out_dir, model_config, data_version, training_curves)
    return paths


def run_comparison(
    baseline_path: str | Path,
    predictions_path: str | Path,
    out_dir: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    slice_columns: Sequence[str] = (),
    eval_config: M.EvalConfig | None = None,
) -> dict[str, Path]:
    """Baseline (A) and candidate (B) predictions -> ``comparison.json``, ``comparison.md``, ``comparison.html``.

    The models are named after the files' stems. Returns:
        ``{"comparison_json": ..., "comparison_markdown": ..., "comparison_report": ...}`` paths.
    """
    comparison = M.compare(
        baseline_path,
        predictions_path,
        tasks=tasks,
        slice_columns=slice_columns,
        config=eval_config,
        names=(Path(baseline_path).stem, Path(predictions_path).stem),
    )
    written = M.write_results(comparison, out_dir)
    return {
        "comparison_json": written["json"],
        "comparison_markdown": written["markdown"],
        "comparison_report": write_comparison_report(comparison, out_dir),
    }
