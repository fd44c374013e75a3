"""Sample folders: every sampled PNG carries its parameters, and they regenerate the same pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.errors import UserError

CLASSES = ["frowning", "sleepy", "smiling"]
STEPS = 3


@pytest.fixture(scope="module")
def run_dir(tiny_vae_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    from ldm.diffusion.pipeline import build_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine: one thread is far faster
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        norm_num_groups=8,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=len(CLASSES) + 1,
    )
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir)
    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    run = tmp_path_factory.mktemp("run")
    build_pipeline(unet, vae, train.config, CLASSES, 0.7).save_pretrained(run / "pipeline")
    yield run
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sampled(run_dir, tmp_path_factory):
    """``ldm sample`` of 2 classes x 3 images in batches of 4 (so images sit in different batches), with snapshots."""
    from ldm.config import SamplingConfig
    from ldm.diffusion.pipeline import load_pipeline
    from ldm.diffusion.sample_files import sample_to_folder

    pipe = load_pipeline(run_dir, device="cpu")
    out = tmp_path_factory.mktemp("samples")
    sampling = SamplingConfig(
        scheduler="euler_a",  # stochastic: the per-step noise must be reproduced too
        num_inference_steps=STEPS,
        guidance_scale=2.5,
        num_images=3,
        seed=20,
        snapshot_timesteps=(999, 500, 0),
        negative_class="frowning",
        batch_size=4,
    )
    files = sample_to_folder(
        pipe, ["smiling", "Sleepy"], out, sampling, snapshots=True, model_path=run_dir / "pipeline"
    )
    return pipe, files, out


def test_every_png_carries_its_parameters(sampled, run_dir):
    from ldm.diffusion.sample_files import read_parameters, weights_hash

    pipe, files, out = sampled
    assert [p.name for p in files.images] == [
        "smiling-seed20.png", "smiling-seed21.png", "smiling-seed22.png",
        "sleepy-seed20.png", "sleepy-seed21.png", "sleepy-seed22.png",
    ]  # fmt: skip
    p = read_parameters(out / "sleepy-seed21.png")
    assert p["kind"] == "image" and p["class"] == "sleepy" and p["class_id"] == 1 and p["seed"] == 21
    assert p["negative_class"] == "frowning" and p["negative_class_id"] == 0
    assert p["scheduler"] == "euler_a" and p["num_inference_steps"] == STEPS and p["guidance_scale"] == 2.5
    assert (p["width"], p["height"]) == (16, 16) and p["latent_shape"] == [4, 8, 8]
    assert p["model"]["path"] == str((run_dir / "pipeline").resolve()) and p["model"]["name"] == run_dir.name
    assert p["model"]["weights_hash"] == weights_hash(pipe.unet, pipe.vae)
    assert p["model"]["unet_hash"] == weights_hash(pipe.unet)
    # the 5th image sits in the second batch of 4, at index 0
    assert p["batch"] == {"class_ids": [1, 1], "seeds": [21, 22], "negative_class_ids": [0, 0], "index": 0}
    text = Image.open(out / "sleepy-seed21.png").text["parameters"]
    assert "class: sleepy (1)" in text and "seed: 21" in text and "sampler: euler_a" in text
    assert "negative class: frowning (0)" in text and "size: 16x16" in text
    for fig in ("grid.png", "snapshots.png"):
        assert read_parameters(out / fig)["kind"] in ("grid", "snapshots")
    assert json.loads(Image.open(out / "grid.png").text["ldm"])["classes"] == ["smiling", "sleepy"]


def test_snapshot_figure_file(sampled):
    _, files, _ = sampled
    fig = Image.open(files.snapshots)
    # 3 snapshot columns, 2 rows (noisy, x0) for each of the 2 classes: taller than wide
    assert fig.width > 200 and fig.height > fig.width


def test_regenerate_gives_identical_pixels(sampled):
    from ldm.diffusion.sample_files import read_parameters, regenerate

    pipe, _, out = sampled
    for name in ("smiling-seed20.png", "sleepy-seed21.png", "sleepy-seed22.png"):
        image = regenerate(read_parameters(out / name), pipe)
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(out / name))), name
    with pytest.raises(UserError, match="grid figure"):
        regenerate(read_parameters(out / "grid.png"), pipe)


def test_cli_from_image(sampled, tmp_path, capsys):
    from ldm.cli import main

    _, _, out = sampled
    src = out / "smiling-seed22.png"
    assert main(["sample", "--from-image", str(src), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "pixel-identical" in printed and printed.strip().endswith("yes")
    assert np.array_equal(np.asarray(Image.open(tmp_path / src.name)), np.asarray(Image.open(src)))


def test_from_image_refuses_plain_png_and_other_model(sampled, tmp_path, capsys):
    from ldm.cli import main
    from ldm.diffusion.sample_files import png_bytes, read_parameters

    pipe, _, out = sampled
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert main(["sample", "--from-image", str(tmp_path / "plain.png"), "--out", str(tmp_path / "o")]) == 2
    assert "carries no generation parameters" in capsys.readouterr().err
    params = read_parameters(out / "smiling-seed20.png")
    params["model"]["weights_hash"] = "0" * 64
    (tmp_path / "other.png").write_bytes(png_bytes(Image.open(out / "smiling-seed20.png"), params))
    assert main(["sample", "--from-image", str(tmp_path / "other.png"), "--out", str(tmp_path / "o")]) == 2
    assert "is not the one that made" in capsys.readouterr().err


def test_weights_hash_tracks_weights(sampled):
    from ldm.diffusion.sample_files import weights_hash

    pipe, _, _ = sampled
    h = weights_hash(pipe.unet)
    assert h == weights_hash(pipe.unet) and len(h) == 64
    p = next(pipe.unet.parameters())
    saved = p.detach().clone()
    with torch.no_grad():
        p[0].add_(1e-3)
        assert weights_hash(pipe.unet) != h
        p.copy_(saved)
    assert weights_hash(pipe.unet) == h
