"""In Chromium: a 2-member sweep started from the Training tab's Sweep panel, stopped and continued; both runs ticked
in the Runs tab and compared (two curves, the table with the swept setting); a member evaluated from the Runs tab.
One app and one sweep for all of it (a browser test costs tens of seconds). Screenshots in test-artifacts/
(git-ignored)."""

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
)

pytestmark = pytest.mark.browser


def _tiny_faces_cache(ws) -> None:
    """3 people x 4 real photos copied into the workspace (the app refuses folders outside it) and encoded with a
    tiny autoencoder at 16x16: a cache whose images ``ldm eval`` can compare against."""
    import shutil

    import torch
    from conftest import ATT_FACES
    from fakes import tiny_autoencoder

    from ldm.cli import main as ldm_main

    if not ATT_FACES.is_dir():
        pytest.skip(f"real face dataset not found at {ATT_FACES}")
    for name in ("s1", "s2", "s3"):
        (ws / "data" / "faces" / name).mkdir(parents=True)
        for f in sorted((ATT_FACES / name).iterdir())[:4]:
            shutil.copy(f, ws / "data" / "faces" / name / f.name)
    torch.manual_seed(0)
    tiny_autoencoder().save_pretrained(ws / "data" / "tiny-vae")
    argv = ["prepare", "--data", str(ws / "data" / "faces"), "--vae", str(ws / "data" / "tiny-vae")]
    assert ldm_main([*argv, "--out", str(ws / "data" / "latents"), "--device", "cpu", "data.image_size=16"]) == 0


def test_a_sweep_stopped_continued_compared_and_evaluated(tmp_path, browser_page):  # noqa: F811
    """Stop in the middle of a sweep, Continue sweep finishes it without training a member twice; Compare shows both
    members; the Runs tab's Evaluate runs ``ldm eval`` on a member in the worker and shows its numbers."""
    import json

    from ldm.app.blocks import launch_app
    from ldm.app.handlers import LdmApp
    from ldm.run_folder import RunFolder

    ARTIFACTS.mkdir(exist_ok=True)
    ws = tmp_path / "ws"
    LdmApp(ws)  # the workspace (.ldm-app/) first: prepare then records paths inside it relative
    _tiny_faces_cache(ws)
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
        sweep = ws / "runs" / "sweeps" / "lr"
        first, second = sweep / "learning_rate=0.001", sweep / "learning_rate=0.003"
        # stop once the first member has trained some steps
        _wait(page, "the first member's steps", lambda: (RunFolder(first).read_status() or {}).get("step", 0) >= 3, 90)
        page.locator("#ldm-stop").click()
        _wait(page, "the sweep to stop", lambda: _progress(page)[0] == "stopped", 90)
        stopped_at = RunFolder(first).read_status()["step"]
        page.screenshot(path=str(ARTIFACTS / "sweep-3-stopped.png"), full_page=True)

        page.locator("#ldm-continue-sweep").click()
        _wait(page, "the continued sweep", lambda: "run " in progress.inner_text(), 60)
        _wait(page, "the sweep to finish", lambda: _progress(page)[0] == "finished", 180)
        assert (sweep / "summary.md").read_text().count("| finished |") == 2
        # the stopped member went on from its checkpoint; each member's first segment starts at step 0 once
        for member in (first, second):
            starts = [seg["start_step"] for seg in RunFolder(member).read_status()["segments"]]
            assert starts.count(0) == 1, (member.name, starts)
        assert RunFolder(first).read_status()["step"] >= stopped_at
        page.screenshot(path=str(ARTIFACTS / "sweep-4-continued.png"), full_page=True)

        # Runs tab: both members ticked and compared
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

        # Evaluate the first member (ldm eval in the worker), its numbers shown with the run
        page.locator("#ldm-run-pick input").click()
        page.get_by_role("option", name="runs/sweeps/lr/learning_rate=0.001", exact=True).click()
        _fill(page, "ldm-eval-samples", "10")
        page.locator("#ldm-evaluate").click()
        _wait(page, "the evaluation job", lambda: (first / RunFolder.EVAL).exists(), 300)
        result = json.loads((first / RunFolder.EVAL).read_text())
        assert result["kid"] is not None and result["settings"]["num_samples"] == 10
        page.get_by_role("tab", name="Runs").click()
        page.locator("#ldm-runs-refresh").click()  # keeps the picked run
        details = page.locator("#ldm-run-details")
        _wait(page, "the run's evaluation", lambda: "Evaluation** (10 images)" in details.inner_text()
              or "Evaluation (10 images)" in details.inner_text(), 60)  # fmt: skip
        text = details.inner_text()
        assert "learning_rate=0.001" in text and f"KID {result['kid']:.4f}" in text and "Memorisation share" in text
        _wait(page, "the memorisation figure", lambda: page.locator("#ldm-memorisation img").count() == 1, 30)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "sweep-5-evaluated.png"), full_page=True)
    finally:
        close_app(demo)
