"""Screenshots of the MLflow UI on a search's store, for the README: starts a real ``mlflow ui``
on 127.0.0.1, finds the study run of an experiment, and photographs it with headless Chromium
(Debian's ``chromium`` package): the experiment's runs (the study run with its trial runs) and the
study run's score-by-round plot. Stops the server and the browser it started (by their process
ids) when done.

    python benchmarks/mlflow_screenshot.py --store sqlite:///$PWD/mlflow.db \
        --experiment raykd-quickstart --out-dir benchmarks/results
    python benchmarks/mlflow_screenshot.py --store sqlite:///$PWD/mlflow.db \
        --experiment raykd-sst2-quickstart --metric eval_accuracy

Writes ``mlflow-runs.png``, ``mlflow-charts.png`` (the trials' ``--metric`` by round) and
``mlflow-study-plot.png`` into ``--out-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def start_ui(store: str, port: int, log: Path) -> subprocess.Popen:
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if not mlflow:
        raise SystemExit("mlflow_screenshot: the mlflow command is not installed")
    # Its own process group, so that stopping it also stops the workers it forks.
    return subprocess.Popen([mlflow, "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(base: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow_screenshot: mlflow ui exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise SystemExit("mlflow_screenshot: mlflow ui did not answer in time")


def stop(proc: subprocess.Popen) -> None:
    """Stop the server's process group (its leader may have exited before its forked workers)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def study_run(base: str, experiment: str) -> tuple[str, str, str]:
    """(experiment id, the latest study run's id and name) through MLflow's REST API."""
    q = urllib.parse.urlencode({"experiment_name": experiment})
    exp_id = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?{q}")["experiment"]["experiment_id"]
    runs = _post(f"{base}/api/2.0/mlflow/runs/search", {
        "experiment_ids": [exp_id], "filter": "tags.`raykd.kind` = 'study'",
        "order_by": ["attributes.start_time DESC"], "max_results": 1,
    }).get("runs", [])
    if not runs:
        raise SystemExit(f"mlflow_screenshot: experiment {experiment} has no study run")
    return exp_id, runs[0]["info"]["run_id"], runs[0]["info"]["run_name"]


class Browser:
    """Headless Chromium driven over the DevTools protocol (aiohttp's websocket client, which Ray
    installs): the page must be clicked (close MLflow's assistant panel, expand the study's trial
    runs) before it is photographed, which ``chromium --screenshot`` cannot do."""

    def __init__(self, chromium: str, width: int, height: int):
        self.port = _free_port()
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="raykd-chromium-")
        self.proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--hide-scrollbars", f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._id = 0

    def close(self) -> None:
        stop(self.proc)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _page_ws(self) -> str:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit("mlflow_screenshot: chromium's DevTools did not answer")

    async def _call(self, ws, method: str, **params) -> dict:
        self._id += 1
        await ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            msg = await ws.receive_json()
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def _js(self, ws, expression: str):
        out = await self._call(ws, "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return out.get("result", {}).get("value")

    async def _shoot(self, url: str, ready_text: str, actions: list[tuple], out: Path, settle_s: float) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(self._page_ws(), max_msg_size=0) as ws:
            await self._call(ws, "Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                             deviceScaleFactor=1, mobile=False)
            await self._call(ws, "Page.navigate", url=url)
            deadline = time.time() + 90
            while not await self._js(ws, f"document.body && document.body.innerText.includes({json.dumps(ready_text)})"):
                if time.time() > deadline:
                    raise SystemExit(f"mlflow_screenshot: {url} never showed {ready_text!r}")
                await asyncio.sleep(1)
            await asyncio.sleep(settle_s)
            for selector, *text in actions:
                if text and isinstance(text[0], int):
                    await self._drag(ws, selector, text[0], url)
                    await asyncio.sleep(1.5)
                    continue
                # A control that a later MLflow lays out differently is skipped, not fatal.
                found = await self._js(ws, f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                                           " if (!e) return false; e.click(); e.focus(); return true })()")
                if not found:
                    print(f"mlflow_screenshot: no {selector} on {url}", file=sys.stderr)
                elif text:
                    await self._call(ws, "Input.insertText", text=text[0])
                await asyncio.sleep(1.5)
            await asyncio.sleep(settle_s)
            shot = await self._call(ws, "Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))
        print(out)

    async def _drag(self, ws, selector: str, dx: int, url: str) -> None:
        """Drag the element ``dx`` pixels to the right with the browser's own mouse input (a column's
        resize handle; it is grabbed in its left quarter: the next header cell covers its right half)."""
        box = await self._js(ws, f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                                 " if (!e) return null; const r = e.getBoundingClientRect();"
                                 " return [r.x + r.width / 4, r.y + r.height / 2] })()")
        if not box:
            print(f"mlflow_screenshot: no {selector} on {url}", file=sys.stderr)
            return
        x, y = box
        await self._call(ws, "Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        await self._call(ws, "Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
        for step in range(1, 11):
            await self._call(ws, "Input.dispatchMouseEvent", type="mouseMoved", x=x + dx * step / 10, y=y,
                             button="left", buttons=1)
        await self._call(ws, "Input.dispatchMouseEvent", type="mouseReleased", x=x + dx, y=y, button="left",
                         clickCount=1)
        # Away to an empty place, so that no header's tooltip is photographed.
        await self._call(ws, "Input.dispatchMouseEvent", type="mouseMoved", x=x + dx, y=self.height - 150)

    def screenshot(self, url: str, ready_text: str, actions: list[tuple], out: Path, settle_s: float = 3.0) -> None:
        """Open ``url``, wait for ``ready_text``, then for each action ``(selector,)`` click that
        element, ``(selector, text)`` click it and type the text, or ``(selector, pixels)`` drag it
        that far to the right; then photograph the page."""
        asyncio.run(self._shoot(url, ready_text, actions, out, settle_s))


# MLflow 3.17's controls: the assistant panel's close button, the sidebar toggle, and the
# run-name cell's expand button of a parent run.
CLOSE_ASSISTANT = 'button[aria-label="Close"]'
HIDE_SIDEBAR = 'button[aria-label="Toggle sidebar"]'
EXPAND_PARENT = 'button[data-component-id*="runnamecellrenderer"]'
CHART_SEARCH = 'input[placeholder="Search metric charts"]'
# The runs table's Run Name column (ag-grid): its resize handle, dragged so that a trial run's name
# (what the trial tried) is read whole.
RUN_NAME_RESIZE = '.ag-header-cell[col-id="attributes.`Run Name`"] .ag-header-cell-resize'


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}", help="backend store URI")
    p.add_argument("--experiment", default="raykd-quickstart", help="MLflow experiment of the search")
    p.add_argument("--metric", default="eval_f1", help="the search's metric (eval_accuracy for classification)")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = p.parse_args(argv)
    if not args.chromium:
        print("mlflow_screenshot: no chromium found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_ui(args.store, port, Path(tempfile.gettempdir()) / f"raykd-mlflow-ui-{port}.log")
    browser = None
    try:
        browser = Browser(args.chromium, 1600, 900)
        wait_ready(base, proc)
        exp_id, run_id, run_name = study_run(base, args.experiment)
        # The runs table: the study run with its trial runs nested under it.
        browser.screenshot(f"{base}/#/experiments/{exp_id}/runs", run_name,
                           [(CLOSE_ASSISTANT,), (HIDE_SIDEBAR,), (EXPAND_PARENT,), (RUN_NAME_RESIZE, 190)],
                           out_dir / "mlflow-runs.png")
        # The panel, the sidebar and the expanded study stay so for the next pages (the browser
        # profile keeps them). The trial runs' metric by round, as MLflow charts them:
        browser.screenshot(f"{base}/#/experiments/{exp_id}/runs?compareRunsMode=CHART", run_name,
                           [(CHART_SEARCH, args.metric)], out_dir / "mlflow-charts.png")
        plot = f"{args.metric}_by_round"  # raykd.plots logs plots/<metric>_by_round.png to the study run
        browser.screenshot(f"{base}/#/experiments/{exp_id}/runs/{run_id}/artifacts/plots/{plot}.png", plot,
                           [], out_dir / "mlflow-study-plot.png")
    finally:
        if browser is not None:
            browser.close()
        stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
