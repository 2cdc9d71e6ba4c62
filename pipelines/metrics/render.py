"""Writing results: ``metrics.json``/``comparison.json`` and their markdown summaries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_ci(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f"[{_fmt(low)}, {_fmt(high)}]"


def _scope_rows(scopes: dict[str, dict[str, Any]], task: str, metric: str, comparison: bool) -> list[str]:
    """One markdown table row per scope (slice value, cold/warm) for one task and metric."""
    rows = []
    for name, scope in scopes.items():
        entry = scope["tasks"][task]
        if entry["metrics"] is None:
            cells = [scope["status"]] + [""] * (3 if comparison else 1)
        else:
            m = entry["metrics"][metric]
            value = [_fmt(m["a"]), _fmt(m["b"]), _fmt(m["delta"])] if comparison else [_fmt(m["value"])]
            cells = value + [_fmt_ci(m["ci_low"], m["ci_high"])]
        rows.append(f"| {name} | {scope['n_rows']} | {entry['counts']['n_positive']} | " + " | ".join(cells) + " |")
    return rows


def summary_markdown(result: dict[str, Any], slice_metrics: Sequence[str] = ("auc", "ne")) -> str:
    """Short markdown summary of an ``evaluate`` or ``compare`` result (overall table, slices, cold/warm)."""
    comparison = result["kind"] == "comparison"
    cfg, data = result["config"], result["data"]
    pct = round(100 * cfg["ci_level"])
    if comparison:
        a, b = result["models"]["a"]["name"], result["models"]["b"]["name"]
        lines = [f"# Comparison: {b} vs {a}", "", f"Deltas are {b} - {a}; intervals are paired ({pct}% bootstrap)."]
        value_head, value_rule = f"{a} | {b} | delta | {pct}% CI of delta", "---:|---:|---:|---"
    else:
        lines = ["# Offline evaluation"]
        value_head, value_rule = f"value | {pct}% CI", "---:|---"
    lines += [
        "",
        f"{data['n_rows']} rows, {data['n_groups']} groups, tasks {', '.join(data['tasks'])}; "
        f"{cfg['n_bootstrap']} bootstrap replicates over groups, seed {cfg['seed']}.",
    ]
    if data.get("cold_share"):
        shares = ", ".join(f"{name} {100 * share:.1f}%" for name, share in data["cold_share"].items())
        lines += ["", f"Cold rows (their value was not seen in training), share of all rows: {shares}."]
    for task in data["tasks"]:
        entry = result["overall"]["tasks"][task]
        counts = entry["counts"]
        lines += [
            "",
            f"## Task `{task}`",
            "",
            f"{counts['n_positive']} positives, base rate {_fmt(counts['base_rate'])}; GAUC over "
            f"{counts['gauc_groups']} groups ({counts['gauc_groups_single_class']} single-class skipped); ranking "
            f"metrics over {counts['ranking_groups']} groups ({counts['ranking_groups_no_positive']} without "
            "positives skipped).",
            "",
            f"| metric | {value_head} |",
            f"|---|{value_rule}|",
        ]
        for name, m in entry["metrics"].items():
            value = f"{_fmt(m['a'])} | {_fmt(m['b'])} | {_fmt(m['delta'])}" if comparison else _fmt(m["value"])
            note = f" ({m['reason']})" if m["reason"] else ""
            lines.append(f"| {name} | {value} | {_fmt_ci(m['ci_low'], m['ci_high'])}{note} |")
        sections = [(f"slice `{col}`", scopes) for col, scopes in result["slices"].items()]
        if result["cold_warm"] is not None:
            sections.append(("cold vs warm items", result["cold_warm"]))
        sections += [(f"cold vs warm `{e}`", scopes) for e, scopes in result.get("cold_warm_by_entity", {}).items()]
        for title, scopes in sections:
            for metric in slice_metrics:
                lines += ["", f"### {title}: {metric}", "", f"| value | rows | positives | {value_head} |"]
                lines += [f"|---|---:|---:|{value_rule}|", *_scope_rows(scopes, task, metric, comparison)]
    return "\n".join(lines) + "\n"


def write_results(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``metrics.json`` + ``summary.md`` (evaluation) or ``comparison.json`` + ``comparison.md``.

    Returns:
        ``{"json": path, "markdown": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "comparison" if result["kind"] == "comparison" else "metrics"
    paths = {
        "json": out / f"{stem}.json",
        "markdown": out / ("comparison.md" if stem == "comparison" else "summary.md"),
    }
    # allow_nan=False: undefined values must already be null, never NaN (not valid JSON).
    paths["json"].write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(summary_markdown(result))
    return paths
