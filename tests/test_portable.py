"""A workspace is portable: what it records about its own folders is relative to it, so a copy (or a move) trains,
continues, exports and generates from the new place, with the original gone."""

from __future__ import annotations

import json
import shutil

from fakes import write_tiny_latent_cache

from ldm.app.handlers import LdmApp
from ldm.app.settings import TrainSettings
from ldm.cli import main as ldm_main
from ldm.run_folder import RunFolder
from ldm.utils import recorded_path, resolve_recorded

CLASSES = ["frowning", "smiling", "sleepy"]
TINY = (
    "training.log_every=1 training.sample_every=0 training.sample_num_inference_steps=2 training.sample_num_images=1 "
    "diffusion.num_train_timesteps=100 training.checkpoint_every=0 training.warmup_steps=1"
)


def test_recorded_paths_are_relative_inside_a_workspace_and_absolute_outside(tmp_path):
    ws = tmp_path / "ws"
    (ws / ".ldm-app").mkdir(parents=True)
    base = ws / "runs" / "r"
    assert recorded_path(ws / "data" / "latents" / "c", base) == "../../data/latents/c"
    assert recorded_path(base / "x", base) == "./x"
    assert recorded_path(tmp_path / "outside", base) == str(tmp_path / "outside")  # not in the workspace
    assert resolve_recorded("../../data/latents/c", base) == str(ws / "data" / "latents" / "c")
    for kept in ("/abs/path", "stabilityai/sd-vae-ft-ema", None):  # absolute paths and hub ids stay as they are
        assert resolve_recorded(kept, base) == kept


def test_a_copied_workspace_continues_exports_and_generates_without_the_original(tmp_path):
    ws = tmp_path / "ws"
    app = LdmApp(ws)  # makes the workspace (.ldm-app/)
    write_tiny_latent_cache(ws / "data" / "tiny-vae", ws / "data" / "latents", CLASSES)
    s = TrainSettings(
        preprocess="no", latent_dir="data/latents", preset="tiny", batch_size=4, max_minutes=0, max_steps=3,
        run_name="r", extra=TINY,
    )  # fmt: skip
    message, _ = app.start_training(*s.values())
    assert "Starting **runs/r**" in message
    job = app.jobs.wait(300)
    assert job["state"] == "finished", (ws / "runs" / "r" / "app-job.log").read_text()[-3000:]

    # nothing the workspace records in its files names the place it was made in (logs are history, not records)
    records = [p for p in ws.rglob("*") if p.suffix in (".json", ".jsonl", ".yaml") and p.is_file()]
    assert records and not [p for p in records if str(ws) in p.read_text()]

    copy = tmp_path / "elsewhere" / "ws-copy"
    shutil.copytree(ws, copy, symlinks=True)
    shutil.rmtree(ws)  # the original is gone: the copy must not lean on it

    moved = LdmApp(copy)
    assert moved.jobs.current()["run"] == str(copy / "runs" / "r")  # the job file follows the workspace
    # Runs tab: continue the finished run for a little more time, from the copy
    message, *_ = moved.resume_run("runs/r", 0.02)
    assert "Continuing **runs/r** from step 3" in message
    job = moved.jobs.wait(300)
    assert job["state"] == "finished", (copy / "runs" / "r" / "app-job.log").read_text()[-3000:]
    status = RunFolder(copy / "runs" / "r").read_status()
    assert status["step"] > 3 and [seg["start_step"] for seg in status["segments"]] == [0, 3]
    # exports and generates from there (the exported pipeline carries its own autoencoder)
    assert ldm_main(["export", "--run", str(copy / "runs" / "r"), "--out", str(copy / "exported")]) == 0
    assert not [p for p in (copy / "exported").rglob("*.json") if str(tmp_path) in p.read_text()]
    out = copy / "samples"
    argv = ["sample", "--run", str(copy / "exported"), "--class", "smiling", "-n", "1"]
    assert ldm_main([*argv, "--num-inference-steps", "2", "--out", str(out), "--device", "cpu"]) == 0
    assert len(list(out.glob("*.png"))) == 1
    manifest = json.loads((copy / "data" / "latents" / "manifest.json").read_text())
    assert manifest["autoencoder"]["source"] == "../tiny-vae"
