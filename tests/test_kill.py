"""kill -9 anywhere: ``ldm train`` and ``ldm train-vae`` killed at random moments (and right inside a checkpoint
write and an export); after each kill every checkpoint left is intact, ``--resume latest`` continues, and no more
than one checkpoint interval of steps is lost.

Each trial is a real process of the CLI on tiny models, killed with SIGKILL (no handler runs).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import write_tiny_latent_cache

from ldm.run_folder import RunFolder

CHECKPOINT_EVERY = 10
TRAIN = [
    "unet.preset=tiny",
    "training.batch_size=4",
    "training.log_every=1",
    "training.sample_every=15",
    "training.sample_num_images=2",
    "training.sample_num_inference_steps=2",
    f"training.checkpoint_every={CHECKPOINT_EVERY}",
    "training.keep_checkpoints=2",
    "training.channels_last=false",
    "diffusion.num_train_timesteps=100",
]
TRAIN_VAE = [
    "data.image_size=16",
    "autoencoder.block_out_channels=[8,16]",
    "autoencoder.norm_num_groups=8",
    "autoencoder.batch_size=4",
    "autoencoder.sample_every=7",
    f"autoencoder.checkpoint_every={CHECKPOINT_EVERY}",
    "autoencoder.mixed_precision=fp32",
]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    from ldm.data.synth import make_synth_faces

    root = tmp_path_factory.mktemp("inputs")
    make_synth_faces(root / "faces", per_class=4, seed=0)
    return {"cache": write_tiny_latent_cache(root / "vae", root / "latents", ["a", "b", "c"]), "faces": root / "faces"}


def _command(stage: str, inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    base = [sys.executable, "-m", "ldm.cli", stage, "--out", str(out), "--no-progress"]
    if stage == "train":
        return [*base, "--latents", str(inputs["cache"]), "--device", "cpu", *extra, *TRAIN]
    return [*base, "--data", str(inputs["faces"]), *extra, *TRAIN_VAE]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` is true (polled), or after ``timeout`` s; False if it ended first."""
    t0 = time.monotonic()
    while proc.poll() is None:
        if ready() or time.monotonic() - t0 > timeout:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    return False


def _seconds_into_training(run: Path, delay: float):
    """A condition true ``delay`` seconds after the run logs a step beyond the one it has now."""
    before, going = _last_step(run), []

    def ready() -> bool:
        if not going and _last_step(run) > before:
            going.append(time.monotonic())
        return bool(going) and time.monotonic() - going[0] > delay

    return ready


def _last_step(run: Path) -> int:
    steps = [m["step"] for m in RunFolder(run).read_metrics() if "loss" in m]
    return max(steps, default=0)


@pytest.mark.parametrize("stage", ["train", "train-vae"])
def test_kill_9_at_random_moments_loses_at_most_one_checkpoint_interval(stage, inputs, tmp_path):
    rng = random.Random(stage)  # seeded: the same moments each run of the suite
    run = tmp_path / "run"
    first = subprocess.run(_command(stage, inputs, run, "--max-steps", str(CHECKPOINT_EVERY)), env=ENV,
                           capture_output=True, text=True)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    targeted = {
        "inside a checkpoint write": lambda: any(RunFolder(run).checkpoints_dir.glob(".tmp-*")),
        "inside an export": lambda: any(run.glob(".tmp-pipeline-*")),
    }
    if stage == "train-vae":
        targeted = {"inside a checkpoint write": targeted["inside a checkpoint write"]}
    moments = [*targeted, *(f"{rng.uniform(0.2, 2.0):.2f} s into training" for _ in range(4))]
    lost_steps = []
    newest = CHECKPOINT_EVERY
    for moment in moments:
        # each trial is itself a --resume latest of the run the previous kill left: it must get past the newest
        # checkpoint (the kill moment only comes once it has logged a new step, or inside its first write)
        proc = subprocess.Popen(_command(stage, inputs, run, "--max-steps", "100000", "--resume", "latest"),
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        if moment in targeted:
            ready = targeted[moment]
        else:
            ready = _seconds_into_training(run, float(moment.split()[0]))
        killed = _kill_when(proc, ready)
        assert killed, proc.stderr.read().decode()[-2000:]
        assert _last_step(run) > newest or moment in targeted, (moment, "the resumed run did not train")

        # what a user finds after the kill: every checkpoint complete and intact, the newest within one interval
        ckpts = RunFolder(run).checkpoints()
        assert ckpts and all(RunFolder.checkpoint_damage(c) is None for c in ckpts), moment
        newest = int(RunFolder.read_checkpoint_state(ckpts[-1])["step"])
        lost = _last_step(run) - newest
        assert 0 <= lost <= CHECKPOINT_EVERY, (moment, lost)
        lost_steps.append(lost)

    # and a last --resume latest runs to its end from the newest checkpoint (2 steps more)
    done = subprocess.run(_command(stage, inputs, run, "--max-steps", "2", "--resume", "latest"),
                          env=ENV, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(RunFolder.read_checkpoint_state(RunFolder(run).checkpoints()[-1])["step"]) == newest + 2
    print(f"{stage}: {len(moments)} kills, steps lost {lost_steps} (checkpoint every {CHECKPOINT_EVERY})")
