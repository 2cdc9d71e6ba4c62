"""The job's summary: built from its steps' manifests, printed at the end and written to WORK/summary.json."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pipelines import steps
from pipelines.job.config import Job
from pipelines.job.runners import headline

SUMMARY = "summary.json"


def duration(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else f"{int(value // 60)} min {value % 60:.0f} s"


def mlflow_ui_command() -> str:
    """How to look at the runs, models and gate decisions of the current tracking store."""
    from pipelines import tracking

    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {tracking.shown_uri(uri)} in a browser"
    return f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def build_summary(job: Job, seconds: float) -> dict[str, Any]:
    """What the job produced, from its steps' manifests (steps not run yet are left out)."""

    def results(step: str) -> dict[str, Any]:
        return (steps.read_manifest(job.folder(step)) or {}).get("results") or {}

    summary: dict[str, Any] = {"name": job.cfg.name, "config": str(job.source), "work_dir": str(job.work)}
    summary["seconds"] = round(seconds, 1)
    evaluated = results("evaluate")
    if evaluated:
        summary["metrics"] = headline({"results": evaluated})
        summary["reports"] = {"evaluation": evaluated["report"]}
    compressed = results("compress")
    if compressed:
        summary["compression"] = compressed["table"]
        summary.setdefault("reports", {})["compressed evaluation"] = compressed["report"]
    promoted = results("promote")
    if promoted:
        summary["registry"] = {"name": job.cfg.register.name} | promoted
        for d in promoted["decisions"]:
            if d["report"]:
                summary.setdefault("reports", {})[f"gate v{d['version']}"] = d["report"]
    elif results("register"):
        summary["registry"] = {"name": job.cfg.register.name, "decisions": results("register")["versions"]}
    scored = results("score")
    if scored:
        summary["scores"] = {"out": str(job.work / "score"), "rows": scored["rows_out"], "model": scored["model"]}
    summary["mlflow_ui"] = mlflow_ui_command()
    return summary


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n{summary['name']}: finished in {duration(summary['seconds'])}")
    for task, m in (summary.get("metrics") or {}).items():
        print(f"  test {task}: AUC {_number(m['auc'])}  GAUC {_number(m['gauc'])}  NE {_number(m['ne'])}")
    table = summary.get("compression")
    if table:
        print(
            "  compression       model.pt bytes   parameters   " + "   ".join(k for k in table["trained"] if "/" in k)
        )
        for name, row in table.items():
            aucs = [_number(v) for k, v in row.items() if "/" in k]
            print(f"    {name:15s} {row['model_bytes']:>14,} {row['parameters']:>12,}   " + "   ".join(aucs))
        deltas = [
            f"{k.split('/')[0]} AUC {v - table['trained'][k]:+.4f}"
            for k, v in table["compressed"].items()
            if "/" in k and v is not None and table["trained"].get(k) is not None
        ]
        if deltas:
            print(f"    compressed vs trained: {', '.join(deltas)}")
    registry = summary.get("registry")
    if registry:
        print(f"  registry {registry['name']}:")
        for d in registry["decisions"]:
            if "decision" not in d:
                print(f"    v{d['version']} ({d['export']}): registered, not judged yet")
                continue
            against = f" vs champion v{d['compared_to']}" if d.get("compared_to") else ""
            print(f"    v{d['version']} ({d['export']}){against}: {d['decision']}: {d['reason']}")
        if "aliases" in registry:
            aliases = ", ".join(f"{a} = v{v}" for a, v in sorted(registry["aliases"].items()))
            print(f"    aliases: {aliases}")
    for what, path in (summary.get("reports") or {}).items():
        print(f"  report ({what}): {path}")
    scores = summary.get("scores")
    if scores:
        print(f"  scores: {scores['out']}/part-*.parquet ({scores['rows']:,} rows, {scores['model']['uri']})")
    print(f"  summary: {Path(summary['work_dir']) / SUMMARY}")
    print(f"  MLflow UI: {summary['mlflow_ui']}")
