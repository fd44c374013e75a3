"""Diffusion training: the CLI writes a full run folder; exact resume; safe stop; NaN stop; keep-last-K; refusals;
one step's maths (overfitting, clipping, accumulation) and the learning-rate schedules of both stages.

Tiny everything: the ``tiny`` UNet preset on a latent cache of 8x8x4 latents (3 classes) the test writes, decoded by
a tiny AutoencoderKL it saves itself; the real data, model and trainer modules throughout.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import write_tiny_latent_cache

from ldm.cli import main as ldm_main
from ldm.config import load_config
from ldm.errors import UserError
from ldm.run_folder import RunFolder

# Tiny models on a shared 2-core machine: one thread avoids the oversubscription that makes tiny ops 10x slower.
torch.set_num_threads(1)

CLASSES = ["angry", "happy", "sad"]

TINY = [
    "unet.preset=tiny",
    "training.batch_size=4",
    "training.learning_rate=2e-3",
    "training.warmup_steps=2",
    "training.log_every=1",
    "training.sample_every=0",
    "training.checkpoint_every=0",
    "training.channels_last=false",
    "training.ema_decay=0.9",
    "training.sample_scheduler=ddim",
    "training.sample_num_inference_steps=2",
    "training.sample_num_images=2",
    "diffusion.num_train_timesteps=100",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A latent cache of 3 classes x 4 latents (4, 8, 8): class k has a distinct mean pattern plus noise."""
    root = tmp_path_factory.mktemp("cache")
    return write_tiny_latent_cache(root / "vae", root / "latents", CLASSES)


def _cfg(*overrides: str):
    return load_config(None, TINY + list(overrides))


def _train(cfg, cache, out, **kw):
    from ldm.training.trainer import train

    return train(cfg, cache, out, progress=False, device="cpu", **kw)


def test_cli_trains_and_writes_the_run_folder(cache, tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--latents", str(cache), "--out", str(run), "--max-steps", "4", "--no-progress", *TINY]
    argv += ["training.log_every=2", "training.sample_every=2", "training.checkpoint_every=2"]
    assert ldm_main(argv) == 0

    assert load_config(run / "config.yaml").training.max_steps == 4
    assert json.loads((run / "classes.json").read_text()) == CLASSES
    metrics = RunFolder(run).read_metrics()
    assert [m["step"] for m in metrics] == [2, 4]
    for m in metrics:
        assert set(m) >= {"step", "epoch", "loss", "lr", "grad_norm", "images_per_sec", "elapsed"}
        assert np.isfinite(m["loss"]) and m["images_per_sec"] > 0
    assert metrics[-1]["epoch"] == pytest.approx(4 * 4 / 12, abs=1e-3)

    from PIL import Image

    assert Image.open(run / "loss.png").size[0] > 300
    grids = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert grids == ["step-000002.png", "step-000004.png"]
    grid = Image.open(run / "samples" / "step-000004.png")
    assert grid.size[1] > 3 * 64  # one row per class, upscaled
    assert [p.name for p in RunFolder(run).checkpoints()] == ["step-000002", "step-000004"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000004"
    ckpt = run / "checkpoints" / "step-000004"
    for name in ("unet/diffusion_pytorch_model.safetensors", "unet_ema", "optimizer.pt", "rng.pt", "state.json"):
        assert (ckpt / name).exists(), name
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 4 and state["data"] == {"epoch": 1, "offset": 4, "n": 12, "seed": 0}
    status = RunFolder(run).read_status()
    assert status["state"] == "finished" and status["step"] == 4 and status["max_steps"] == 4
    assert "finished at step 4" in (run / "train.log").read_text()

    from ldm.diffusion.pipeline import ClassConditionalLatentDiffusionPipeline

    pipe = ClassConditionalLatentDiffusionPipeline.from_pretrained(run / "pipeline")
    assert pipe.config.id2label == {"0": "angry", "1": "happy", "2": "sad"}
    assert pipe.unet.config.num_class_embeds == 4
    # the exported UNet holds the EMA weights of the final checkpoint
    from diffusers import UNet2DModel

    ema = UNet2DModel.from_pretrained(ckpt / "unet_ema")
    for a, b in zip(pipe.unet.parameters(), ema.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_falls_when_overfitting_one_batch(cache, tmp_path, prediction_type):
    losses = []
    cfg = _cfg(
        "training.max_steps=60",
        "training.lr_schedule=constant",
        "training.batch_size=12",  # the whole cache: every step sees the same batch
        "training.learning_rate=5e-3",
        "training.ema=false",
        "diffusion.snr_gamma=null",
        f"diffusion.prediction_type={prediction_type}",
    )
    _train(cfg, cache, tmp_path / "run", on_log=lambda r: losses.append(r["loss"]))
    assert len(losses) == 60
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.65 * first, (first, last)  # measured: epsilon 0.88 -> 0.41, v 1.02 -> 0.58


def _trainer(cache, out, *overrides: str):
    from ldm.training.trainer import Trainer

    trainer = Trainer(_cfg("training.max_steps=1000", *overrides), cache, out, device="cpu", progress=False)
    trainer.setup()
    return trainer


@pytest.mark.parametrize("mixed_precision,channels_last", [("no", False), ("bf16", True)])
def test_trainer_step_overfits_one_batch(cache, tmp_path, mixed_precision, channels_last):
    """The real Trainer.step on the whole cache as one batch, with the same noise and timesteps at every step (the
    generator reseeded, the data position rewound), so the loss is a function of the weights only."""
    trainer = _trainer(
        cache,
        tmp_path / "run",
        "training.batch_size=12",
        "training.learning_rate=3e-3",
        "training.lr_schedule=constant",
        "training.warmup_steps=0",
        "training.ema=false",
        f"training.mixed_precision={mixed_precision}",
        f"training.channels_last={str(channels_last).lower()}",
        "diffusion.label_dropout=0",
    )
    assert trainer.mixed_precision == mixed_precision  # a bare `no` (YAML false) is the setting "no"
    losses = []
    for _ in range(30):
        trainer.generator.manual_seed(0)
        trainer.stream.load_state_dict({"epoch": 0, "offset": 0, "n": 12, "seed": 0})
        losses.append(trainer.step()[0])
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


def test_gradient_clipping_bounds_the_update(cache, tmp_path, monkeypatch):
    """A loss scaled by 1e6 gives a huge gradient; clipped at max_grad_norm, one plain SGD step moves the weights by
    exactly lr * max_grad_norm (in the parameters' joint L2 norm)."""
    import ldm.diffusion.objective

    real = ldm.diffusion.objective.diffusion_loss
    monkeypatch.setattr(ldm.diffusion.objective, "diffusion_loss", lambda *a, **k: real(*a, **k) * 1e6)
    sgd = ["training.optimizer=sgd", "training.momentum=0", "training.weight_decay=0", "training.warmup_steps=0"]
    trainer = _trainer(cache, tmp_path / "run", *sgd, "training.learning_rate=0.01", "training.max_grad_norm=0.5")
    before = [p.detach().clone() for p in trainer.raw_model.parameters()]
    _, grad_norm, lr = trainer.step()
    assert lr == 0.01 and grad_norm > 1e3  # the norm before clipping
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(trainer.raw_model.parameters(), before)))
    assert float(moved) == pytest.approx(0.01 * 0.5, rel=1e-3)


def test_accumulating_k_micro_batches_equals_one_batch_k_times_larger(cache, tmp_path, monkeypatch):
    """3 micro-batches of 4 and one batch of 12 (the same 12 latents, each with the same noise and timestep): the
    same weights after one optimiser step, up to float rounding."""
    import ldm.diffusion.objective

    real = ldm.diffusion.objective.diffusion_loss

    def per_latent_noise(unet, scheduler, latents, labels, cfg, null_class_id, generator=None, world=1, rank=0):
        # each latent draws its noise and timestep from a generator seeded by its own bytes
        losses = []
        for x, y in zip(latents, labels):
            g = torch.Generator().manual_seed(zlib.crc32(x.cpu().numpy().tobytes()))
            losses.append(real(unet, scheduler, x[None], y[None], cfg, null_class_id, g))
        return torch.stack(losses).mean()

    monkeypatch.setattr(ldm.diffusion.objective, "diffusion_loss", per_latent_noise)
    common = ["training.optimizer=sgd", "training.momentum=0", "training.learning_rate=0.05", "training.ema=false"]
    common += ["training.warmup_steps=0", "training.max_grad_norm=0", "diffusion.label_dropout=0"]
    common += ["training.mixed_precision=no"]  # float32: bf16 rounding would differ with the summation order
    a = _trainer(cache, tmp_path / "a", *common, "training.batch_size=4", "training.gradient_accumulation_steps=3")
    b = _trainer(cache, tmp_path / "b", *common, "training.batch_size=12", "training.gradient_accumulation_steps=1")
    before = [p.detach().clone() for p in b.raw_model.parameters()]
    loss_a, loss_b = a.step()[0], b.step()[0]
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    changed = 0
    for pa, pb, p0 in zip(a.raw_model.parameters(), b.raw_model.parameters(), before):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)
        changed += int(not torch.equal(pb, p0))
    assert changed > 0  # the step did move the weights


def test_resume_continues_exactly(cache, tmp_path):
    # float32 set: with auto, the two runs could measure different precisions (the resume keeps its run's own)
    cfg = _cfg("training.max_steps=6", "training.lr_schedule=cosine", "training.mixed_precision=no")
    full = []
    _train(cfg, cache, tmp_path / "full", on_log=lambda r: full.append(r["loss"]))

    part = []
    calls = {"n": 0}

    def stop_after_3() -> bool:
        calls["n"] += 1
        return calls["n"] >= 3

    result = _train(cfg, cache, tmp_path / "part", should_stop=stop_after_3, on_log=lambda r: part.append(r["loss"]))
    assert result.state == "stopped" and result.step == 3
    assert RunFolder(tmp_path / "part").read_status()["state"] == "stopped"
    assert part == full[:3]

    rest = []
    result = _train(cfg, cache, tmp_path / "part", resume="latest", on_log=lambda r: rest.append(r["loss"]))
    assert result.state == "finished" and result.step == 6
    assert rest == full[3:]  # bit-identical: same data order, noise, optimiser and EMA state
    assert [m["step"] for m in RunFolder(tmp_path / "part").read_metrics()] == [1, 2, 3, 4, 5, 6]

    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "part" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_safe_stop_writes_a_loadable_checkpoint(cache, tmp_path):
    from diffusers import UNet2DModel

    run = tmp_path / "run"
    result = _train(_cfg("training.max_steps=50"), cache, run, should_stop=lambda: True)
    assert result.state == "stopped" and result.step == 1
    ckpt = RunFolder(run).latest_checkpoint()
    assert ckpt is not None and ckpt.name == "step-000001"
    unet = UNet2DModel.from_pretrained(ckpt / "unet")
    assert unet.config.num_class_embeds == len(CLASSES) + 1
    assert (run / "pipeline" / "model_index.json").is_file()
    assert RunFolder(run).read_status()["state"] == "stopped"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(cache, tmp_path, monkeypatch):
    import ldm.diffusion.objective
    from ldm.training.trainer import TrainingDiverged

    real = ldm.diffusion.objective.diffusion_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(ldm.diffusion.objective, "diffusion_loss", flaky)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="step 5") as e:
        # float32 set, not auto: auto may time a few probe losses first on a bf16 CPU, which this test counts
        _train(_cfg("training.max_steps=10", "training.checkpoint_every=2", "training.mixed_precision=no"), cache, run)
    assert "step-000004" in str(e.value)
    assert [p.name for p in RunFolder(run).checkpoints()] == ["step-000002", "step-000004"]
    assert RunFolder(run).latest_checkpoint().name == "step-000004"
    status = RunFolder(run).read_status()
    assert status["state"] == "failed" and "nan" in status["message"] and status["step"] == 4


def test_nan_loss_exits_non_zero_from_the_cli(cache, tmp_path, monkeypatch, capsys):
    import ldm.diffusion.objective

    monkeypatch.setattr(
        ldm.diffusion.objective, "diffusion_loss", lambda *a, **k: torch.tensor(float("inf"), requires_grad=True)
    )
    argv = ["train", "--latents", str(cache), "--out", str(tmp_path / "run"), "--max-steps", "3", "--no-progress"]
    assert ldm_main(argv + TINY) == 1
    assert "loss is inf at step 1" in capsys.readouterr().err


def test_keeps_only_the_last_k_checkpoints(cache, tmp_path):
    run = tmp_path / "run"
    _train(_cfg("training.max_steps=5", "training.checkpoint_every=1", "training.keep_checkpoints=2"), cache, run)
    assert [p.name for p in RunFolder(run).checkpoints()] == ["step-000004", "step-000005"]
    assert RunFolder(run).latest_checkpoint().name == "step-000005"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_refuses_to_overwrite_an_existing_run(cache, tmp_path, capsys):
    run = tmp_path / "run"
    _train(_cfg("training.max_steps=1"), cache, run)
    with pytest.raises(UserError, match="--resume latest"):
        _train(_cfg("training.max_steps=2"), cache, run)
    argv = ["train", "--latents", str(cache), "--out", str(run), "--max-steps", "2", "--no-progress", *TINY]
    assert ldm_main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    # resuming from the CLI without --config picks up the run's own config.yaml; --max-steps trains that much more
    assert (
        ldm_main(["train", "--latents", str(cache), "--out", str(run), "--resume", "latest", "--max-steps", "2"]) == 0
    )
    assert RunFolder(run).read_status()["step"] == 3
    # resuming a run that already reached its budget does no step past it
    assert ldm_main(["train", "--latents", str(cache), "--out", str(run), "--resume", "latest", "--no-progress"]) == 0
    status = RunFolder(run).read_status()
    assert status["state"] == "finished" and status["step"] == 3
    assert "already reached max_steps=2 of this continuation" in status["message"]


def test_a_finished_run_continues_for_more_steps_as_a_new_segment(cache, tmp_path):
    """Continue training: the new budget counts from the resumed step; the learning rate warms up again to half the
    peak and decays to zero at the continuation's end; a stop inside the continuation resumes to its end."""
    run = tmp_path / "run"
    _train(_cfg("training.max_steps=4", "training.warmup_steps=2"), cache, run)
    first = RunFolder(run).read_metrics()
    assert first[-1]["lr"] <= 0.5 * 2e-3  # the last step of the first segment's cosine

    argv = ["train", "--out", str(run), "--resume", "latest", "--max-steps", "6", "--no-progress"]
    stop_after = {"n": 0}

    def stop_at_step_3_of_6():
        stop_after["n"] += 1
        return stop_after["n"] >= 3

    from ldm.training.trainer import train

    cfg = load_config(RunFolder(run).config_path, ["training.max_steps=6"])
    result = train(
        cfg, cache, run, resume="latest", continue_training=True, should_stop=stop_at_step_3_of_6, progress=False,
        device="cpu",
    )  # fmt: skip
    assert result.state == "stopped" and result.step == 7
    # a plain resume (no new budget) finishes the continuation it was in: 6 steps after step 4
    assert ldm_main(["train", "--out", str(run), "--resume", "latest", "--no-progress"]) == 0
    status = RunFolder(run).read_status()
    assert status["state"] == "finished" and status["step"] == 10 and status["max_steps"] == 10
    segments = status["segments"]
    assert [(s["start_step"], s["end_step"]) for s in segments] == [(0, 4), (4, 10)]
    assert segments[0]["max_steps"] == 4 and segments[1]["max_steps"] == 6
    assert "max_steps=6 of this continuation" in segments[1]["end"]
    lrs = {r["step"]: r["lr"] for r in RunFolder(run).read_metrics() if "lr" in r}
    peak = 2e-3
    assert lrs[5] == pytest.approx(0.5 * peak * 0.5)  # warm-up step 1 of 2, to half the peak
    assert lrs[6] == pytest.approx(0.5 * peak)
    assert lrs[10] < lrs[8] < lrs[6]  # a new cosine down to the continuation's end

    # and again from the CLI, with a time budget: only that budget holds (the steps of the last one are cleared)
    assert ldm_main([*argv[:5], "--max-minutes", "0.02", "--no-progress"]) == 0
    status = RunFolder(run).read_status()
    assert len(status["segments"]) == 3 and status["segments"][2]["max_steps"] == 0
    assert status["segments"][2]["max_minutes"] == 0.02 and status["step"] > 10


def test_resume_from_the_cli_uses_the_cache_the_run_was_trained_on(cache, tmp_path, capsys):
    moved = tmp_path / "cache-copy"
    shutil.copytree(cache, moved)
    run = tmp_path / "run"
    _train(_cfg("training.max_steps=1"), moved, run)
    # no --latents: the checkpoint names its cache
    assert ldm_main(["train", "--out", str(run), "--resume", "latest", "--max-steps", "1", "--no-progress"]) == 0
    assert RunFolder(run).read_status()["step"] == 2
    # that cache gone: a clear error naming it, and --latents still works
    shutil.rmtree(moved)
    assert ldm_main(["train", "--out", str(run), "--resume", "latest", "--max-steps", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(moved.resolve()) in err and "no longer there" in err and "--latents" in err
    argv = ["train", "--latents", str(cache), "--out", str(run), "--resume", "latest", "--max-steps", "1"]
    assert ldm_main([*argv, "--no-progress"]) == 0
    assert RunFolder(run).read_status()["step"] == 3
    # a new run needs its cache
    assert ldm_main(["train", "--out", str(tmp_path / "new"), "--max-steps", "1", *TINY]) == 2
    assert "--latents CACHE is required" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_bad_config_key_exits_2_naming_the_key(cache, tmp_path, capsys):
    argv = ["train", "--latents", str(cache), "--out", str(tmp_path / "run"), "training.learnig_rate=1"]
    assert ldm_main(argv) == 2
    assert "training.learnig_rate" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_no_stopping_rule_is_a_clear_error(cache, tmp_path):
    with pytest.raises(UserError, match="max_steps, training.epochs or training.max_minutes"):
        _train(_cfg(), cache, tmp_path / "run")


def test_epochs_and_gradient_accumulation(cache, tmp_path):
    run = tmp_path / "run"
    cfg = _cfg("training.epochs=2", "training.gradient_accumulation_steps=3", "training.optimizer=sgd")
    result = _train(cfg, cache, run)
    # 12 latents x 2 epochs / (4 x 3 latents per step) = 2 steps
    assert result.step == 2 and result.epoch == pytest.approx(2.0)
    assert RunFolder(run).read_status()["max_steps"] == 2


def test_batch_stream_is_a_seeded_permutation_per_epoch():
    from ldm.training.trainer import BatchStream

    s = BatchStream(5, seed=3)
    first = torch.cat([s.next(2) for _ in range(5)])  # 10 = two epochs, batches straddling the boundary
    assert sorted(first[:5].tolist()) == list(range(5)) and sorted(first[5:].tolist()) == list(range(5))
    t = BatchStream(5, seed=3)
    t.next(3)
    state = t.state_dict()
    u = BatchStream(5, seed=3)
    u.load_state_dict(state)
    assert torch.equal(u.next(4), t.next(4))


def test_sigterm_finishes_the_step_saves_and_exits_0(cache, tmp_path):
    """The real signal path: `ldm train` in a subprocess, SIGTERM once it is training."""
    import os
    import signal
    import subprocess
    import time

    run = tmp_path / "run"
    argv = [sys.executable, "-m", "ldm", "train", "--latents", str(cache), "--out", str(run), "--no-progress"]
    argv += ["--max-steps", "100000", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = RunFolder(run).read_status()
            if status and status["state"] == "running" and status["step"] >= 2:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM: stopping after this step" in err
    status = RunFolder(run).read_status()
    assert status["state"] == "stopped"
    ckpt = RunFolder(run).latest_checkpoint()
    assert ckpt is not None and json.loads((ckpt / "state.json").read_text())["step"] == status["step"]
    assert (run / "pipeline" / "model_index.json").is_file()


def test_two_processes_train_as_one_with_the_global_batch_and_resume_across_process_counts(cache, tmp_path):
    """`accelerate launch` with 2 processes (DDP over gloo on the CPU), batch 2 each, against 1 process with batch 4:
    the same global batch, the same random draws, so the same loss curve (to float rounding in the all-reduce:
    relative 1e-4). Rank-0 files are written once. A checkpoint of 2 processes continues in 1 and the reverse, on
    the same curve. The quick evaluation's wait pauses the clock on every process (read from the code: the
    evaluation runs on the main process inside ``Trainer.evaluate``, which every process enters)."""
    import os
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["--latents", str(cache), "--max-steps", "6", "--no-progress", "--device", "cpu"]
    # float32: bf16 rounding would differ with the summation order of the all-reduce
    settings = [*TINY, "training.checkpoint_every=3", "training.keep_checkpoints=0", "training.mixed_precision=no"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ldm.cli", "train"]
    one, two = tmp_path / "one", tmp_path / "two"

    def run(argv: list[str]) -> None:
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    def losses(run_dir: Path) -> dict[int, float]:
        return {m["step"]: m["loss"] for m in RunFolder(run_dir).read_metrics() if "loss" in m}

    run([sys.executable, "-m", "ldm.cli", "train", "--out", str(one), *common, *settings, "training.batch_size=4"])
    run([*launch, "--out", str(two), *common, *settings, "training.batch_size=2"])
    log = (two / "train.log").read_text()
    assert "x 2 process(es)" in log and log.count("step 6 epoch") == 1  # the main process alone writes the files
    assert list(losses(two)) == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in RunFolder(two).checkpoints()] == ["step-000003", "step-000006"]
    assert losses(two) == pytest.approx(losses(one), rel=1e-4)

    # 2 processes -> 1, and 1 -> 2, from step 3 (the same budget: not a continuation, which --max-steps would be)
    two_in_one, one_in_two = tmp_path / "two-in-one", tmp_path / "one-in-two"
    resume_two = ["--resume", str(two / "checkpoints" / "step-000003")]
    same = [a for a in common if a not in ("--max-steps", "6")] + ["training.max_steps=6"]
    run([sys.executable, "-m", "ldm.cli", "train", "--out", str(two_in_one), *resume_two, *same, *settings,
         "training.batch_size=4"])  # fmt: skip
    run([*launch, "--out", str(one_in_two), "--resume", str(one / "checkpoints" / "step-000003"), *same,
         *settings, "training.batch_size=2"])  # fmt: skip
    after_3 = {k: v for k, v in losses(one).items() if k > 3}
    for resumed in (two_in_one, one_in_two):
        assert losses(resumed) == pytest.approx(after_3, rel=1e-4)


def test_every_process_pauses_its_clock_while_the_main_one_evaluates(cache, tmp_path, monkeypatch):
    """training.eval_every: the main process evaluates while the others wait at a barrier; all of them take that
    time off their clock, so none reaches max_minutes early (a process without the evaluator, as the others are)."""
    import time

    trainer = _trainer(cache, tmp_path / "run", "training.mixed_precision=no")
    assert trainer.evaluator is None  # as on every process but the main one
    monkeypatch.setattr(trainer.acc, "wait_for_everyone", lambda: time.sleep(0.3))  # the main one evaluating
    before = trainer._elapsed()
    trainer.evaluate()
    assert trainer._elapsed() - before < 0.1  # the 0.3 s of waiting is not training time


def test_loss_png_redraws_are_throttled_but_the_last_is_forced(tmp_path, monkeypatch):
    """loss.png is redrawn at most once per max(10 s, 30x a draw's cost) (a redraw costs 0.3-0.4 s on 2 cores), so
    plotting stays a few percent of a run even with log_every=1; the forced draw at the end always happens."""
    import ldm.training.trainer as trainer_mod
    from ldm.training.trainer import Trainer

    clock = [1000.0]
    drawn: list[int] = []
    monkeypatch.setattr(trainer_mod.time, "monotonic", lambda: clock[0])

    def fake_plot(records, path, title=""):
        drawn.append(len(records))
        clock[0] += 0.5  # this draw "took" 0.5 s: the next is allowed 15 s later

    monkeypatch.setattr(trainer_mod, "plot_loss", fake_plot)
    # the attributes Trainer.__init__ sets that _plot reads
    fake = types.SimpleNamespace(out=tmp_path, run_folder=RunFolder(tmp_path), _plot_at=-1e9, _plot_cost=0.0)
    records: list[dict] = []
    for step in range(1, 41):  # one log line per second of training
        records.append({"step": step, "loss": 1.0 / step})
        Trainer._plot(fake, list(records), force=step == 40)
        clock[0] += 1.0
    # first log draws at once; then every ~15.5 s (30 x 0.5 s draw); the last one is forced
    assert drawn == [1, 16, 31, 40]


# The learning rate of both stages, at a few steps and time shares: values computed from the code before the two
# schedules became one helper (the diffusion trainer's lr_factor, the autoencoder's _cosine_lr).
DIFFUSION_LR = {  # (schedule, warmup_steps): factors at steps 0, 4, 9, 10, 11, 50, 99, 100, 150 with horizon 100
    ("cosine", 0): [1.0, 0.996057350657239, 0.9801468428384715, 0.9755282581475768, 0.9704403844771128, 0.5,
                    0.0002467198171342, 0.0, 0.0],
    ("cosine", 10): [0.1, 0.5, 1.0, 1.0, 0.9996954135095479, 0.5868240888334653, 0.00030458649045211894, 0.0, 0.0],
    ("constant", 10): [0.1, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
}  # fmt: skip
# time budget only: factors at (step, time share) (0, .5) (5, .3) (10, 0) (20, .25) (30, .5) (40, 1.2)
DIFFUSION_LR_TIME = {
    ("cosine", 0): [0.5, 0.7938926261462366, 1.0, 0.8535533905932737, 0.5, 0.0],
    ("cosine", 10): [0.1, 0.6, 1.0, 0.8535533905932737, 0.5, 0.0],
    ("constant", 10): [0.1, 0.6, 1.0, 1.0, 1.0, 1.0],
}
AUTOENCODER_LR = {  # warmup_steps: lr at peak 2e-3, max_steps 100, (step, time share) as below
    0: [0.002, 0.001992114701314478, 0.0015877852522924731, 0.0019510565162951536, 0.001, 4.934396342684e-07, 0.0],
    10: [0.0002, 0.000996057350657239, 0.0015877852522924731, 0.0019510565162951536, 0.001, 4.934396342684e-07, 0.0],
}
AUTOENCODER_AT = [(0, 0.0), (4, 0.0), (9, 0.3), (10, 0.1), (50, 0.0), (99, 0.0), (100, 0.0)]


def test_learning_rate_schedules_of_both_stages_keep_their_values():
    from ldm.training.optim import lr_factor

    for (schedule, warmup), want in DIFFUSION_LR.items():
        got = [lr_factor(s, warmup, schedule, horizon=100) for s in (0, 4, 9, 10, 11, 50, 99, 100, 150)]
        assert got == want, (schedule, warmup)
    for (schedule, warmup), want in DIFFUSION_LR_TIME.items():
        at = ((0, 0.5), (5, 0.3), (10, 0.0), (20, 0.25), (30, 0.5), (40, 1.2))
        got = [lr_factor(s, warmup, schedule, horizon=None, time_fraction=f) for s, f in at]
        assert got == want, (schedule, warmup)
    for warmup, want in AUTOENCODER_LR.items():
        got = [
            2e-3 * lr_factor(s, warmup, horizon=100, time_fraction=f, decay_during_warmup=True)
            for s, f in AUTOENCODER_AT
        ]
        assert got == pytest.approx(want, rel=1e-12, abs=1e-18), warmup
    # the cosine reaches 0 at the horizon and the warm-up rises linearly
    assert lr_factor(99, 0, horizon=100) > 0 and lr_factor(100, 0, horizon=100) == 0.0
    assert [lr_factor(s, 4, "constant") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


@pytest.mark.parametrize("bf16_slower", [True, False])
def test_auto_precision_keeps_bf16_only_when_it_measures_faster(cache, tmp_path, monkeypatch, bf16_slower):
    """``mixed_precision: auto`` on a CPU whose flags suggest bf16: the trainer times its own step both ways and
    trains in the faster precision, and inputs.json says what was measured. The step is made slower in one
    precision by a delay inside the probe (the real speeds depend on the CPU the test runs on)."""
    import json
    import time as time_module

    import ldm.device
    from ldm.diffusion import objective
    from ldm.training.trainer import Trainer

    monkeypatch.setattr(ldm.device, "cpu_bf16_is_fast", lambda need="kernels": True)  # the flag rule says bf16
    real_loss = objective.diffusion_loss

    def loss_with_a_slow_precision(*args, **kwargs):
        if torch.is_autocast_enabled("cpu") == bf16_slower:
            time_module.sleep(0.05)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(objective, "diffusion_loss", loss_with_a_slow_precision)
    trainer = Trainer(_cfg("training.max_steps=2", "training.mixed_precision=auto"), cache, tmp_path / "run",
                      device="cpu", progress=False)  # fmt: skip
    assert trainer.mixed_precision == "bf16"  # the rule, before measuring
    trainer.setup()
    want = "no" if bf16_slower else "bf16"
    assert trainer.mixed_precision == want and trainer.acc.mixed_precision == want
    inputs = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert inputs["mixed_precision"] == want
    probe = inputs["mixed_precision_probe"]
    assert (probe["bf16_seconds"] > probe["float32_seconds"]) == bf16_slower
    assert all(p.grad is None for p in trainer.raw_model.parameters())  # the probe's gradients are cleared
    trainer.run()  # and the run trains in it, to its end

    # a resumed run keeps the precision it trained in, even where the other one now measures faster
    monkeypatch.setattr(objective, "diffusion_loss", real_loss)
    again = Trainer(_cfg("training.max_steps=3", "training.mixed_precision=auto"), cache, tmp_path / "run",
                    resume="latest", device="cpu", progress=False)  # fmt: skip
    again.setup()
    assert again.mixed_precision == want
