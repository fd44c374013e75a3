"""In Chromium: a finished run trained longer from the Runs tab, again after the workspace was copied elsewhere (the
original deleted) and generated from there; and the status lines after stop, resume and a failed phase.

Screenshots land in test-artifacts/ (git-ignored): look at them when this test changes.
"""

from __future__ import annotations

import json
import shutil

import pytest
from test_app_browser import (  # noqa: F401 (fixtures)
    ARTIFACTS,
    TINY,
    _fill,
    _free_port,
    _progress,
    _wait,
    browser,
    browser_page,
    close_app,
    generate_in_page,
    make_tiny_cache,
)

pytestmark = pytest.mark.browser


def _segments(run) -> list[dict]:
    return json.loads((run / "status.json").read_text()).get("segments") or []


def _continue_from_runs_tab(page, minutes: str, shot: str) -> None:
    """Runs tab: the (only) run, Resume / continue for ``minutes`` more; wait until it finished again."""
    page.get_by_role("tab", name="Runs").click()
    page.locator("#ldm-runs-refresh").click()
    _fill(page, "ldm-more-minutes", minutes)
    page.locator("#ldm-resume-run").click()
    _wait(page, "the continuation to start", lambda: _progress(page)[0] in ("starting", "running"), 60)
    _wait(page, "the continuation to finish", lambda: _progress(page)[0] == "finished", 180)
    page.wait_for_timeout(2500)  # the last poll: plot and message
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)


def test_continue_a_finished_run_then_from_a_copied_workspace_and_generate(tmp_path, browser_page):  # noqa: F811
    from ldm.app.blocks import launch_app
    from ldm.config import load_config
    from ldm.training.trainer import train

    ARTIFACTS.mkdir(exist_ok=True)
    ws = tmp_path / "ws"
    (ws / ".ldm-app").mkdir(parents=True)  # a workspace before its cache is made: the cache records it relatively
    cache = make_tiny_cache(ws)
    page = browser_page
    demo = launch_app(ws, port=(port := _free_port()), prevent_thread_lock=True, quiet=True, device="cpu")
    try:
        # a run that finished its budget (trained by the CLI's code path, as `ldm train` would)
        cfg = load_config(None, ["unet.preset=tiny", "training.max_steps=6", *TINY.split()])
        assert train(cfg, cache, ws / "runs" / "r", progress=False, device="cpu").state == "finished"
        page.goto(f"http://127.0.0.1:{port}/")
        _continue_from_runs_tab(page, "0.1", "continue-1-finished-again.png")
        run = ws / "runs" / "r"
        assert [s["start_step"] for s in _segments(run)] == [0, 6] and _progress(page)[1] > 6
        message = page.locator("#ldm-train-message").inner_text()
        line = page.locator("#ldm-progress .ldm-progress-msg").inner_text()
        assert "of this continuation" in line and line in message.replace("*", ""), (line, message)
        page.get_by_role("tab", name="Runs").click()
        page.locator("#ldm-runs-refresh").click()
        details = page.get_by_text("continuation 1, steps 6 →")
        details.wait_for(timeout=20_000)
        page.screenshot(path=str(ARTIFACTS / "continue-2-history.png"), full_page=True)
    finally:
        demo.close()

    copy = tmp_path / "elsewhere" / "ws-copy"
    shutil.copytree(ws, copy, symlinks=True)
    shutil.rmtree(ws)
    demo = launch_app(copy, port=(port := _free_port()), prevent_thread_lock=True, quiet=True, device="cpu")
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        _continue_from_runs_tab(page, "0.1", "continue-3-copied-workspace.png")
        assert [s["start_step"] for s in _segments(copy / "runs" / "r")][:2] == [0, 6]
        assert len(_segments(copy / "runs" / "r")) == 3
        page.get_by_role("tab", name="Runs").click()
        page.locator("#ldm-use").click()
        page.get_by_text("3 classes: angry, happy, sad").wait_for(timeout=30_000)
        assert "image(s) of" in generate_in_page(page)
        page.screenshot(path=str(ARTIFACTS / "continue-4-generated-from-copy.png"), full_page=True)
    finally:
        close_app(demo)


def test_status_lines_agree_after_stop_resume_and_a_failed_phase(tmp_path, browser_page):  # noqa: F811
    from ldm.app.blocks import launch_app

    ARTIFACTS.mkdir(exist_ok=True)
    ws = tmp_path / "ws"
    make_tiny_cache(ws)
    bad = ws / "data" / "broken" / "a"
    bad.mkdir(parents=True)
    (bad / "x.png").write_text("not an image")  # a dataset whose only file is unreadable: its first phase fails
    page = browser_page
    demo = launch_app(ws, port=(port := _free_port()), prevent_thread_lock=True, quiet=True, device="cpu")

    def lines() -> tuple[str, str, str]:
        """(state, the message under the progress bar, the message under the buttons)."""
        return (
            _progress(page)[0],
            page.locator("#ldm-progress .ldm-progress-msg").inner_text(),
            page.locator("#ldm-train-message").inner_text(),
        )

    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_role("tab", name="Training").click()
        # a recipe preset fills the form and says what it was measured to give, and what the budget gives
        note = page.locator("#ldm-recipe-note")
        assert "demo" in note.inner_text() and page.locator("#ldm-max-minutes input").input_value() == "5"
        page.locator("#ldm-recipe input").click()
        page.get_by_role("option", name="faces", exact=True).click()
        _wait(page, "the faces recipe", lambda: page.locator("#ldm-max-minutes input").input_value() == "15", 10)
        _wait(page, "its note", lambda: "configs/faces.yaml" in note.inner_text(), 10)
        assert "Measured" in note.inner_text() and "Estimate: about" in note.inner_text(), note.inner_text()
        page.screenshot(path=str(ARTIFACTS / "status-0-recipe.png"), full_page=True)
        page.locator("#ldm-preprocess").get_by_text("no", exact=True).click()
        _fill(page, "ldm-latent-dir", "data/latents")
        page.locator("#ldm-preset input").click()
        page.get_by_role("option", name="tiny", exact=True).click()
        _fill(page, "ldm-max-steps", "0")
        _fill(page, "ldm-max-minutes", "3")
        _fill(page, "ldm-run-name", "status-run")
        _fill(page, "ldm-extra", TINY)
        page.locator("#ldm-start").click()
        _wait(page, "the first steps", lambda: _progress(page)[1] >= 1, 120)
        page.locator("#ldm-stop").click()
        _wait(page, "stopping to show", lambda: lines()[0] in ("stopping", "stopped"), 10)
        assert "running" not in page.locator("#ldm-progress .ldm-progress-text").inner_text()
        _wait(page, "the stop", lambda: lines()[0] == "stopped", 90)
        _wait(page, "the message to follow", lambda: "Resume continues it" in lines()[2], 10)
        state, line, message = lines()
        assert line in message.replace("**", ""), (line, message)
        page.screenshot(path=str(ARTIFACTS / "status-1-stopped.png"), full_page=True)

        stopped_at = _progress(page)[1]
        page.locator("#ldm-resume").click()  # the run named in the form
        seen = set()
        _wait(page, "the resumed run to step", lambda: seen.add(lines()[0]) or _progress(page)[1] > stopped_at, 120)
        assert seen <= {"stopped", "starting", "running"} and "Resuming **runs/status-run**" not in lines()[2]
        assert "Resuming" in lines()[2] or lines()[0] == "running"
        page.screenshot(path=str(ARTIFACTS / "status-2-resumed.png"), full_page=True)
        page.locator("#ldm-stop").click()
        _wait(page, "the second stop", lambda: lines()[0] == "stopped", 90)

        # a job whose first phase fails: the reason from the log, in both places; never "Starting"
        page.locator("#ldm-preprocess").get_by_text("yes", exact=True).click()
        _fill(page, "ldm-data-dir", "data/broken")
        _fill(page, "ldm-latent-dir", "")
        _fill(page, "ldm-run-name", "broken-run")
        page.locator("#ldm-start").click()
        _wait(page, "the failure", lambda: lines()[0] == "failed", 120)
        _wait(page, "the message to follow", lambda: "failed" in lines()[2], 10)
        state, line, message = lines()
        assert "has no readable image" in line and line in message.replace("*", ""), (line, message)
        assert "Starting" not in message, message
        page.screenshot(path=str(ARTIFACTS / "status-3-failed.png"), full_page=True)
    finally:
        close_app(demo)
