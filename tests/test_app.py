"""The app's handlers called directly, the job manager with a stand-in trainer, and the API through gradio_client."""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ldm.app.handlers import NO_MODEL_HELP, LdmApp, progress_html
from ldm.app.jobs import JobManager, Phase
from ldm.app.settings import TRAIN_HERE, TrainSettings, plan_job, settings_from_yaml, settings_to_yaml
from ldm.app.workspace import Workspace, tail
from ldm.config import ConfigError
from ldm.diffusion.sample_files import read_parameters
from ldm.errors import UserError

CLASSES = ["frowning", "smiling", "sleepy"]


def make_tiny_run(run: Path, steps: int = 10) -> Path:
    """A finished run folder with a tiny exported pipeline (untrained weights: images are noise, shapes are real)."""
    import torch
    from diffusers import DDPMScheduler
    from fakes import tiny_autoencoder, tiny_class_unet

    from ldm.diffusion.pipeline import build_pipeline

    torch.manual_seed(0)
    unet = tiny_class_unet(len(CLASSES), sample_size=4)
    vae = tiny_autoencoder(sample_size=8)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    pipe = build_pipeline(unet, vae, sched.config, CLASSES, scaling_factor=1.0)
    pipe.save_pretrained(run / "pipeline")
    (run / "status.json").write_text(json.dumps({"state": "finished", "step": steps, "max_steps": steps}))
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, steps + 1)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "classes.json").write_text(json.dumps(CLASSES))
    return run


@pytest.fixture(scope="module")
def model_ws(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    make_tiny_run(ws / "runs" / "tiny")
    return ws


# --------------------------------------------------------------------------------------------------------------------
# path safety and discovery


def test_resolve_accepts_inside_and_refuses_outside(tmp_path):
    ws = Workspace(tmp_path / "ws")
    (ws.root / "data" / "faces").mkdir(parents=True)
    assert ws.resolve("data/faces") == ws.root / "data" / "faces"
    assert ws.resolve(str(ws.root / "data" / "faces")) == ws.root / "data" / "faces"
    assert ws.resolve("data/../data/faces") == ws.root / "data" / "faces"
    outside = tmp_path / "secret"
    outside.mkdir()
    for bad in ("../secret", str(outside), "/etc", "data/../../secret", "~"):
        with pytest.raises(UserError, match="outside the workspace"):
            ws.resolve(bad)
    (ws.root / "link").symlink_to(outside)  # a symlink inside pointing out is refused too, and the message says so
    with pytest.raises(UserError, match="through the symlink link.*symlink inside it that points outside is refused"):
        ws.resolve("link")
    with pytest.raises(UserError) as refused:
        ws.resolve("../secret")
    assert "link the data" not in str(refused.value) and "copy the folder into the workspace" in str(refused.value)
    with pytest.raises(UserError, match="no path given"):
        ws.resolve("  ")
    with pytest.raises(UserError, match="does not exist"):
        ws.resolve("data/nope")
    assert ws.resolve("data/new", must_exist=False) == ws.root / "data" / "new"


def test_discovery_classifies_folders(tmp_path, model_ws):
    ws = Workspace(tmp_path)
    for c in ("a", "b"):
        (tmp_path / "data" / "faces" / c).mkdir(parents=True)
        (tmp_path / "data" / "faces" / c / "0.png").write_bytes(b"x")
    (tmp_path / "data" / "lat").mkdir()
    (tmp_path / "data" / "lat" / "manifest.json").write_text("{}")
    (tmp_path / "runs" / "r1" / "samples").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "status.json").write_text(json.dumps({"state": "running", "step": 5, "pid": 2**22}))
    (tmp_path / "runs" / "r1" / "samples" / "step-000005.png").write_bytes(b"x")
    (tmp_path / "runs" / "r1" / "loss.png").write_bytes(b"x")
    (tmp_path / ".venv" / "x" / "y").mkdir(parents=True)
    found = ws.discover()
    assert found.datasets == [tmp_path / "data" / "faces"]
    assert found.caches == [tmp_path / "data" / "lat"]
    assert found.runs == [tmp_path / "runs" / "r1"]  # runs/ itself is not taken for a dataset of loss.png files
    info = ws.run_info(tmp_path / "runs" / "r1")
    assert info.state == "interrupted"  # "running" but its pid does not exist
    assert info.newest_sample.name == "step-000005.png"
    models = Workspace(model_ws).models()
    assert [v for _, v in models] == [str(model_ws / "runs" / "tiny")]


def test_tail_keeps_the_latest_progress_bar(tmp_path):
    p = tmp_path / "log"
    p.write_text("one\ntwo\n 10%|#\r 50%|###\r 90%|#####\nthree\n")
    assert tail(p, 2) == " 90%|#####\nthree"
    assert tail(tmp_path / "missing") == ""


# --------------------------------------------------------------------------------------------------------------------
# settings


def test_settings_yaml_round_trip(tmp_path):
    app = LdmApp(tmp_path)
    s = TrainSettings(
        data_dir="data/faces",
        preprocess="no",
        latent_dir="data/lat",
        autoencoder="runs/vae",
        epochs=3,
        batch_size=16,
        learning_rate=1e-3,
        loss="MAE",
        optimizer="SGD",
        preset="tiny",
        ema=False,
        label_dropout=0.2,
        max_minutes=2.5,
        max_steps=40,
        run_name="r2",
        extra="training.warmup_steps=5\ntraining.sample_every=20",  # config order
    )
    msg = app.save_settings("conf/s.yaml", *s.values())
    assert "saved" in msg
    text = (tmp_path / "conf" / "s.yaml").read_text()
    assert "loss: l1" in text and "optimizer: sgd" in text  # the file is a real config (MAE = l1)
    loaded = app.load_settings("conf/s.yaml")
    assert loaded[:-1] == s.values()
    assert "loaded" in loaded[-1]
    # a plain config YAML loads too; keys without a control land in the extra settings
    cfg = settings_from_yaml("training:\n  batch_size: 8\n  warmup_steps: 7\ndiffusion:\n  loss: huber\n")
    assert cfg.batch_size == 8 and cfg.loss == "Huber" and cfg.extra == "training.warmup_steps=7"
    assert settings_from_yaml(settings_to_yaml(cfg)) == cfg
    # refused: outside the workspace, bad keys
    assert "outside the workspace" in app.save_settings("../s.yaml", *s.values())
    with pytest.raises(ConfigError, match="unknown config key 'training.batchsize'"):
        settings_from_yaml("training:\n  batchsize: 8\n")
    bad = TrainSettings(extra="training.batch_size=many").values()
    assert "training.batch_size" in app.save_settings("s.yaml", *bad)


# TrainSettings field -> the label of its Training-tab control, in the order of the API's parameters
TRAINING_CONTROLS = {
    "data_dir": "Data folder",
    "preprocess": "Preprocess",
    "latent_dir": "Latent folder",
    "autoencoder": "Autoencoder",
    "epochs": "Epochs",
    "batch_size": "Batch size",
    "learning_rate": "Learning rate",
    "loss": "Loss",
    "optimizer": "Optimizer",
    "preset": "Model preset",
    "ema": "EMA",
    "label_dropout": "Guidance dropout",
    "max_minutes": "Max minutes",
    "max_steps": "Max steps",
    "run_name": "Run name",
    "extra": "Extra settings",
    "processes": "Processes",
}


def test_training_tab_controls_are_tied_to_settings_by_name(tmp_path):
    from ldm.app.blocks import build_app

    assert TrainSettings.names() == tuple(TRAINING_CONTROLS)
    handlers = {f.api_name: f for f in build_app(tmp_path).fns.values()}
    controls = handlers["start_training"].inputs
    assert [c.label for c in controls] == list(TRAINING_CONTROLS.values())
    from ldm.app.recipes import default_settings

    # each control shows its own field's value of the default recipe (demo: measured, unlike TrainSettings())
    assert [c.value for c in controls] == default_settings().values()
    assert default_settings().extra and default_settings().learning_rate == 2e-3
    assert handlers["save_settings"].inputs[1:] == controls
    assert handlers["load_settings"].outputs[:-1] == controls
    assert handlers["load"].outputs[7 : 7 + len(controls)] == controls  # refilled after a page reload


def test_settings_form_refuses_a_missing_or_misnamed_field():
    from ldm.app.blocks import SettingsForm

    form = SettingsForm()
    with pytest.raises(ValueError, match="TrainSettings has no field 'epoch'"):
        form.add(dict, "epoch", "Epochs")
    for name in TrainSettings.names()[1:]:
        form.add(dict, name, TRAINING_CONTROLS[name])
    with pytest.raises(ValueError, match="no control for TrainSettings field.*: data_dir"):
        form.in_field_order()
    form.add(dict, "data_dir", "Data folder")
    assert [c["label"] for c in form.in_field_order()] == list(TRAINING_CONTROLS.values())
    assert form["loss"]["choices"] == ["MSE", "MAE", "Huber"] and form["loss"]["value"] == "MSE"
    with pytest.raises(UserError, match="expected 17 settings"):
        TrainSettings.from_values(*TrainSettings().values()[:-1])


def test_every_labelled_choice_reaches_the_config():
    from ldm.choices import LOSS_LABELS, OPTIMIZER_LABELS, UNET_PRESETS

    for name, label in LOSS_LABELS.items():
        assert TrainSettings(loss=label).config().diffusion.loss == name
    for name, label in OPTIMIZER_LABELS.items():
        assert TrainSettings(optimizer=label).config().training.optimizer == name
    for name in UNET_PRESETS:
        assert TrainSettings(preset=name).config().unet.preset == name
    with pytest.raises(UserError, match="model preset 'huge' unknown; accepted: tiny, small, seed, base, large"):
        TrainSettings(preset="huge").overrides()
    with pytest.raises(UserError, match="loss 'mse' unknown; accepted: MSE, MAE, Huber"):
        TrainSettings(loss="mse").overrides()


def test_plan_job_phases_and_refusals(tmp_path):
    ws = Workspace(tmp_path)
    (tmp_path / "data" / "faces" / "a").mkdir(parents=True)
    s = TrainSettings(data_dir="data/faces", autoencoder=TRAIN_HERE, run_name="r", max_steps=30, preset="tiny")
    plan = plan_job(ws, s)
    assert [p.name for p in plan.phases] == ["train-vae", "prepare", "train"]
    train = plan.phases[-1].argv
    assert train[:4] == [sys.executable, "-m", "ldm", "train"]
    assert "unet.preset=tiny" in train and "training.max_steps=30" in train
    assert plan.latents == tmp_path / "data" / "latents" / "r"
    with pytest.raises(UserError, match="outside the workspace"):
        plan_job(ws, TrainSettings(data_dir="/etc", run_name="r", max_steps=1))
    with pytest.raises(UserError, match="run name"):
        plan_job(ws, TrainSettings(data_dir="data/faces", run_name="../evil", max_steps=1))
    with pytest.raises(UserError, match="manifest.json"):
        plan_job(ws, TrainSettings(preprocess="no", latent_dir="data/faces", run_name="r", max_steps=1))
    with pytest.raises(UserError, match="at least one limit"):
        plan_job(ws, TrainSettings(data_dir="data/faces", run_name="r", epochs=0, max_minutes=0, max_steps=0))
    with pytest.raises(UserError, match="outside the workspace"):
        plan_job(ws, TrainSettings(data_dir="data/faces", run_name="r", autoencoder="../vae", max_steps=1))


def test_several_gpus_train_in_several_processes_and_none_refuses(tmp_path, monkeypatch):
    import ldm.app.settings as settings_mod

    ws = Workspace(tmp_path)
    (tmp_path / "data" / "faces" / "a").mkdir(parents=True)
    s = TrainSettings(data_dir="data/faces", run_name="r", max_steps=30, processes=2)
    monkeypatch.setattr(settings_mod, "gpu_count", lambda: 2)
    train = plan_job(ws, s).phases[-1].argv
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    assert train[: len(launch)] == launch and train[train.index("-m", 3) : train.index("-m", 3) + 3] == [
        "-m", "ldm", "train"]  # fmt: skip
    monkeypatch.setattr(settings_mod, "gpu_count", lambda: 0)
    with pytest.raises(UserError, match="one process per GPU, and this machine has 0 GPU"):
        plan_job(ws, s)


def test_planned_commands_are_accepted_by_the_real_cli(tmp_path):
    """Every phase's argv parses and resolves its config in the real ``ldm`` command (``--dry-run``: no work)."""
    import subprocess

    ws = Workspace(tmp_path)
    (tmp_path / "data" / "faces" / "a").mkdir(parents=True)
    extra = "data.image_size=16 autoencoder.max_steps=3\ntraining.sample_every=7"
    s = TrainSettings(data_dir="data/faces", run_name="r", max_steps=9, preset="tiny", loss="MAE", extra=extra)
    plan = plan_job(ws, s)
    expected = {"train-vae": ["image_size: 16", "max_steps: 3"], "prepare": ["image_size: 16"]}
    expected["train"] = ["preset: tiny", "loss: l1", "max_steps: 9", "sample_every: 7"]
    for phase in plan.phases:
        out = subprocess.run(phase.argv + ["--dry-run"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (phase.name, out.stderr)
        for text in expected[phase.name]:
            assert text in out.stdout, (phase.name, text)
    assert not (tmp_path / "runs" / "r" / "checkpoints").exists()


def test_resume_plan_finishes_the_budget_or_continues_for_more(tmp_path):
    from ldm.app.settings import plan_resume_run

    ws = Workspace(tmp_path)
    run, cache = tmp_path / "runs" / "r", tmp_path / "data" / "latents" / "c"
    with pytest.raises(UserError, match="does not exist"):
        plan_resume_run(ws, "runs/r")
    run.mkdir(parents=True)
    with pytest.raises(UserError, match="no checkpoint yet"):
        plan_resume_run(ws, "runs/r")
    cache.mkdir(parents=True)
    ckpt = run / "checkpoints" / "step-000004"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"latents": "../../data/latents/c"}))  # as a workspace records it
    info = {"latents": "data/latents/elsewhere", "settings": {"processes": 1}}
    plan = plan_resume_run(ws, "runs/r", info)
    argv = plan.phases[0].argv
    # paths relative to the workspace (the worker runs in it); the checkpoint's own record wins over the job's
    assert argv[argv.index("--latents") + 1] == "data/latents/c" and argv[argv.index("--out") + 1] == "runs/r"
    assert argv[-2:] == ["--resume", "latest"] and plan.latents == cache
    more = plan_resume_run(ws, "runs/r", info, more={"max_minutes": 2.5, "max_steps": 0}).phases[0].argv
    assert more[-4:] == ["--resume", "latest", "--max-minutes", "2.5"]
    with pytest.raises(UserError, match="Max minutes or Max steps"):
        plan_resume_run(ws, "runs/r", info, more={"max_minutes": 0, "max_steps": 0})
    with pytest.raises(UserError, match="outside the workspace"):
        plan_resume_run(ws, "/etc")


def test_resume_plan_for_a_run_not_started_by_the_app(tmp_path):
    from ldm.app.settings import plan_resume_run

    ws = Workspace(tmp_path)
    run, cache = tmp_path / "runs" / "cli", tmp_path / "data" / "latents" / "c"
    ckpt = run / "checkpoints" / "step-000007"
    ckpt.mkdir(parents=True)
    state = ckpt / "state.json"
    state.write_text(json.dumps({"latents": str(cache)}))
    with pytest.raises(UserError, match="latent folder of run runs/cli .*does not exist"):
        plan_resume_run(ws, "runs/cli")
    cache.mkdir(parents=True)
    plan = plan_resume_run(ws, "runs/cli")
    argv = plan.phases[0].argv
    assert argv[argv.index("--latents") + 1] == "data/latents/c" and argv[-2:] == ["--resume", "latest"]
    assert plan.info["latents"] == "data/latents/c"
    state.write_text(json.dumps({"latents": "/etc"}))
    with pytest.raises(UserError, match="outside the workspace"):
        plan_resume_run(ws, "runs/cli")
    state.write_text(json.dumps({"step": 7}))
    with pytest.raises(UserError, match="does not say which latent cache"):
        plan_resume_run(ws, "runs/cli")


def test_autoencoder_runs_are_listed_and_resumed_with_train_vae(tmp_path):
    """An `ldm train-vae` run (status.json, checkpoints, vae/) is a run of the Runs tab and an autoencoder choice, not
    an inference model; Resume builds `ldm train-vae --data <its dataset> --out <run> --resume latest`."""
    from ldm.app.settings import plan_resume_run

    ws = Workspace(tmp_path)
    run, data = tmp_path / "runs" / "faces-vae", tmp_path / "data" / "faces"
    data.mkdir(parents=True)
    ckpt = run / "checkpoints" / "step-000005"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"kind": "autoencoder", "step": 5, "data_dir": str(data)}))
    (run / "checkpoints" / "latest").write_text("step-000005\n")
    (run / "status.json").write_text(json.dumps({"state": "stopped", "step": 5, "kind": "autoencoder"}))
    (run / "vae").mkdir()
    (run / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (run / "recon").mkdir()
    (run / "recon" / "step-000005.png").write_bytes(b"")

    found = ws.discover()
    assert found.runs == [run] and found.vae_runs == [run]
    info = ws.runs(found)[0]
    assert info.kind == "autoencoder" and info.state == "stopped" and info.newest_sample.name == "step-000005.png"
    assert ws.models(found) == []
    plan = plan_resume_run(ws, "runs/faces-vae")
    assert [p.name for p in plan.phases] == ["train-vae"]
    argv = plan.phases[0].argv
    assert argv[argv.index("train-vae") :] == [
        "train-vae",
        "--data",
        "data/faces",
        "--out",
        "runs/faces-vae",
        "--resume",
        "latest",
    ]
    (ckpt / "state.json").write_text(json.dumps({"kind": "autoencoder", "step": 5, "data_dir": "/etc"}))
    with pytest.raises(UserError, match="outside the workspace"):
        plan_resume_run(ws, "runs/faces-vae")


def test_runs_tab_resumes_a_stopped_cli_run(tmp_path):
    """A run stopped outside the app (here: the trainer's safe stop after one step) continues from the Runs tab."""
    from fakes import write_tiny_latent_cache

    from ldm.config import load_config
    from ldm.training.trainer import train

    cache = write_tiny_latent_cache(tmp_path / "runs" / "vae", tmp_path / "data" / "latents" / "c", CLASSES)
    run = tmp_path / "runs" / "cli"
    cfg = load_config(
        None,
        [
            "unet.preset=tiny",
            "training.batch_size=4",
            "training.max_steps=3",
            "training.sample_every=0",
            "training.sample_num_inference_steps=2",
            "training.sample_num_images=1",
            "diffusion.num_train_timesteps=100",
        ],
    )
    stopped = train(cfg, cache, run, should_stop=lambda: True, progress=False, device="cpu")
    assert stopped.state == "stopped" and stopped.step == 1
    app = LdmApp(tmp_path)
    message, timer, tabs, runs_message = app.resume_run(str(run))
    assert "Resuming **runs/cli**" in message and runs_message == message
    assert tabs.selected == "training"
    job = app.jobs.wait(180)
    assert job["state"] == "finished", (run / "app-job.log").read_text()
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 3
    # a run without a checkpoint cannot be resumed, and says so
    (tmp_path / "runs" / "empty").mkdir()
    *_, runs_message = app.resume_run(str(tmp_path / "runs" / "empty"))
    assert "no checkpoint yet" in runs_message


# --------------------------------------------------------------------------------------------------------------------
# inference


def test_no_model_message(tmp_path):
    app = LdmApp(tmp_path)
    picker, notice = app.refresh_models(None)
    assert picker.choices == [] and notice == NO_MODEL_HELP
    gallery, fig, files, params, message, seed = app.generate(None, None, "smiling", 2, "dpm++", 5, 3, None, 0, False)
    assert gallery == [] and files == [] and "No trained model" in message


def test_unknown_class_message(model_ws):
    app = LdmApp(model_ws, device="cpu")
    model = str(model_ws / "runs" / "tiny")
    out = app.generate(model, "smilling", "", 2, "dpm++", 3, 3.0, None, 0, False)
    assert out[0] == [] and "unknown class 'smilling'" in out[4] and "smiling" in out[4]
    out = app.generate(model, "smiling", "", 2, "dpm++", 3, 3.0, "grumpy", 0, False)
    assert "unknown class 'grumpy'" in out[4]
    out = app.generate("/etc", "smiling", "", 2, "dpm++", 3, 3.0, None, 0, False)
    assert "outside the workspace" in out[4]


def test_generate_images_files_and_parameters(model_ws):
    from PIL import Image

    app = LdmApp(model_ws, device="cpu")
    model = str(model_ws / "runs" / "tiny")
    classes, negative, examples, note = app.select_model(model)
    assert classes.choices == [(c, c) for c in CLASSES] and negative.value == "(none)"
    assert examples.constructor_args["samples"] == [[c] for c in CLASSES]
    seen = []
    gallery, fig, files, params, message, seed = app.generate(
        model,
        " Sleepy ",  # the Class box (typed: case and spaces do not matter) wins over the API's class_text
        "frowning",
        2,
        "ddim",
        4,
        2.0,
        "smiling",
        123,
        False,
        progress=lambda f, desc="": seen.append(f),
    )
    assert seed == 123 and len(gallery) == 2 and len(files) == 2, message
    assert seen[-1] == 1.0 and len(seen) >= 4  # the progress bar is fed per step
    p = json.loads(params)
    assert p["class"] == "sleepy" and p["negative_class"] == "smiling" and p["seeds"] == [123, 124]
    img = Image.open(files[0])
    assert img.size == (8, 8)
    embedded = read_parameters(files[0])  # the PNG carries its recipe
    assert embedded["class"] == "sleepy" and embedded["seed"] == 123 and embedded["negative_class"] == "smiling"
    # same seed, same pixels; a failed Generate leaves the seed box as it was, even with randomise on
    again = app.generate(model, "sleepy", "", 1, "ddim", 4, 2.0, "smiling", 123, False)
    assert list(Image.open(again[2][0]).getdata()) == list(img.getdata())
    assert app.generate(None, "sleepy", "", 1, "ddim", 2, 2.0, None, 123, True)[5] == 123  # kept on an error


# --------------------------------------------------------------------------------------------------------------------
# jobs, with a stand-in trainer that writes the run folder's files and obeys SIGINT like ldm train

FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    run = sys.argv[1]; os.makedirs(run, exist_ok=True)
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    def status(state, step):
        tmp = os.path.join(run, "status.tmp")
        st = {"state": state, "step": step, "max_steps": 1000, "pid": os.getpid(), "eta_seconds": 9,
              "updated_unix": time.time()}
        json.dump(st, open(tmp, "w"))
        os.replace(tmp, os.path.join(run, "status.json"))
    for step in range(1, 1000):
        with open(os.path.join(run, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "loss": 1 / step}) + "\\n")
        status("running", step)
        print("step", step, flush=True)
        if stop:
            os.makedirs(os.path.join(run, "checkpoints"), exist_ok=True)
            open(os.path.join(run, "checkpoints", "latest"), "w").write("step")
            status("stopped", step)
            sys.exit(0)
        time.sleep(0.05)
    """
)


def test_job_start_poll_reattach_stop(tmp_path):
    app = LdmApp(tmp_path)
    run = tmp_path / "runs" / "fake"
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    phases = [
        Phase("prepare", [sys.executable, "-c", "print('encoding')"]),
        Phase("train", [sys.executable, str(script), str(run)]),
    ]
    app.jobs.start(run, phases, run / "app-job.log", {"latents": str(tmp_path)})
    deadline = time.time() + 20
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.1)
    time.sleep(0.5)
    html, frame, sample, log, message, timer, seen = app.poll()
    assert 'data-state="running"' in html and "phase 2/2: train" in html and "ETA" in html
    assert len(frame.value["data"]) >= 2 and "step" in log
    assert "encoding" in (run / "app-job.log").read_text()  # the first phase ran before the second
    # a second manager (a reloaded page, a restarted app) sees the same job and refuses a second one
    other = JobManager(Workspace(tmp_path))
    assert other.is_running()
    with pytest.raises(UserError, match="already running"):
        other.start(run, phases, run / "app-job.log")
    assert "Stop requested" in app.stop_training()
    job = app.jobs.wait(20)
    assert job["state"] == "stopped" and job["returncode"] == 0
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    html, *_ = app.poll()
    assert 'data-state="stopped"' in html
    assert "no job is running" in app.stop_training()


def test_the_progress_line_and_the_message_come_from_one_view_of_the_job():
    """Headline state, step and message agree at every moment: a status.json from before the job started is not
    shown (no "stopped" line after Resume), a stop request reads "stopping" everywhere, a finished run says so once,
    and a failed phase gives the log's reason (never the "Starting" message of the start)."""
    from ldm.app.handlers import job_view

    started = 1000.0
    job = {"state": "running", "phase": "train", "phases": [{}, {}], "phase_index": 1, "run": "/w/runs/r",
           "started": started}  # fmt: skip
    old = {"state": "stopped", "step": 39, "message": "stopped at step 39", "updated_unix": started - 60}
    view = job_view(job, old)
    assert view.state == "starting" and view.step is None and "stopped" not in view.message
    now = {"state": "running", "step": 41, "max_steps": 100, "message": "training", "updated_unix": started + 5}
    view = job_view(job, now)
    assert (view.state, view.step, view.max_steps, view.fraction) == ("running", 41, 100, 0.41)
    view = job_view({**job, "stop_requested": started + 6}, now)
    assert view.state == "stopping" and view.message.startswith("Stop requested")
    html = progress_html({**job, "stop_requested": started + 6}, now)
    assert 'data-state="stopping"' in html and "running" not in html
    done = {**now, "state": "finished", "message": "finished at step 100 (reached max_steps=100) after 1.0 min"}
    view = job_view({**job, "state": "finished", "message": "finished"}, done)
    assert view.message.lower().count("finished") == 1 and "Resume to train it longer" in view.message
    failed = {**job, "state": "failed", "phase": "prepare", "message": "prepare failed (exit code 2); see the log"}
    log = "== prepare\nencoding\nerror: data folder data/x has no class folders with images"
    view = job_view(failed, None, log=log)
    assert view.state == "failed" and "has no class folders" in view.message and "Start" not in view.message
    view = job_view(failed, None, log="ldm train: error: autoencoder source 'x' is neither a folder nor a hub id")
    assert view.message.endswith(": autoencoder source 'x' is neither a folder nor a hub id")


def test_a_loss_plot_with_one_point_says_why_there_is_no_line_yet():
    from ldm.app.handlers import loss_plot

    one = loss_plot([{"step": 10, "loss": 0.377309}])
    assert "One point so far (step 10, loss 0.3773)" in one.caption and len(one.value["data"]) == 2
    two = loss_plot([{"step": 10, "loss": 0.377309}, {"step": 20, "loss": 0.3}])
    assert two.caption == "" and len(two.value["data"]) == 4  # the caption goes once the line can be drawn


def test_job_failure_is_reported(tmp_path):
    jobs = JobManager(Workspace(tmp_path))
    phases = [
        Phase("train-vae", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]),
        Phase("train", ["true"]),
    ]
    jobs.start(tmp_path / "runs" / "x", phases, tmp_path / "runs" / "x" / "app-job.log")
    job = jobs.wait(20)
    assert job["state"] == "failed" and job["returncode"] == 3 and "train-vae failed" in job["message"]
    assert "boom" in (tmp_path / "runs" / "x" / "app-job.log").read_text()
    assert progress_html(job, None).count("failed") >= 1


def test_poll_shows_autoencoder_progress_before_training(tmp_path):
    from PIL import Image

    app = LdmApp(tmp_path)
    vae = tmp_path / "runs" / "r-vae"
    (vae / "recon").mkdir(parents=True)
    (vae / "metrics.jsonl").write_text('{"step": 5, "seconds": 12.0, "loss": 0.3}\n')
    Image.new("RGB", (8, 8), "red").save(vae / "recon" / "step-000005.png")
    phases = [{"name": "train-vae", "argv": ["x"], "folder": str(vae)}, {"name": "train", "argv": ["y"], "folder": ""}]
    job = {"state": "running", "pid": os.getpid(), "run": str(tmp_path / "runs" / "r"), "phase": "train-vae"}
    (app.ws.app_dir / "job.json").write_text(json.dumps({**job, "phases": phases, "phase_index": 0}))
    html, plot, image, log, message, timer, seen = app.poll()
    assert "phase 1/2: train-vae" in html and "step 5, 12 s" in html and "ldm-bar-busy" in html
    assert plot.value is None and image.size == (8, 8)


def test_dead_worker_is_reported_as_failed(tmp_path):
    ws = Workspace(tmp_path)
    (ws.app_dir / "job.json").write_text(json.dumps({"state": "running", "pid": 2**22, "run": "r", "phase": "train"}))
    assert JobManager(ws).current()["state"] == "failed"


# --------------------------------------------------------------------------------------------------------------------
# the API through gradio_client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gradio_client_api(model_ws):
    from gradio_client import Client

    from ldm.app.blocks import launch_app

    port = _free_port()
    demo = launch_app(model_ws, port=port, prevent_thread_lock=True, quiet=True, device="cpu")
    try:
        assert demo.local_url.startswith("http://127.0.0.1:")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        picker, notice = client.predict(None, api_name="/refresh_models")
        model = str(model_ws / "runs" / "tiny")
        assert picker["value"] == model and notice == ""
        result = client.predict(model, "smiling", "", 2, "dpm++", 3, 3.0, "(none)", 7, False, api_name="/generate")
        gallery, figure, files, params, message, seed = result
        assert len(gallery) == 2 and len(files) == 2 and seed == 7, message
        assert json.loads(params)["class"] == "smiling"
        assert os.path.getsize(files[0]) > 0
        msg = client.predict("x.yaml", *TrainSettings(run_name="api").values(), api_name="/save_settings")
        assert "saved" in msg and (model_ws / "x.yaml").is_file()
        _, bad = client.predict(model, "nobody", "", 1, "dpm++", 2, 3.0, "(none)", 0, False, api_name="/generate")[3:5]
        assert "unknown class 'nobody'" in bad
    finally:
        demo.close()
