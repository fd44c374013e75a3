"""In Chromium: a 2-member sweep started from the Training tab's Sweep panel, then both runs ticked in the Runs tab
and compared (two curves, the table with the swept setting). Screenshots in test-artifacts/ (git-ignored)."""

from __future__ import annotations

import pytest
from test_app_browser import (  # noqa: F401 (browser, browser_page: fixtures)
    ARTIFACTS,
    TINY,
    _fill,
    _free_port,
    _progress,
    _wait,
    browser,
    browser_page,
    close_app,
    make_tiny_cache,
)

pytestmark = pytest.mark.browser


def test_a_sweep_from_the_training_tab_compared_in_the_runs_tab(tmp_path, browser_page):  # noqa: F811
    from ldm.app.blocks import launch_app

    ARTIFACTS.mkdir(exist_ok=True)
    ws = tmp_path / "ws"
    make_tiny_cache(ws)
    page = browser_page
    demo = launch_app(ws, port=(port := _free_port()), prevent_thread_lock=True, quiet=True, device="cpu")
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_role("tab", name="Training").click()
        page.locator("#ldm-preprocess").get_by_text("no", exact=True).click()
        _fill(page, "ldm-latent-dir", "data/latents")
        page.locator("#ldm-preset input").click()
        page.get_by_role("option", name="tiny", exact=True).click()
        _fill(page, "ldm-extra", TINY)
        page.locator("#ldm-sweep").get_by_text("Sweep: try several settings").click()
        _fill(page, "ldm-sweep-values1", "0.001, 0.003")
        _fill(page, "ldm-sweep-minutes", "0.1")
        _fill(page, "ldm-sweep-name", "lr")
        page.locator("#ldm-start-sweep").click()
        progress = page.locator("#ldm-progress .ldm-progress-text")
        _wait(page, "the first member", lambda: "run 1 of 2" in progress.inner_text(), 60)
        page.screenshot(path=str(ARTIFACTS / "sweep-1-training.png"), full_page=True)
        _wait(page, "the second member", lambda: "run 2 of 2" in progress.inner_text(), 120)
        _wait(page, "the sweep to finish", lambda: _progress(page)[0] == "finished", 120)
        assert (ws / "runs" / "sweeps" / "lr" / "summary.md").read_text().count("| finished |") == 2

        page.get_by_role("tab", name="Runs").click()
        page.locator("#ldm-compare").get_by_text("Compare runs").click()
        picks = page.locator("#ldm-compare-pick")
        _wait(page, "the members in the compare box", lambda: "learning_rate=0.003" in picks.inner_text(), 30)
        for label in ("runs/sweeps/lr/learning_rate=0.001", "runs/sweeps/lr/learning_rate=0.003"):
            picks.get_by_label(label).check()
        page.locator("#ldm-compare-button").click()
        table = page.locator("#ldm-compare-table")
        _wait(page, "the comparison table", lambda: "training.learning_rate" in table.inner_text(), 60)
        text = table.inner_text()
        assert "0.001" in text and "0.003" in text and text.count("finished") == 2
        figure = page.locator("#ldm-compare-figure img")
        _wait(page, "the comparison figure", lambda: figure.count() == 1, 30)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "sweep-2-compared.png"), full_page=True)
    finally:
        close_app(demo)
