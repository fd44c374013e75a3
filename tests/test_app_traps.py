"""Small traps of the Inference and Runs tabs: one class input, negative class = class, the seed on a failed Generate,
the default model, and the runs table and snapshot figure at phone width (390 px, in headless Chromium).

Screenshots land in test-artifacts/traps-*.png (git-ignored): look at them when this test changes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import gradio as gr
import pytest
from test_app import make_tiny_run
from test_app_browser import ARTIFACTS, _free_port, _wait, browser, generate_in_page  # noqa: F401 (browser: a fixture)

from ldm.app.handlers import LdmApp
from ldm.app.workspace import Workspace

PHONE = {"width": 390, "height": 844}


def _age(run: Path, seconds_ago: float) -> None:
    """Date a run's status.json and metrics.jsonl (what RunInfo.updated reads) ``seconds_ago``."""
    t = time.time() - seconds_ago
    for name in ("status.json", "metrics.jsonl"):
        if (run / name).exists():
            os.utime(run / name, (t, t))


def make_runs(ws: Path) -> dict[str, Path]:
    """A workspace as a student leaves it: an older finished run, then a newer quick test still training (its model
    exported at a checkpoint), a stopped run with a checkpoint only, and an exported pipeline folder."""
    runs = {name: ws / "runs" / name for name in ("finished", "quick-test", "checkpoint-only")}
    make_tiny_run(runs["finished"])
    shutil.copytree(runs["finished"] / "pipeline", runs["quick-test"] / "pipeline")
    status = {"state": "running", "step": 37, "max_steps": 200000, "pid": os.getpid()}  # a live process: running
    (runs["quick-test"] / "status.json").write_text(json.dumps(status))
    (runs["quick-test"] / "metrics.jsonl").write_text(json.dumps({"step": 37, "loss": 0.123456}) + "\n")
    (runs["checkpoint-only"] / "checkpoints").mkdir(parents=True)
    (runs["checkpoint-only"] / "checkpoints" / "latest").write_text("step-000040\n")
    (runs["checkpoint-only"] / "status.json").write_text(json.dumps({"state": "stopped", "step": 40}))
    shutil.copytree(runs["finished"] / "pipeline", ws / "models" / "exported")
    for name, age in (("finished", 3600), ("quick-test", 60), ("checkpoint-only", 10)):
        _age(runs[name], age)
    return runs


@pytest.fixture(scope="module")
def model_ws(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    make_tiny_run(ws / "runs" / "tiny")
    return ws


def _warnings(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(gr, "Warning", lambda message, *a, **k: shown.append(str(message)))
    return shown


# --------------------------------------------------------------------------------------------------------------------
# handlers


def test_one_class_input_chips_fill_it_and_it_is_what_gets_generated(model_ws):
    from ldm.app.blocks import build_app

    demo = build_app(model_ws, device="cpu")
    app: LdmApp = demo.ldm_app
    fns = {f.api_name: f for f in demo.fns.values()}
    generate, chip = fns["generate"], next(f for f in demo.fns.values() if isinstance(f.inputs[0], gr.Dataset))
    class_box, class_text = generate.inputs[1:3]
    assert isinstance(class_box, gr.Dropdown) and class_box.allow_custom_value  # pick or type
    assert not class_text.visible  # the API's class_text has no box on the page
    assert chip.outputs == [class_box]  # a chip fills the Class box itself
    model = str(model_ws / "runs" / "tiny")

    def generated_class(class_box_value: str, class_text_value: str = "") -> str:
        out = app.generate(model, class_box_value, class_text_value, 1, "ddim", 2, 2.0, "(none)", 5, False)
        return json.loads(out[3])["class"]

    # click the "smiling" chip, then pick sleepy in the Class box: sleepy is generated
    assert chip.fn(["smiling"]) == "smiling"
    assert generated_class("sleepy") == "sleepy"
    # an API caller's class_text is read only when the Class box is empty
    assert generated_class("sleepy", "smiling") == "sleepy"
    assert generated_class("", " Smiling") == "smiling"


def test_negative_class_equal_to_the_class_is_warned(model_ws, monkeypatch):
    shown = _warnings(monkeypatch)
    app = LdmApp(model_ws, device="cpu")
    model = str(model_ws / "runs" / "tiny")
    gallery, _, _, params, message, _ = app.generate(model, "smiling", "", 1, "ddim", 2, 2.0, " Smiling", 5, False)
    assert len(gallery) == 1 and json.loads(params)["negative_class"] == "smiling"  # generated anyway
    assert len(shown) == 1 and "negative class = class (smiling)" in shown[0] and "(none)" in shown[0]
    assert "**Warning:** negative class = class" in message
    shown.clear()
    message = app.generate(model, "smiling", "", 1, "ddim", 2, 2.0, "sleepy", 5, False)[4]
    assert shown == [] and "Warning" not in message


@pytest.mark.parametrize("randomize", [False, True])
def test_a_failed_generate_keeps_the_seed(model_ws, monkeypatch, randomize):
    _warnings(monkeypatch)
    app = LdmApp(model_ws, device="cpu")
    model = str(model_ws / "runs" / "tiny")
    failures = [
        (None, "smiling", 1, 2),  # no model
        (model, "smilling", 1, 2),  # unknown class
        (model, "smiling", 1, 1001),  # steps out of range
        (model, "smiling", 99, 2),  # too many images
    ]
    for model_, cls, n, steps in failures:
        out = app.generate(model_, cls, "", n, "ddim", steps, 2.0, None, 123, randomize)
        assert out[0] == [] and "Problem" in out[4] and out[5] == 123, (cls, n, steps, out[4])
    _, _, _, params, _, seed = app.generate(model, "smiling", "", 1, "ddim", 2, 2.0, None, 123, randomize)
    assert json.loads(params)["seeds"] == [seed] and (seed != 123) == randomize  # success shows the seed used


def test_the_default_model_is_the_newest_finished_run_with_a_pipeline(tmp_path):
    runs = make_runs(tmp_path)
    ws = Workspace(tmp_path)
    assert [r.name for r in ws.runs()] == ["runs/checkpoint-only", "runs/quick-test", "runs/finished"]  # newest first
    models = ws.models()
    assert [v for _, v in models] == [
        str(runs["finished"]),
        str(runs["quick-test"]),
        str(runs["checkpoint-only"]),
        str(tmp_path / "models" / "exported"),
    ]
    assert models[0][0] == "runs/finished  (run, finished, step 10)"
    assert models[2][0] == "runs/checkpoint-only  (run checkpoint, stopped, step 40)"
    picker, _ = LdmApp(ws).refresh_models(None)  # what the page shows on load
    assert picker.value == str(runs["finished"])
    # nothing finished: the newest run with a pipeline goes first, before the newer checkpoint-only run
    shutil.rmtree(runs["finished"])
    assert ws.models()[0][1] == str(runs["quick-test"])


# --------------------------------------------------------------------------------------------------------------------
# phone width, in Chromium

# every element of the runs table that scrolls sideways (the hidden sizing copy of the cells does not count)
SIDEWAYS = """() => [...document.querySelectorAll('#ldm-runs-table, #ldm-runs-table *')]
    .filter(e => e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1 && !e.closest('.sizing-body'))
    .map(e => `${e.tagName}.${e.className}: ${e.scrollWidth} > ${e.clientWidth}`)"""


def _pick(page, elem_id: str, option: str) -> None:
    """Open the dropdown ``elem_id`` and click ``option`` in its list."""
    page.locator(f"#{elem_id} input").click()
    page.locator(f"[role=option][aria-label='{option}']:visible").click()
    page.wait_for_timeout(300)


@pytest.mark.browser
def test_inference_and_runs_tabs_at_phone_width(tmp_path, browser):  # noqa: F811 (the fixture)
    from ldm.app.blocks import launch_app

    ARTIFACTS.mkdir(exist_ok=True)
    ws = tmp_path / "ws"
    make_runs(ws)
    port = _free_port()
    demo = launch_app(ws, port=port, prevent_thread_lock=True, quiet=True, device="cpu")
    page = browser.new_page(viewport=PHONE)
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_text("3 classes: frowning, smiling, sleepy").wait_for(timeout=60_000)
        assert page.locator("#ldm-model input").input_value().startswith("runs/finished ")  # not the newer test run

        # a chip fills the Class box; picking another class there is what gets generated
        page.locator("#ldm-chips").get_by_text("smiling", exact=True).click()
        class_box = page.locator("#ldm-class input")
        _wait(page, "the chip's class in the Class box", lambda: class_box.input_value() == "smiling", 10)
        _pick(page, "ldm-class", "sleepy")
        _pick(page, "ldm-negative", "sleepy")
        assert class_box.input_value() == "sleepy"
        message = generate_in_page(page)
        assert "image(s) of sleepy" in message and "negative class = class (sleepy)" in message, message
        snapshot = page.locator("#ldm-snapshot img")
        _wait(page, "the snapshot figure", lambda: snapshot.count() == 1, 30)
        page.wait_for_timeout(1000)
        snapshot.scroll_into_view_if_needed()
        page.locator("#ldm-snapshot").screenshot(path=str(ARTIFACTS / "traps-snapshot-390.png"))
        shown, natural = snapshot.evaluate("e => [e.getBoundingClientRect().width, e.naturalWidth]")
        # the figure is drawn with ~19 px text at its natural size: shown at least half as large, text stays >= 9 px
        assert shown <= PHONE["width"] and natural <= 2 * shown, (shown, natural)
        page.screenshot(path=str(ARTIFACTS / "traps-inference-390.png"), full_page=True)

        page.get_by_role("tab", name="Runs").click()
        table = page.locator("#ldm-runs-table")
        _wait(page, "the runs table", lambda: "quick-test" in table.inner_text(), 30)
        page.wait_for_timeout(1000)
        table.screenshot(path=str(ARTIFACTS / "traps-runs-390.png"))
        assert page.evaluate(SIDEWAYS) == []  # no inner horizontal scroll
        box = table.bounding_box()
        headers = page.locator("#ldm-runs-table th[role=columnheader]")
        assert headers.count() == 6
        for i in range(headers.count()):
            cell = headers.nth(i).bounding_box()
            assert box["x"] <= cell["x"] and cell["x"] + cell["width"] <= box["x"] + box["width"] + 1, i
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    finally:
        page.close()
        demo.close()
