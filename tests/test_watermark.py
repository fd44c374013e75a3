"""The invisible watermark: it survives a PNG-chunk strip and a JPEG re-save, real photos do not carry it, every
image ``sample_to_folder`` writes carries it, and ``ldm verify`` names the model that made an image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("imwatermark", reason="invisible-watermark is not installed")

from ldm.cli import main as ldm_main  # noqa: E402
from ldm.watermark import can_carry, decode, encode, model_id, payload  # noqa: E402

CLASSES = ["frowning", "smiling"]
HASH = "3f9a0c7d" + "0" * 56


def _strip(image: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


def _jpeg(image: Image.Image, quality: int = 90) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def _faces(n: int, size: int = 64) -> list[Image.Image]:
    from ldm.data.synth import SYNTH_CLASSES, draw_face

    rng = np.random.default_rng(0)
    return [draw_face(rng, SYNTH_CLASSES[i % 5]).resize((size, size), Image.LANCZOS) for i in range(n)]


def _photos(folder: Path, n: int, mode: str) -> list[Image.Image]:
    """The first photo of ``n`` people, at 64x64 as training loads them."""
    from ldm.data.folders import load_image
    from ldm.figures import to_pil

    paths = [folder / f"s{k}" / "1.pgm" for k in range(1, n + 1)]
    return to_pil(torch.stack([load_image(p, 64, 1 if mode == "L" else 3) for p in paths]))


def test_payload_is_the_marker_and_the_id():
    bits = payload(HASH)
    assert len(bits) == 32 and 0 < sum(bits[:16]) < 16  # the marker is neither all zeros nor all ones
    assert model_id(HASH) == "3f9a" and bits[16:] == [int(b) for b in f"{0x3F9A:016b}"]
    with pytest.raises(ValueError, match="hex"):
        model_id("xyz")


@pytest.mark.parametrize("size", [64, 256])
def test_colour_mark_survives_chunk_strip_jpeg90_and_grey(size):
    for image in _faces(4, size):
        marked = encode(image, HASH)
        assert marked.size == image.size and marked.mode == "RGB"
        change = np.abs(np.asarray(marked, np.int16) - np.asarray(image, np.int16))
        assert 0 < change.max() <= 14  # a block's largest singular value moves by <= 27: <= 13.5 levels per pixel
        for attacked in (marked, _strip(marked), _jpeg(marked), _jpeg(marked.convert("L"))):  # also turned grey
            found = decode(attacked)
            assert found.marked and found.model_id == "3f9a", found
        assert not decode(image).marked


def test_grey_mark_survives_jpeg90_and_stays_grey(att_faces):
    for image in _photos(att_faces, 4, "L"):
        marked = encode(image, HASH)
        assert marked.mode == "L" and marked.size == (64, 64)
        for attacked in (_jpeg(marked), _jpeg(marked.convert("RGB"))):
            found = decode(attacked)
            assert found.marked and found.model_id == "3f9a", found


def test_real_photos_are_not_marked(att_faces):
    for mode in ("RGB", "L"):
        for photo in _photos(att_faces, 10, mode):
            assert not decode(photo).marked and not decode(_jpeg(photo)).marked


def test_too_small_images_are_left_unmarked():
    small = Image.new("RGB", (32, 32), (120, 80, 60))
    assert not can_carry(small) and encode(small, HASH) is small
    found = decode(small)
    assert not found.marked and "too small" in found.reason


# ---------------------------------------------------------------------------------------------------------------------
# through the pipeline and the CLI


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder with ``runs/tiny/pipeline``: a tiny seeded UNet on 32x32x4 latents and the tiny autoencoder (x2),
    so 64x64 images."""
    from diffusers import DDPMScheduler, UNet2DModel
    from fakes import tiny_autoencoder

    from ldm.diffusion.pipeline import build_pipeline

    torch.set_num_threads(1)
    ws = tmp_path_factory.mktemp("ws")
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=4, out_channels=4, block_out_channels=(8, 16), norm_num_groups=8,
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=len(CLASSES) + 1)  # fmt: skip
    vae = tiny_autoencoder(sample_size=64)
    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    build_pipeline(unet, vae, train.config, CLASSES, 1.0).save_pretrained(ws / "runs" / "tiny" / "pipeline")
    return ws


@pytest.fixture(scope="module")
def sampled(workspace):
    from ldm.config import SamplingConfig
    from ldm.diffusion.pipeline import load_pipeline
    from ldm.diffusion.sample_files import sample_to_folder

    folder = workspace / "runs" / "tiny" / "pipeline"
    pipe = load_pipeline(folder, device="cpu")
    sampling = SamplingConfig(num_inference_steps=2, num_images=2, seed=0)
    return pipe, sample_to_folder(pipe, ["smiling"], workspace / "samples", sampling, model_path=folder)


def test_sample_to_folder_marks_every_image_and_regenerates_it(sampled):
    from ldm.diffusion.sample_files import model_identity, read_parameters, regenerate

    pipe, files = sampled
    mid = model_id(model_identity(pipe)["weights_hash"])
    for path in files.images:
        found = decode(Image.open(path))
        assert found.marked and found.model_id == mid
        params = read_parameters(path)
        assert params["watermark"]["model_id"] == mid and params["watermark"]["method"] == "dwtDctSvd"
        assert np.array_equal(np.asarray(regenerate(params, pipe)), np.asarray(Image.open(path)))  # marked again
    old = {**read_parameters(files.images[0]), "watermark": None}  # written before the mark existed: unmarked
    assert not decode(regenerate(old, pipe)).marked


def test_verify_names_the_model_and_returns_the_exit_codes(sampled, workspace, att_faces, tmp_path, capsys):
    _, files = sampled
    jpg = tmp_path / "copy.jpg"
    _strip(Image.open(files.images[0])).save(jpg, quality=90)
    photo = tmp_path / "photo.png"
    _photos(att_faces, 1, "RGB")[0].save(photo)
    models = ["--models", str(workspace)]

    assert ldm_main(["verify", str(files.images[0]), str(jpg), *models]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(": marked, model id " in line and "made by tiny (" in line for line in out), out

    assert ldm_main(["verify", str(photo), str(jpg), *models]) == 1  # one is not marked
    out = capsys.readouterr().out
    assert f"{photo}: not marked" in out and f"{jpg}: marked" in out

    assert ldm_main(["verify", str(jpg), "--models", str(tmp_path)]) == 0  # marked, its model not below tmp_path
    assert "no model below" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.png"], "image not found"),
        (["notes.txt"], "not a readable image"),
        (["photo.png", "--models", "nowhere"], "--models nowhere: no such folder"),
    ],
)
def test_verify_refuses_bad_input(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    assert ldm_main(["verify", *argv]) == 2
    assert message in capsys.readouterr().err


def test_text_to_image_images_carry_the_mark_of_their_model(tmp_path, capsys):
    pytest.importorskip("transformers", reason="the t2i extra (transformers) is not installed")
    from fakes import write_tiny_text2image

    from ldm.text2image import T2IRequest, generate_to_folder, load_text2image

    sd = write_tiny_text2image(tmp_path / "models" / "tiny-sd")
    model = load_text2image(str(sd), device="cpu")
    request = T2IRequest(prompt="a red square", width=64, height=64, steps=2)
    [(path, record)] = generate_to_folder(model, request, tmp_path / "out")
    found = decode(Image.open(path))
    assert found.marked and found.model_id == model_id(model.weights_hash) == record["watermark"]["model_id"]
    assert ldm_main(["verify", str(path), "--models", str(tmp_path / "models")]) == 0
    assert "made by tiny-sd (" in capsys.readouterr().out
