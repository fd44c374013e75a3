"""Small on-disk fixtures shared by several test files (imported as ``from fakes import ...``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def tiny_autoencoder(sample_size: int = 16):
    """An untrained diffusers AutoencoderKL for tests: RGB, widths (8, 16), 4 latent channels, down factor 2
    (weights from the current torch seed)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=sample_size,
    )


def write_tiny_latent_cache(vae_dir: Path, cache: Path, classes: list[str]) -> Path:
    """Save a tiny AutoencoderKL (16 px -> (4, 8, 8)) at ``vae_dir`` and a latent cache naming it at ``cache``.

    Documented layout (``<class>/<n>.npy`` + ``manifest.json``), 4 latents per class: class k has a distinct mean
    pattern plus noise, so a denoiser can learn the classes apart.
    """
    import torch

    torch.manual_seed(0)
    tiny_autoencoder().save_pretrained(vae_dir)
    rng = np.random.default_rng(0)
    files = []
    for name in classes:
        (cache / name).mkdir(parents=True)
        pattern = rng.standard_normal((4, 8, 8)).astype(np.float32)
        for i in range(4):
            np.save(cache / name / f"{i}.npy", (pattern + 0.3 * rng.standard_normal((4, 8, 8))).astype(np.float32))
            files.append(f"{name}/{i}.npy")
    manifest = {
        "format_version": 1,
        "classes": list(classes),
        "counts": {c: 4 for c in classes},
        "num_images": 4 * len(classes),
        "image_size": 16,
        "channels": 3,
        "latent_shape": [4, 8, 8],
        "autoencoder": {"source": str(vae_dir), "class_name": "AutoencoderKL", "content_hash": "test"},
        "scaling_factor": 1.0,
        "files": files,
    }
    (cache / "manifest.json").write_text(json.dumps(manifest))
    return cache
