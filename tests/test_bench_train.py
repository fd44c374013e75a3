"""scripts/bench_train.py: its own training step (variant (d)) and the compile fallback, and that the script starts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ldm.config import DiffusionConfig, UNetConfig
from ldm.diffusion.objective import make_train_scheduler
from ldm.models.unet import build_unet

torch.set_num_threads(1)  # tiny models on a shared 2-core machine: one thread avoids oversubscription

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_train.py"
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_unet():
    torch.manual_seed(0)
    return build_unet(UNetConfig(preset="tiny"), sample_size=8, in_channels=4, num_classes=NUM_CLASSES)


@pytest.mark.parametrize("mixed_precision,channels_last", [("no", False), ("bf16", True)])
def test_make_train_step_overfits_one_batch(bench, mixed_precision, channels_last):
    g = torch.Generator().manual_seed(123)
    latents = torch.randn(6, 4, 8, 8, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (6,), generator=g)
    unet = _tiny_unet()
    cfg = DiffusionConfig(label_dropout=0.0)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    step = bench.make_train_step(
        unet, make_train_scheduler(cfg), optimizer, cfg, NUM_CLASSES, mixed_precision, channels_last, max_grad_norm=1.0
    )
    # Same noise and timesteps every step (a fresh generator with one seed), so the loss is a function of the weights.
    losses = [step(latents, labels, torch.Generator().manual_seed(0)).item() for _ in range(30)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


def test_compile_falls_back_without_a_compiler(bench, monkeypatch):
    import shutil

    tiny_unet = _tiny_unet()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="C compiler"):
        assert bench.try_compile(tiny_unet) is tiny_unet


def test_the_script_starts():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--quick" in out and "make_train_step" in out
