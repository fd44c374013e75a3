"""Shared fixtures: the real faces in ../shared/datasets/att-faces-20 and a tiny saved diffusers autoencoder."""

from __future__ import annotations

import os

# Tests start CLI subprocesses, app workers and browsers beside the pytest process: OpenMP threads that spin-wait
# would steal the other core from them (ldm.utils.set_runtime_defaults leaves this setting alone in the processes the
# tests start). Set before anything imports torch.
os.environ["GOMP_SPINCOUNT"] = "0"

from pathlib import Path  # noqa: E402

import pytest

ATT_FACES = Path(__file__).resolve().parents[2] / "shared/datasets/att-faces-20"


@pytest.fixture
def att_faces() -> Path:
    """20 class folders s1..s20 of 10 grey 92x112 .pgm faces (CI clones the repo with shared/ beside it)."""
    if not ATT_FACES.is_dir():
        pytest.skip(f"real face dataset not found at {ATT_FACES}")
    return ATT_FACES


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, seeded diffusers AutoencoderKL (RGB, widths (8, 16), 4 latent channels, down factor 2), saved with
    ``save_pretrained``; returns its folder."""
    import torch
    from fakes import tiny_autoencoder

    torch.manual_seed(0)
    vae = tiny_autoencoder()
    out = tmp_path_factory.mktemp("tiny-vae")
    vae.save_pretrained(out)
    return out
