"""JupyterLab in a real browser: open a notebook, Run All, no error output, widgets render.

Starts JupyterLab from this interpreter on 127.0.0.1 (free port, no token, smoke profile,
one thread per kernel), drives it with headless Chromium through Playwright, and saves a
screenshot per notebook to slides/_build/screenshots/lab_NN.png (git-ignored).
Autosave is switched off, so the committed notebooks stay free of outputs; a test fails
if a notebook file changed anyway. Missing Chromium or Playwright fails, never skips.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "slides" / "_build" / "screenshots"
BROWSER_VIEWPORT = {"width": 1400, "height": 900}  # read by the browser fixture
# Lab settings for the test: every cell in the DOM (no virtual scrolling), no autosave,
# no news prompt.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
}

# The open notebook, read from JupyterLab's own model (exposed with expose_app_in_browser).
NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.content.model || !panel.sessionContext) return null;
  const cells = Array.from(panel.content.model.cells);
  const code = cells.filter(c => c.type === 'code');
  const errors = [];
  for (const c of code) {
    for (let i = 0; i < c.outputs.length; i++) {
      const out = c.outputs.get(i);
      if (out.type === 'error') errors.push(out.toJSON().ename + ': ' + out.toJSON().evalue);
    }
  }
  return {
    status: panel.sessionContext.kernelDisplayStatus,
    code: code.length,
    executed: code.filter(c => c.executionCount !== null).length,
    errors,
  };
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on loopback; yields its base URL, shut down afterwards."""
    settings = tmp_path_factory.mktemp("lab-settings")
    for name, value in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    port = free_port()
    env = {**os.environ, "TL_COURSE_PROFILE": "smoke", "OMP_NUM_THREADS": "1",
           "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path_factory.mktemp("lab-workspaces")),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    log = (tmp_path_factory.mktemp("lab-log") / "lab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         "--IdentityProvider.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={ROOT}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.news_url=", "--LabApp.extension_manager=readonly", "--allow-root"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {url} within 60 s; see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we started (kernels included)
            proc.wait()
        log.close()


def run_notebook(browser, lab: str, notebook: str, timeout_s: float = 150):
    """Open `notebook` in Lab, Run All, wait for every code cell; returns (page, state)."""
    page = browser.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.goto(f"{lab}/lab/tree/{notebook}?reset", wait_until="domcontentloaded")
    page.wait_for_function(
        "() => { const s = (" + NOTEBOOK_STATE + ")(); return s && s.status === 'idle'; }",
        timeout=90_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(
        "() => { const s = (" + NOTEBOOK_STATE + ")();"
        " return s && s.status === 'idle' && s.executed === s.code; }",
        timeout=timeout_s * 1000, polling=500)
    state = page.evaluate("(" + NOTEBOOK_STATE + ")()")
    assert not page_errors, f"JupyterLab page errors: {page_errors}"
    return page, state


def assert_no_errors(page, state, notebook: str) -> None:
    assert state["code"] > 5 and state["executed"] == state["code"], state
    assert not state["errors"], f"{notebook}: error outputs {state['errors']}"
    rendered = page.locator(
        ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
    assert rendered.count() == 0, f"{notebook}: {rendered.first.inner_text()[:500]}"


@pytest.fixture(scope="module")
def notebooks_unchanged():
    files = sorted((ROOT / "notebooks").glob("*.ipynb"))
    before = {f: f.read_bytes() for f in files}
    yield
    changed = [f.name for f in files if f.read_bytes() != before[f]]
    assert not changed, f"the browser test modified {changed}"


@pytest.mark.integration
def test_lab_runs_notebook_01(lab, browser, notebooks_unchanged):
    notebook = "notebooks/01_neural_network_basics.ipynb"
    page, state = run_notebook(browser, lab, notebook)
    try:
        assert_no_errors(page, state, notebook)
        images = page.locator(".jp-OutputArea-output img")
        assert images.count() >= 3, "expected the notebook's plots in the page"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        images.nth(1).scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOTS / "lab_01.png"))
    finally:
        page.close()


@pytest.mark.integration
def test_lab_runs_notebook_03_with_widget(lab, browser, notebooks_unchanged):
    notebook = "notebooks/03_fine_tuning.ipynb"
    page, state = run_notebook(browser, lab, notebook)
    try:
        assert_no_errors(page, state, notebook)
        button = page.locator(".jupyter-widgets.widget-button", has_text="Train")
        button.first.wait_for(state="visible", timeout=20_000)
        assert page.locator(".jupyter-widgets.widget-slider, .widget-dropdown").count() >= 2
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        button.first.scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOTS / "lab_03.png"))
    finally:
        page.close()
