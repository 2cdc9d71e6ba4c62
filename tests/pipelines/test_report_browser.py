"""Open the report in headless Chromium (DevTools protocol): no console errors, no requests, every plot decodes."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import websocket  # websocket-client, a dev dependency: a missing browser stack must fail, not skip

from pipelines import metrics as M
from pipelines import report as R
from tests.pipelines.test_metrics import synthetic_predictions

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or shutil.which("chromium-browser") or "")
# Quiet, offline, sandbox-less headless Chromium (tests run as root in CI); port 0 = pick a free port.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
]


class DevTools:
    """Minimal DevTools protocol client over one page's websocket; keeps every event it receives."""

    def __init__(self, url: str) -> None:
        # Chromium rejects websocket handshakes that carry an Origin unless --remote-allow-origins is given.
        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self._next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        self.ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(method)
            self.events.append(json.loads(self.ws.recv()))


@pytest.fixture
def devtools(tmp_path: Path) -> Iterator[DevTools]:
    assert CHROMIUM, "chromium not installed: run `make system-deps` (Debian package 'chromium')"
    profile = tmp_path / "chromium-profile"
    process = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, "chromium exited at start-up"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = [t for t in json.load(response) if t["type"] == "page"]
        client = DevTools(pages[0]["webSocketDebuggerUrl"])
        yield client
        client.ws.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def _open_and_check(devtools: DevTools, page: Path, screenshot: Path) -> list[dict[str, Any]]:
    """Load ``page``; assert no console errors and no requests beyond the file; save a full-page screenshot.

    Returns:
        ``{"alt", "width", "height"}`` of every image after decoding (0 x 0 when it failed to decode).
    """
    devtools.events.clear()
    devtools.call("Page.navigate", url=page.as_uri())
    devtools.wait_for("Page.loadEventFired")
    images = devtools.call(
        "Runtime.evaluate",
        expression="""Promise.all(Array.from(document.images).map(img => img.decode().then(
            () => ({alt: img.alt, width: img.naturalWidth, height: img.naturalHeight}),
            () => ({alt: img.alt, width: 0, height: 0}))))""",
        awaitPromise=True,
        returnByValue=True,
    )["result"]["value"]
    errors = [
        e
        for e in devtools.events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in {"error", "assert"})
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert not errors, errors
    requests = [
        e["params"]["request"]["url"] for e in devtools.events if e.get("method") == "Network.requestWillBeSent"
    ]
    assert all(url.startswith(("file:", "data:")) for url in requests), requests

    size = devtools.call("Page.getLayoutMetrics")["cssContentSize"]
    shot = devtools.call(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
    )
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot of {page.name}: {screenshot}")
    return images


def test_reports_render_in_chromium(tmp_path: Path, devtools: DevTools) -> None:
    predictions, baseline = tmp_path / "predictions.parquet", tmp_path / "baseline.parquet"
    df = synthetic_predictions(n_rows=3000, n_groups=200)
    df.write_parquet(predictions)
    df.with_columns(pl.col("score_click").sqrt()).write_parquet(baseline)
    cfg = M.EvalConfig(n_bootstrap=30, min_slice_size=400)
    paths = R.run_evaluation(
        predictions,
        tmp_path / "eval",
        slice_columns=["country", "surface"],
        eval_config=cfg,
        model_config={"model": "hiformer", "layers": 2},
        data_version="synthetic@test",
        training_curves=[{"step": s, "train/loss": 1 / (1 + s), "valid/auc": 0.5 + s / 400} for s in range(0, 100, 5)],
    )
    comparison = M.compare(baseline, predictions, slice_columns=["country"], config=cfg)
    comparison_page = R.write_comparison_report(comparison, tmp_path / "eval")
    for domain in ("Runtime", "Log", "Network", "Page"):
        devtools.call(f"{domain}.enable")

    images = _open_and_check(devtools, paths["report"], tmp_path / "report.png")
    assert len(images) == 2 * 3 + 2 * 2 + 2 + 1  # per task ROC/calibration/scores; 2 slice columns; cold/warm; curves
    assert all(img["width"] > 0 and img["height"] > 0 for img in images), images

    images = _open_and_check(devtools, comparison_page, tmp_path / "comparison.png")
    assert len(images) == 2 + 2 + 2  # per task: deltas, country, cold/warm
    assert all(img["width"] > 0 and img["height"] > 0 for img in images), images
