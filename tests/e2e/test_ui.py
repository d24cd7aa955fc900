"""The Prefect UI, checked in a real browser: a `prefect server` started here, the whole pipeline
run against it on the shrunk config (a fresh copy of the repo), then headless Chromium opens the
pipeline's flow run page and the Artifacts page and must show every stage under the pipeline run
(one run, one tree: a stage's own flow run as a subflow, a stage DVC skipped as a task) and every
report.

Chromium is driven over the DevTools protocol with the `websockets` package Prefect already
depends on (no Selenium, no Node). A screenshot of the run page lands in reports/ui/.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from flows.pipeline import stages_upstream_of
from tests.conftest import ROOT
from tests.e2e.test_deployment import client_env, make_repo, start_server, stop, stop_warm

pytestmark = pytest.mark.slow  # the whole pipeline, then a browser: about 4 minutes on 2 cores
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = ROOT / "reports" / "ui" / "pipeline-run.png"
# What the stages publish (flows/*.py), plus the pipeline's own summary.
ARTIFACT_KEYS = ["validation-report", "quarantine", "repair-summary", "class-counts", "train-progress", "finetune-progress",
                 "metrics", "confusion-matrix", "evaluation-report", "gate", "model", "compression", "pipeline-summary"]


class Browser:
    """Headless Chromium and one page, over the DevTools protocol."""

    def __init__(self, profile: Path):
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1600,1100", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)  # its own process group: close() stops the helpers it forks too
        for line in self.process.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
            if match := re.search(r"ws://127\.0\.0\.1:(\d+)/", line):
                break
        else:
            raise AssertionError("chromium did not start its DevTools endpoint")
        with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/json/list", timeout=10) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        from websockets.sync.client import connect

        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, needles: list[str], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(0.5)
        missing = [n for n in needles if n not in text]
        raise AssertionError(f"not on the page after {timeout} s: {missing}\n--- page text ---\n{text[:3000]}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def click(self, label: str) -> None:
        clicked = self.evaluate(f"""(() => {{
            const el = [...document.querySelectorAll('button, [role=tab], a, li.p-tab')]
                .find(e => e.innerText.trim() === {json.dumps(label)});
            if (el) el.click(); return !!el; }})()""")
        assert clicked, f"no '{label}' to click"

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            # Chromium's renderer and crashpad children outlive a killed parent and keep writing
            # into the profile, which then cannot be removed: stop the whole group.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    root = make_repo(tmp / "repo")
    server, url = start_server(tmp / "server-home", client_env(root, ""))
    try:
        env = client_env(root, url)
        result = subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=root, env=env, capture_output=True, text=True,
                                timeout=1500)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        body = json.dumps({"flows": {"name": {"any_": ["pipeline"]}}}).encode()
        request = urllib.request.Request(f"{url}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            (run,) = json.load(response)
        cwd = os.getcwd()
        os.chdir(root)
        try:
            stages = stages_upstream_of()
        finally:
            os.chdir(cwd)
        yield url.removesuffix("/api"), run, stages
    finally:
        stop_warm(root)
        stop(server)


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (.ci/run installs the Debian package)")
    with tempfile.TemporaryDirectory(prefix="trainflow-chromium-", ignore_cleanup_errors=True) as profile:
        b = Browser(Path(profile))
        try:
            yield b
        finally:
            b.close()


def _post(ui: str, path: str, body: dict) -> list[dict]:
    request = urllib.request.Request(f"{ui}/api{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_one_pipeline_run_is_one_tree_every_stage_under_it(pipeline_run, browser):
    """A stage that ran is the pipeline run's subflow (its own logs and reports); one DVC found up
    to date is a task (Skipped, with the reason): together, every stage."""
    ui, run, stages = pipeline_run
    assert run["state"]["type"] == "COMPLETED"
    children = _post(ui, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run["id"]]}}})
    flows = {f["id"]: f["name"] for f in _post(ui, "/flows/filter", {})}
    tasks = _post(ui, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}},
                                            "task_runs": {"subflow_runs": {"exists_": False}}})
    assert sorted([flows[c["flow_id"]] for c in children] + [t["name"] for t in tasks]) == sorted(stages)
    assert all(c["state"]["type"] == "COMPLETED" for c in children) and children
    assert len({tag for c in children for tag in c["tags"] if tag.startswith("repro:")}) == 1  # one group, too
    browser.open(f"{ui}/runs/flow-run/{run['id']}")
    browser.wait_for([run["name"], "Completed", "Subflow Runs"])
    browser.screenshot(SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000
    browser.click("Subflow Runs")
    browser.wait_for([c["name"] for c in children])
    browser.screenshot(SCREENSHOT.with_name("pipeline-subflows.png"))
    if tasks:
        browser.click("Task Runs")
        text = browser.wait_for([t["name"] for t in tasks])
        assert all(re.search(rf"^{re.escape(t['name'])}$", text, re.M) for t in tasks), text[:3000]


def test_the_artifacts_page_lists_every_report(pipeline_run, browser):
    ui, _, _ = pipeline_run
    browser.open(f"{ui}/artifacts")
    browser.wait_for(["Artifacts", *ARTIFACT_KEYS])
    browser.screenshot(SCREENSHOT.with_name("artifacts.png"))


def test_the_evaluate_run_shows_its_reports(pipeline_run, browser):
    ui, _, _ = pipeline_run
    body = json.dumps({"flows": {"name": {"any_": ["evaluate"]}}}).encode()
    request = urllib.request.Request(f"{ui}/api/flow_runs/filter", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        (evaluate,) = json.load(response)
    browser.open(f"{ui}/runs/flow-run/{evaluate['id']}")
    browser.wait_for([evaluate["name"], "Artifacts"])
    browser.click("Artifacts")
    browser.wait_for(["metrics", "confusion-matrix", "evaluation-report", "gate", "model"])
