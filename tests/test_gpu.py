"""The same code on a CUDA GPU (``pytest -m gpu``; skipped on machines without one): a few training steps of both
stages with the GPU's mixed precision (float16 with accelerate's gradient scaler where there is no bfloat16),
sampling in the GPU's inference dtype, and the inference dtype path checked on the CPU too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fakes import write_tiny_latent_cache, write_tiny_pipeline
from PIL import Image

from ldm.config import load_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CLASSES = ["angry", "happy", "sad"]


def test_sampling_in_a_reduced_precision_gives_finite_images_on_the_cpu(tiny_vae_dir, tmp_path):
    """The path a GPU takes (models in bfloat16 or float16, noise drawn in float32), run on the CPU in bfloat16."""
    from ldm.device import inference_dtype
    from ldm.diffusion.pipeline import load_pipeline

    assert inference_dtype("cpu") is torch.float32  # pixels reproducible from a PNG's parameters on a CPU
    run = write_tiny_pipeline(tmp_path / "run", tiny_vae_dir, CLASSES)
    pipe = load_pipeline(run, device="cpu", dtype=torch.bfloat16)
    assert pipe.unet.dtype is torch.bfloat16
    out = pipe(["happy", "sad"], num_inference_steps=3, guidance_scale=2.0, seeds=[0, 1], output_type="pt")
    assert out.images.dtype is torch.float32 and torch.isfinite(out.images).all()


@pytest.mark.gpu
@needs_cuda
def test_training_both_stages_and_sampling_on_cuda(tiny_vae_dir, tmp_path):
    from ldm.device import inference_dtype
    from ldm.diffusion.pipeline import load_pipeline
    from ldm.training.autoencoder import train_vae
    from ldm.training.trainer import train

    data = tmp_path / "data"
    for k, colour in enumerate([(200, 0, 0), (0, 200, 0)]):
        (data / f"c{k}").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), colour).save(data / f"c{k}" / f"{i}.png")
    ae = ["data.image_size=16", "autoencoder.block_out_channels=[8,16]", "autoencoder.norm_num_groups=8"]
    summary = train_vae(load_config(None, [*ae, "autoencoder.max_steps=3", "autoencoder.max_minutes=0"]), data,
                        tmp_path / "vae", progress=False, device="cuda")  # fmt: skip
    assert summary["steps"] == 3

    cache = write_tiny_latent_cache(tmp_path / "tiny-vae", tmp_path / "latents", CLASSES)
    cfg = load_config(None, ["unet.preset=tiny", "training.batch_size=4", "training.max_steps=3",
                             "training.sample_every=0", "diffusion.num_train_timesteps=100"])  # fmt: skip
    result = train(cfg, cache, tmp_path / "run", progress=False, device="cuda")
    assert result.step == 3

    pipe = load_pipeline(tmp_path / "run", device="cuda")
    assert pipe.unet.dtype is inference_dtype("cuda")
    out = pipe(["happy"], num_inference_steps=3, seeds=[0], output_type="pt")
    assert torch.isfinite(out.images).all()
    assert Path(tmp_path / "run" / "pipeline" / "model_index.json").is_file()
