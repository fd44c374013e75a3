"""The diffusers pipeline: same images for names or ids, with its own or a named scheduler, and as ``ldm sample``;
save/from_pretrained round trip; ``ldm export``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import write_tiny_pipeline

from ldm.errors import UserError

CLASSES = ["frowning", "sleepy", "smiling"]
STEPS = 3


@pytest.fixture(scope="module")
def run_dir(tiny_vae_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding only ``pipeline/`` (tiny seeded UNet on 8x8x4 latents, the shared tiny VAE)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine: one thread is far faster
    run = write_tiny_pipeline(tmp_path_factory.mktemp("run"), tiny_vae_dir, CLASSES)
    yield run
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe(run_dir):
    from ldm.diffusion.pipeline import load_pipeline

    return load_pipeline(run_dir, device="cpu")


def test_folder_is_a_standard_diffusers_pipeline(run_dir, pipe):
    index = json.loads((run_dir / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "ClassConditionalLatentDiffusionPipeline"
    assert index["id2label"] == {"0": "frowning", "1": "sleepy", "2": "smiling"}
    assert index["scaling_factor"] == 0.7
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["scheduler"] == ["diffusers", "DPMSolverMultistepScheduler"]
    for sub in ("unet", "vae"):
        assert (run_dir / "pipeline" / sub / "diffusion_pytorch_model.safetensors").is_file()
    assert pipe.class_names == CLASSES and pipe.null_class_id == 3
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++" and pipe.scheduler.config.solver_order == 2


def test_pipeline_call_by_name_equals_by_id_with_a_fresh_scheduler(pipe):
    out = pipe([" Smiling", "frowning"], num_inference_steps=STEPS, seeds=[4, 5], output_type="pt")
    ref = pipe([2, 0], num_inference_steps=STEPS, seeds=[4, 5], scheduler="dpm++")  # a new DPM-Solver++ by name
    assert pipe.null_class_id == 3 and pipe.config.scaling_factor == 0.7
    assert torch.equal(out.images, (ref.pixels + 1) / 2)
    gens = [torch.Generator().manual_seed(s) for s in (4, 5)]
    pil = pipe(["smiling", 0], num_inference_steps=STEPS, generator=gens).images
    assert np.array_equal(np.asarray(pil[0]), np.asarray(ref.images[0]))
    with pytest.raises(UserError, match="closest: sleepy"):
        pipe(["sleep"], num_inference_steps=STEPS)


def test_callback_on_step_end_and_latent_output(pipe):
    seen = []
    out = pipe(
        "sleepy",
        num_inference_steps=STEPS,
        output_type="latent",
        callback_on_step_end=lambda p, i, t, kw: seen.append((i, tuple(kw["latents"].shape))),
    )
    assert seen == [(i, (1, 4, 8, 8)) for i in range(STEPS)] and out.images.shape == (1, 4, 8, 8)


def test_save_from_pretrained_round_trip_identical(pipe, tmp_path):
    from diffusers import DiffusionPipeline

    from ldm.diffusion.pipeline import ClassConditionalLatentDiffusionPipeline

    pipe.save_pretrained(tmp_path / "p")
    again = ClassConditionalLatentDiffusionPipeline.from_pretrained(tmp_path / "p")
    kw = dict(num_inference_steps=STEPS, seeds=[1, 2], guidance_scale=2.0, negative_class_labels="frowning")
    a = pipe(["sleepy", "smiling"], output_type="pt", **kw).images
    b = again(["sleepy", "smiling"], output_type="pt", **kw).images
    assert torch.equal(a, b)
    # plain diffusers, through the pipeline.py shim written beside model_index.json
    plain = DiffusionPipeline.from_pretrained(
        tmp_path / "p", custom_pipeline=str(tmp_path / "p"), trust_remote_code=True
    )
    assert type(plain).__name__ == "ClassConditionalLatentDiffusionPipeline" and plain.class_names == CLASSES


def test_ldm_sample_equals_pipeline_and_writes_grid(run_dir, pipe, tmp_path, capsys):
    from PIL import Image

    from ldm.cli import main

    args = ["sample", "--run", str(run_dir), "--class", "SMILING", "--class", "sleepy", "-n", "2"]
    args += ["--num-inference-steps", str(STEPS), "--seed", "10", "--out", str(tmp_path), "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    names = ["smiling-seed10.png", "smiling-seed11.png", "sleepy-seed10.png", "sleepy-seed11.png"]
    for n in names:
        assert str(tmp_path / n) in printed
    assert f"grid: {tmp_path / 'grid.png'}" in printed
    # the CLI generated all four in one batch (class-major); the same batch through the pipeline gives the same pixels
    ref = pipe(["smiling", "smiling", "sleepy", "sleepy"], num_inference_steps=STEPS, seeds=[10, 11, 10, 11]).images
    for n, im in zip(names, ref):
        assert np.array_equal(np.asarray(Image.open(tmp_path / n)), np.asarray(im))
    grid = Image.open(tmp_path / "grid.png")
    assert grid.height >= 2 * 16 and grid.width >= 2 * 16  # two rows of two 16x16 images (plus labels)


def test_ldm_export_round_trip(run_dir, pipe, tmp_path, capsys):
    from ldm.cli import main
    from ldm.diffusion.pipeline import ClassConditionalLatentDiffusionPipeline

    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "exp"), "--scheduler", "ddim"]) == 0
    assert "exported 3 classes" in capsys.readouterr().out
    exp = ClassConditionalLatentDiffusionPipeline.from_pretrained(tmp_path / "exp")
    assert type(exp.scheduler).__name__ == "DDIMScheduler"
    a = pipe(["smiling"], num_inference_steps=STEPS, seeds=[3], scheduler="ddim", output_type="pt").images
    b = exp(["smiling"], num_inference_steps=STEPS, seeds=[3], output_type="pt").images
    assert torch.equal(a, b)
    assert main(["export", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "run folder not found" in capsys.readouterr().err


def test_export_from_checkpoint(run_dir, pipe, tiny_vae_dir, tmp_path):
    """A run with only a checkpoint: EMA weights + the cache's autoencoder and scaling factor make the pipeline."""
    from ldm.config import Config, save_config
    from ldm.diffusion.pipeline import ClassConditionalLatentDiffusionPipeline, export_pipeline
    from ldm.utils import atomic_write_json

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step-000010"
    pipe.unet.save_pretrained(ckpt / "unet_ema")
    cache = tmp_path / "cache"
    atomic_write_json(cache / "manifest.json", {"autoencoder": {"source": str(tiny_vae_dir)}, "scaling_factor": 0.7})
    atomic_write_json(ckpt / "state.json", {"step": 10, "latents": str(cache), "classes": CLASSES})
    (run / "checkpoints" / "latest").write_text("step-000010\n")
    cfg = Config()
    cfg.diffusion.beta_schedule = "squaredcos_cap_v2"
    cfg.diffusion.prediction_type = pipe.scheduler.config.prediction_type  # what the fixture's UNet was built for
    save_config(cfg, run / "config.yaml")
    out, _ = export_pipeline(run, tmp_path / "exp")
    exp = ClassConditionalLatentDiffusionPipeline.from_pretrained(out)
    assert exp.class_names == CLASSES and exp.config.scaling_factor == 0.7
    a = pipe(["sleepy"], num_inference_steps=STEPS, seeds=[0], output_type="pt").images
    b = exp(["sleepy"], num_inference_steps=STEPS, seeds=[0], output_type="pt").images
    assert torch.equal(a, b)
