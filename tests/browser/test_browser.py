"""The course in a real browser: JupyterLab + headless Debian Chromium driven by Playwright.

``make test-browser`` runs it (``make test`` does not: it takes minutes). For each notebook it
checks that the freshly opened notebook shows its stored widgets (no text repr), runs all
cells, checks that every widget rendered, moves a slider and presses a button the way a user
does, and asserts that the widget's figure changed and that the page logged no error.
Screenshots of a failure are saved under the test's temporary folder.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and Playwright for Python
(``pip install playwright``); never ``playwright install``, which downloads a browser.
``STABLETRAIN_BROWSER_NOTEBOOKS`` points the test at another folder of notebooks.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = ("02_lr_range_test.ipynb", "03_warmup_cosine.ipynb", "09_deep_supervision.ipynb")
RAW_REPR = ("VBox(children=", "HBox(children=", "Loading widget", "Box(children=")
# Console errors a working page still logs; each one with the reason it is harmless.
HARMLESS = (
    # the server has no language-server extension; JupyterLab probes for one and says so
    "Failed to load resource: the server responded with a status of 404",
)
# Lab settings for a test session: every cell in the DOM (no windowing, so every widget
# view can be found), no autosave (the copies stay as they were), no news or update checks.
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def _playwright():
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: install it with `apt-get install chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(
            "Playwright is missing: `pip install playwright` (never `playwright install`:"
            " the test uses Debian's /usr/bin/chromium)"
        )
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 over a copy of the notebooks; yields its base URL."""
    sync_playwright = _playwright()
    tmp = tmp_path_factory.mktemp("browser")
    source = Path(os.environ.get("STABLETRAIN_BROWSER_NOTEBOOKS", REPO / "notebooks"))
    root = tmp / "notebooks"
    root.mkdir()
    for name in NOTEBOOKS:
        shutil.copy(source / name, root / name)
    settings = tmp / "settings"
    for name, value in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    port, token = _free_port(), "stabletrain-browser-test"
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp / "config"),
        "JUPYTER_DATA_DIR": str(tmp / "data"),
        "OMP_NUM_THREADS": "1",
    }
    # as `make lab` does: the course's own notebooks are trusted, so JupyterLab renders their
    # stored widgets (an untrusted notebook's widget outputs show as text)
    trust = [sys.executable, "-m", "jupyter", "trust", *(str(root / n) for n in NOTEBOOKS)]
    subprocess.run(trust, env=env, check=True, capture_output=True)
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
        "--ServerApp.disable_check_xsrf=True",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = (tmp / "jupyterlab.log").open("w")
    server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"JupyterLab exited: {(tmp / 'jupyterlab.log').read_text()}")
                time.sleep(0.5)
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(tmp / "profile"),
                executable_path=str(CHROMIUM),
                headless=True,
                args=FLAGS,
                viewport={"width": 1400, "height": 1000},
            )
            yield context, base, token, tmp
            context.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


# a widget view renders as a Lumino panel holding the widget's own element (no MIME attribute)
WIDGET_OUTPUT = ".jp-OutputArea-output:has(> .jupyter-widgets)"


def _outputs_text(panel) -> str:
    return "\n".join(panel.locator(".jp-OutputArea-output").all_inner_texts())


def _check_widgets(panel, name: str, when: str, timeout_s: float = 90) -> None:
    """Every widget output is a rendered view: no text repr, no "Loading widget".

    Views render asynchronously (the first notebook also loads the widget manager on a cold
    server), so "Loading widget" is given ``timeout_s`` to go away before it counts as a failure.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        text = _outputs_text(panel)
        shown = [r for r in RAW_REPR if r in text]
        if (not shown and panel.locator(WIDGET_OUTPUT).count()) or time.monotonic() > deadline:
            break
        panel.page.wait_for_timeout(500)
    assert not shown, f"{name} {when} shows widget text {shown} instead of widgets"
    outputs = panel.locator(WIDGET_OUTPUT).all()
    assert outputs, f"{name} {when} shows no widget"
    for output in outputs:
        assert output.locator(".jupyter-widgets").count(), f"{name} {when}: a widget not rendered"


def _wait_idle(page, panel, timeout_s: float) -> None:
    """Until no cell is queued or running (``[*]``) and the kernel reports idle."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        prompts = panel.locator(".jp-InputArea-prompt").all_inner_texts()
        busy = panel.locator(".jp-Notebook-ExecutionIndicator[data-status='busy']").count()
        if prompts and not any("*" in p for p in prompts) and not busy:
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"the notebook did not finish in {timeout_s:.0f} s")


def _image_src(widget) -> str:
    images = widget.locator("img")
    return images.first.get_attribute("src") if images.count() else ""


def _wait_changed(widget, before: str, what: str, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = _image_src(widget)
        if now and now != before:
            return now
        widget.page.wait_for_timeout(250)
    raise AssertionError(f"the widget's figure did not change after {what}")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_widgets_render_and_respond(lab, name):
    context, base, token, tmp = lab
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    try:
        # a workspace of its own, reset, so that only this notebook is open
        page.goto(f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?token={token}&reset")
        panel = page.locator(".jp-NotebookPanel:visible")
        panel.locator(".jp-Cell").first.wait_for(timeout=60_000)
        _check_widgets(panel, name, "opened before running")

        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        page.wait_for_timeout(1000)
        _wait_idle(page, panel, timeout_s=300)
        _check_widgets(panel, name, "after Run All")
        tracebacks = panel.locator(".jp-OutputArea-output").filter(has_text="Traceback")
        assert not tracebacks.count(), f"{name}: {tracebacks.first.inner_text()}"

        # the first widget with a figure, a slider and a button: use it as a reader would
        widget = None
        for candidate in panel.locator(f"{WIDGET_OUTPUT} > .jupyter-widgets").all():
            if (
                candidate.locator("img").count()
                and candidate.locator(".noUi-handle").count()
                and candidate.locator("button").count()
            ):
                widget = candidate
                break
        assert widget is not None, f"{name}: no widget with a figure, a slider and a button"
        widget.scroll_into_view_if_needed()
        before = _image_src(widget)
        assert before, f"{name}: the widget shows no figure"
        handle = widget.locator(".noUi-handle").first
        handle.focus()
        for _ in range(3):
            handle.press("ArrowRight")
        moved = _wait_changed(widget, before, "moving a slider")
        button = widget.locator("button:enabled").first
        label = button.inner_text()
        button.click()
        _wait_changed(widget, moved, f"pressing {label!r}", timeout_s=180)
        _wait_idle(page, panel, timeout_s=180)
        errors = [e for e in errors if not any(h in e for h in HARMLESS)]
        assert not errors, f"{name}: console errors {errors}"
    except BaseException:
        page.screenshot(path=str(tmp / f"{Path(name).stem}-failure.png"), full_page=True)
        raise
    finally:
        page.close()
