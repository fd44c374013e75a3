"""Text to image, offline: tiny SD-1.x-style and SDXL-style pipelines with random weights that the tests build and
save, through ``ldm t2i``, the library and the app's tab handler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers", reason="the t2i extra (transformers) is not installed")
from fakes import write_tiny_lora, write_tiny_text2image  # noqa: E402

from ldm.cli import main as ldm_main  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sd(tmp_path_factory) -> Path:
    return write_tiny_text2image(tmp_path_factory.mktemp("t2i") / "tiny-sd")


@pytest.fixture(scope="module")
def lora(sd, tmp_path_factory) -> Path:
    return write_tiny_lora(sd, tmp_path_factory.mktemp("lora") / "tiny-lora")


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _t2i(sd: Path, out: Path, *extra: str) -> list[Path]:
    argv = ["t2i", "--model", str(sd), "--prompt", "a red square", "--steps", "3", "--out", str(out), *extra]
    assert ldm_main(argv) == 0
    return sorted(out.glob("*.png"))


def test_t2i_makes_the_asked_size_the_same_pixels_per_seed_and_from_image_regenerates(sd, tmp_path, capsys):
    a = _t2i(sd, tmp_path / "a", "-n", "2", "--width", "48", "--height", "32", "--seed", "5")
    assert [p.name for p in a] == ["a-red-square-seed5.png", "a-red-square-seed6.png"]
    assert _pixels(a[0]).shape == (32, 48, 3)
    b = _t2i(sd, tmp_path / "b", "--width", "48", "--height", "32", "--seed", "5")
    assert np.array_equal(_pixels(a[0]), _pixels(b[0]))  # same seed, same pixels, alone or among others
    assert not np.array_equal(_pixels(a[0]), _pixels(a[1]))
    capsys.readouterr()
    assert ldm_main(["t2i", "--from-image", str(a[1]), "--out", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("pixel-identical to " + str(a[1]) + ": yes")
    assert np.array_equal(_pixels(a[1]), _pixels(tmp_path / "again" / a[1].name))
    assert ldm_main(["sample", "--from-image", str(a[0]), "--out", str(tmp_path / "via-sample")]) == 0  # dispatches
    assert capsys.readouterr().out.splitlines()[-1].endswith(": yes")


def test_negative_prompt_and_lora_change_the_image_and_scale_0_is_the_base(sd, lora, tmp_path):
    base = _pixels(_t2i(sd, tmp_path / "base")[0])
    negative = _pixels(_t2i(sd, tmp_path / "neg", "--negative-prompt", "blue circles")[0])
    with_lora = _pixels(_t2i(sd, tmp_path / "lora", "--lora", str(lora))[0])
    lora_0 = _pixels(_t2i(sd, tmp_path / "lora0", "--lora", str(lora), "--lora-scale", "0")[0])
    assert np.abs(negative - base).max() > 0 and np.abs(with_lora - base).max() > 0
    assert np.abs(lora_0 - base).max() <= 1  # the LoRA at scale 0 is the base model (to a rounded pixel)


def test_sdxl_style_pipeline(tmp_path):
    sdxl = write_tiny_text2image(tmp_path / "tiny-sdxl", xl=True)
    out = _t2i(sdxl, tmp_path / "out", "--width", "32", "--height", "48", "--guidance-scale", "5")
    assert _pixels(out[0]).shape == (48, 32, 3)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"--model": "nobody-here/no-such-model"}, "is not in the local cache and cannot be downloaded here"),
        ({"--width": "33"}, "width 33 must be a multiple of 2"),
        ({"--guidance-scale": "nan"}, "guidance scale must be a number >= 0"),
        ({"--seed": "soon"}, "give a whole number or 'random'"),
        ({"--prompt": " "}, "the prompt is empty"),
        ({"-n": "0"}, "number of images must be from 1 to 16"),
    ],
)
def test_bad_requests_are_refused_with_a_message(sd, tmp_path, capsys, changes, expected):
    flags = {"--model": str(sd), "--prompt": "a red square", "--steps": "2", "--out": str(tmp_path / "o")}
    flags.update(changes)
    assert ldm_main(["t2i", *(x for pair in flags.items() for x in pair)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_the_app_tab_generates_and_reports_a_missing_model(sd, tmp_path):
    import shutil

    from ldm.app.handlers import LdmApp

    ws = tmp_path / "ws"
    shutil.copytree(sd, ws / "models" / "tiny-sd")
    app = LdmApp(ws, device="cpu")
    assert app.text2image.defaults("models/tiny-sd") == [32, 32, 25, 7.5]  # its own size, SD 1.x's steps, guidance
    assert app.text2image.defaults("SDXL-Turbo") == [512, 512, 1, 0.0]  # not here: by its name
    gallery, files, params, message, seed = app.text2image.generate(
        "models/tiny-sd", "a red square", "", 3, False, 32, 48, 2, 4.0, 2, "", 1.0, progress=lambda *a, **k: None
    )
    assert len(gallery) == 2 and seed == 3 and "Done: 2 image(s), 32x48" in message
    assert _pixels(Path(files[0])).shape == (48, 32, 3)
    _, _, _, message, _ = app.text2image.generate(
        "models/missing", "x", "", 0, False, None, None, 2, None, 1, "", 1.0, progress=lambda *a, **k: None
    )
    assert message.startswith("**Problem:**") and "does not exist" in message
