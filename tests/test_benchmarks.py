"""The benchmark summary (benchmarks/summary.py) and the suite runner (benchmarks/run_all.py).

The summary is rendered from the committed result files; every number checked here is read from those files.
"""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import summary

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.unit
def test_committed_summary_is_rendered_from_the_committed_results() -> None:
    assert (RESULTS / summary.SUMMARY).read_text() == summary.render(RESULTS)


@pytest.mark.unit
def test_every_section_shows_numbers_from_its_file() -> None:
    text = summary.render(RESULTS)
    for title, name, _, _ in summary.SECTIONS:
        part = _section(text, title)
        assert f"[`{name}`]({name})" in part and "command `" in part and "cores" in part, title

    loader = _load("features_bench.json")["loader"]
    part = _section(text, "Loader throughput")
    assert all(f"{run['median_rows_per_s_excl_first']:,.0f}" in part for run in loader)

    part = _section(text, "Training throughput")
    eager = [r for r in _load("train_throughput.json")["throughput"] if not r.get("compiled")]  # as `ranker train`
    for run in eager:
        best = max(r["samples_per_s"] for r in eager if (r["model"], r["ranks"]) == (run["model"], run["ranks"]))
        assert f"| {run['model']} |" in part and f"{best:,.0f}" in part

    serving = _load("serving.json")
    part = _section(text, "Serving latency and compression")
    assert f"One request of {serving['candidates']:,} candidates" in part
    fastest = min(serving["latency"], key=lambda k: serving["latency"][k]["p50_ms_1t"])
    row = serving["latency"][fastest]
    assert f"| {fastest} | {row['p50_ms_1t']:.1f} | {row['p99_ms_1t']:.1f} |" in part
    for name, variant in serving["variants"].items():
        assert f"| {name} | {variant['source']} | {variant['parameters']:,} |" in part
        assert f"{variant['auc']:.4f} | {variant['auc_delta']:+.4f}" in part

    part = _section(text, "Batch scoring")
    assert all(f"{run['rows_per_s']:,.0f}" in part for run in _load("score.json")["runs"])

    part = _section(text, "Vision towers")
    for tower in _load("towers_fmnist.json")["rows"]:
        assert f"| {tower['tower']} |" in part and f"{tower['infer_img_per_s_b256']:,.0f} |" in part

    quality = _load("model_quality.json")
    part = _section(text, "Model quality")
    for dataset in ("movielens-100k", "fashion-clicks"):
        for model, stat in quality[dataset]["summary"].items():
            assert f"| {dataset} | {model} | {stat['dense_lr']:g} | {stat['auc']['mean']:.4f} ± " in part
    assert quality["verdict"] in part


@pytest.mark.unit
def test_a_partial_rerun_regenerates_the_summary(tmp_path: Path) -> None:
    """A new result file replaces its section; a missing one is named; the other sections stay as they were."""
    for path in RESULTS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "towers_fmnist.json").unlink()
    score = json.loads((tmp_path / "score.json").read_text())
    score["runs"] = [{**score["runs"][0], "rows_per_s": 123456.0}]
    score["suite_run"] = {"command": "python benchmarks/score_bench.py --rows 7", "size": "tiny", "seconds": 9.0,
                          "date_utc": "2030-01-01 00:00 UTC", "machine": {"cpu": "Test CPU", "nproc": 2},
                          "versions": {"torch": "9.9"}}  # fmt: skip
    (tmp_path / "score.json").write_text(json.dumps(score))
    assert summary.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / summary.SUMMARY).read_text()
    assert "Not measured: `towers_fmnist.json` is missing." in _section(text, "Vision towers")
    part = _section(text, "Batch scoring")
    assert "123,456" in part and "`python benchmarks/score_bench.py --rows 7`" in part and "torch 9.9" in part
    assert _section(text, "Model quality") == _section(summary.render(RESULTS), "Model quality")


@pytest.mark.slow
def test_run_all_runs_one_benchmark_and_stamps_it(tmp_path: Path) -> None:
    """The loader benchmark at the tiny size (a few minutes: each loader run is a fresh interpreter)."""
    cmd = [sys.executable, "benchmarks/run_all.py", "--size", "tiny", "--only", "features",
           "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results")]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "features_bench.json").read_text())
    stamp = result["suite_run"]
    assert stamp["size"] == "tiny" and "--rows 20000" in stamp["command"] and stamp["versions"]["torch"]
    assert stamp["machine"]["nproc"] >= 1 and stamp["seconds"] > 0
    text = (tmp_path / "results" / summary.SUMMARY).read_text()
    part = _section(text, "Loader throughput")
    assert all(f"{run['median_rows_per_s_excl_first']:,.0f}" in part for run in result["loader"])
    assert "Not measured: `serving.json` is missing." in text


@pytest.mark.unit
@pytest.mark.parametrize(
    "script", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "benchmarks").rglob("*.py")), ids=str
)
def test_every_benchmark_script_imports(script: str) -> None:
    """Each script's module body runs (imports resolve), without its ``__main__`` block: a moved helper module
    once broke ``learning_curve.py`` unnoticed, because no test runs the hours-long benchmarks."""
    runpy.run_path(str(ROOT / script), run_name="benchmark_import_check")


@pytest.mark.unit
def test_equal_budget_t_interval_matches_scipys_one_sample_t_test() -> None:
    from scipy import stats

    from benchmarks.equal_budget import t_interval

    deltas = [0.004, -0.001, 0.0065, 0.002, 0.003]
    expected = stats.ttest_1samp(deltas, 0.0).confidence_interval(0.95)
    got = t_interval(deltas)
    assert got["ci_low"] == pytest.approx(expected.low) and got["ci_high"] == pytest.approx(expected.high)
    assert t_interval([0.01]) == {"mean": 0.01, "ci_low": None, "ci_high": None}


def test_cold_items_report_renders_map_and_variant_rows() -> None:
    """Both kinds of comparison row (post-hoc maps, retrained variants) render with their own numbers."""
    from benchmarks.studies import cold_items

    def row(base: float, new: float, gap: float) -> dict:
        auc = {s: {"base": base + i / 100, "new": new + i / 100} for i, s in enumerate(("overall", "cold", "warm"))}
        return {"auc": auc, "cold_delta": {"delta": new - base, "ci_low": 0.01, "ci_high": 0.2}, "cold_gap_closed": gap}

    maps = [
        {"run": "/r/hiformer-s0", "representation": "raw pixels (784)", "map": "ridge → row",
         "map_r2_held_out_items": 0.0404, **row(0.6144, 0.6466, 0.129)},
        {"run": "/r/hiformer-s0", "representation": "raw pixels (784)", "map": "click-trained, OOV + g",
         "map_r2_held_out_items": 0.8082, **row(0.6757, 0.7951, 0.608)},
    ]  # fmt: skip
    variant = {"variant": "image tokens", "seed": 1, **row(0.6262, 0.6315, 0.022)}
    report = {
        "command": "python benchmarks/studies/cold_items.py --data D",
        "data": "D",
        "n_items": 6000,
        "n_items_with_row": 4909,
        "ceiling_cold": 0.8721,
        "bayes_cold": 0.8745,
        "probe": [{"representation": "raw pixels (784)", "dims": 784, "r2_visual_score": 0.69}],
        "substitution": maps,
        "mean_gap_closed": {"raw pixels (784) | click-trained, OOV + g": {"mean": 0.608, "n": 1}},
        "variants": [variant],
        "machine": {"nproc": 2, "torch": "2.14.1", "date_utc": "2026-12-02 14:30 UTC"},
    }
    text = cold_items.markdown(report)
    assert "| hiformer-s0 | raw pixels (784) | ridge → row | 0.040 |" in text
    # Cells: overall, warm, cold (row() offsets cold by 0.01 and warm by 0.02), the cold delta, the gap closed.
    cells = "0.6757 -> 0.7951 | 0.6957 -> 0.8151 | 0.6857 -> 0.8051 | +0.1194 [+0.0100, +0.2000] | 60.8% |"
    assert f"| click-trained, OOV + g | AUC 0.808 | {cells}" in text
    assert "| image tokens | 1 | 0.6262 -> 0.6315 | 0.6462 -> 0.6515 | 0.6362 -> 0.6415 | +0.0053" in text
    assert "| raw pixels (784) | click-trained, OOV + g | 60.8% | 1 |" in text
