"""Run folder: status, metrics, loss plot, labelled grids, checkpoint discovery, pruning, resume targets, and that no
other module of ``ldm/`` spells the run folder's file names."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from ldm.errors import UserError
from ldm.figures import labelled_grid, plot_loss, smooth_ema
from ldm.run_folder import RunFolder, step_name


def _ckpt(run: Path, step: int, complete: bool = True) -> Path:
    p = run / "checkpoints" / step_name(step)
    p.mkdir(parents=True)
    if complete:
        (p / "state.json").write_text(json.dumps({"step": step}))
    return p


def test_status_round_trip_and_states(tmp_path):
    run = RunFolder(tmp_path)
    run.write_status("running", step=3, max_steps=10, message="training", eta_seconds=12.34, loss=0.5)
    assert run.status_path == tmp_path / "status.json"
    s = run.read_status()
    assert s["state"] == "running" and s["step"] == 3 and s["max_steps"] == 10 and s["eta_seconds"] == 12.3
    assert s["loss"] == 0.5 and isinstance(s["pid"], int) and s["updated"].endswith("+00:00")
    with pytest.raises(ValueError, match="running, finished, stopped, failed"):
        run.write_status("done", step=1)
    assert RunFolder(tmp_path / "nowhere").read_status() is None


def test_metrics_skip_a_torn_line_and_truncate_on_resume(tmp_path):
    run = RunFolder(tmp_path)
    for step in (10, 20, 30):
        run.append_metrics({"step": step, "loss": 1.0 / step})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "lo')  # a writer killed mid-line
    assert [r["step"] for r in run.read_metrics()] == [10, 20, 30]
    run.truncate_metrics(after_step=20)
    assert [r["step"] for r in run.read_metrics()] == [10, 20]
    assert RunFolder(tmp_path / "nowhere").read_metrics() == []


def test_smooth_ema_is_bias_corrected():
    assert smooth_ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    s = smooth_ema([1.0, 0.0], 0.5)
    assert s[0] == pytest.approx(1.0) and 0 < s[1] < 1


def test_plot_loss_writes_a_png(tmp_path):
    records = [{"step": i, "loss": 1.0 / (1 + 0.05 * i) + 0.01 * (i % 3), "lr": 1e-3} for i in range(1, 200)]
    plot_loss(records, tmp_path / "loss.png")
    im = Image.open(tmp_path / "loss.png")
    assert im.size == (770, 440)
    plot_loss([], tmp_path / "empty.png")  # no data yet: still a valid picture
    assert Image.open(tmp_path / "empty.png").size == (770, 440)
    assert not list(tmp_path.glob(".*.tmp"))


def test_labelled_grid_has_one_row_per_label():
    rows = [[Image.new("RGB", (16, 16), c)] * 3 for c in ("red", "green", "blue")]
    grid = labelled_grid(rows, ["a", "bb", "a much longer class name"], title="step 5")
    # 16 px images are upscaled to 64; three rows below a one-line title (14 px + 4)
    assert grid.size[1] == 18 + 3 * (64 + 2) + 2
    assert grid.getpixel((grid.size[0] - 10, 18 + 2 + 10)) == (255, 0, 0)
    assert grid.getpixel((grid.size[0] - 10, 18 + 2 + 2 * 66 + 10)) == (0, 0, 255)
    long_title = ", ".join(["a fairly long title part"] * 6)  # wraps onto several lines instead of being cut
    assert labelled_grid(rows, ["a", "b", "c"], title=long_title).size[1] > grid.size[1] + 14


def test_incomplete_checkpoints_are_ignored(tmp_path):
    run = tmp_path / "run"
    folder = RunFolder(run)
    _ckpt(run, 10)
    _ckpt(run, 20)
    _ckpt(run, 30, complete=False)  # killed before state.json
    (run / "checkpoints" / ".tmp-step-000040-abc").mkdir()  # killed inside atomic_dir
    assert [p.name for p in folder.checkpoints()] == ["step-000010", "step-000020"]
    # no pointer, or a pointer to an older / missing checkpoint: the newest complete one wins
    assert folder.latest_checkpoint().name == "step-000020"
    folder.mark_latest(run / "checkpoints" / "step-000010")
    assert folder.latest_checkpoint().name == "step-000020"
    folder.mark_latest(run / "checkpoints" / "step-000030")
    assert folder.latest_checkpoint().name == "step-000020"
    assert folder.resolve_resume("latest").name == "step-000020"
    folder.mark_latest(run / "checkpoints" / "step-000020")
    assert (run / "checkpoints" / "latest").read_text() == "step-000020\n" and folder.has_latest
    assert folder.latest_checkpoint() == folder.checkpoint_dir(20) == run / "checkpoints" / "step-000020"


def test_prune_keeps_the_newest_k_and_removes_stale_temp_folders(tmp_path):
    run = tmp_path / "run"
    for s in (1, 2, 3, 4):
        _ckpt(run, s)
    (run / "checkpoints" / ".tmp-step-000005-x").mkdir()
    removed = RunFolder(run).prune_checkpoints(keep=2)
    assert [p.name for p in removed] == ["step-000001", "step-000002"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000003", "step-000004"]
    assert RunFolder(run).prune_checkpoints(keep=0) == []  # 0 keeps everything


def test_resolve_resume_accepts_latest_run_or_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UserError, match="no complete checkpoint"):
        RunFolder(run).resolve_resume("latest")
    c = _ckpt(run, 7)
    assert RunFolder(tmp_path / "new").resolve_resume(run) == c
    assert RunFolder(tmp_path / "new").resolve_resume(c) == c
    assert RunFolder.of_checkpoint(c).path == run
    with pytest.raises(UserError, match="accepted: 'latest', a run folder"):
        RunFolder(run).resolve_resume(tmp_path / "nothing")


def test_existing_run_problem_names_the_way_out(tmp_path):
    run = tmp_path / "run"
    assert RunFolder(run).existing_run_problem() is None
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    assert RunFolder(run).existing_run_problem() is None  # a run that never reached a checkpoint may be started again
    _ckpt(run, 3)
    msg = RunFolder(run).existing_run_problem()
    assert "--resume latest" in msg and "new --out" in msg


def test_the_layout_keeps_its_names(tmp_path):
    """The file names existing run folders hold: changing one would orphan every run already trained."""
    r = RunFolder(tmp_path)
    expected = [
        (r.config_path, "config.yaml"),
        (r.classes_path, "classes.json"),
        (r.inputs_path, "inputs.json"),
        (r.metrics_path, "metrics.jsonl"),
        (r.loss_plot_path, "loss.png"),
        (r.samples_dir, "samples"),
        (r.sample_grid_path(12), "samples/step-000012.png"),
        (r.checkpoints_dir, "checkpoints"),
        (r.checkpoint_dir(3), "checkpoints/step-000003"),
        (r.checkpoint_dir("step-000004"), "checkpoints/step-000004"),
        (RunFolder.checkpoint_state_path(r.checkpoint_dir(3)), "checkpoints/step-000003/state.json"),
        (r.latest_path, "checkpoints/latest"),
        (r.status_path, "status.json"),
        (r.log_path, "train.log"),
        (r.pipeline_dir, "pipeline"),
        (r.eval_path, "eval.json"),
        (r.eval_report_path, "eval.md"),
        (r.eval_plot_path, "eval.png"),
        (r.memorisation_plot_path, "memorisation.png"),
        (r.vae_dir, "vae"),
        (r.recon_dir, "recon"),
        (r.recon_grid_path(5), "recon/step-000005.png"),
    ]
    for path, rel in expected:
        assert path == tmp_path / rel
    assert Path(r) == tmp_path and r.name == tmp_path.name  # os.PathLike
    assert not list(tmp_path.iterdir())  # a RunFolder touches nothing until asked to write


def test_what_a_folder_holds(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert not run.is_started and not run.is_run and not run.has_pipeline and not run.has_vae
    assert run.sample_grids() == [] and run.recon_grids() == [] and run.read_classes() is None
    run.write_classes(["a", "b"])
    assert run.is_run and not run.is_started and run.read_classes() == ["a", "b"]
    run.write_status("running", step=0)
    assert run.is_started
    for step in (20, 3):
        run.samples_dir.mkdir(exist_ok=True)
        run.sample_grid_path(step).write_bytes(b"")
        run.recon_dir.mkdir(exist_ok=True)
        run.recon_grid_path(step).write_bytes(b"")
    assert [p.name for p in run.sample_grids()] == ["step-000003.png", "step-000020.png"]
    assert [p.name for p in run.recon_grids()] == ["step-000003.png", "step-000020.png"]
    run.vae_dir.mkdir()
    (run.vae_dir / "config.json").write_text("{}")
    assert run.has_vae
    assert run.read_inputs() is None
    run.write_inputs({"scaling_factor": 0.5, "autoencoder": {"source": "x"}})
    assert run.read_inputs() == {"scaling_factor": 0.5, "autoencoder": {"source": "x"}}
    ckpt = _ckpt(run.path, 5)
    assert RunFolder.checkpoint_latents(ckpt) is None  # the state names no cache
    RunFolder.checkpoint_state_path(ckpt).write_text(json.dumps({"step": 5, "latents": "/data/latents/x"}))
    assert RunFolder.checkpoint_latents(ckpt) == Path("/data/latents/x")
    assert RunFolder.read_checkpoint_state(ckpt)["step"] == 5


def test_find_pipeline_takes_a_run_or_a_pipeline_folder(tmp_path):
    run = RunFolder(tmp_path / "run")
    with pytest.raises(UserError, match="model folder not found"):
        RunFolder.find_pipeline(run.path)
    _ckpt(run.path, 1)
    assert RunFolder.pipeline_of(run.path) is None
    with pytest.raises(UserError, match="without an exported pipeline yet"):
        RunFolder.find_pipeline(run.path)
    with pytest.raises(UserError, match="neither a pipeline folder"):
        RunFolder.find_pipeline(tmp_path)
    run.pipeline_dir.mkdir()
    (run.pipeline_dir / "model_index.json").write_text("{}")
    assert run.has_pipeline
    assert RunFolder.find_pipeline(run.path) == RunFolder.find_pipeline(run.pipeline_dir) == run.pipeline_dir
    assert RunFolder.display_name(run.pipeline_dir) == RunFolder.display_name(run.path) == "run"


# ---------------------------------------------------------------------------------------------------------------------
# nothing else spells the layout

LDM = Path(__file__).resolve().parent.parent / "ldm"
# the run folder's file names, anywhere in a string; its folder names as a whole string (a path part being joined) or
# as a path fragment (``checkpoints/``, ``/pipeline``). "vae/" is also the autoencoder subfolder of every diffusers
# pipeline (hub downloads, pipeline folders), so only a whole "vae" string counts.
FILE_NAMES = [
    RunFolder.CONFIG,
    RunFolder.CLASSES,
    RunFolder.INPUTS,
    RunFolder.METRICS,
    RunFolder.LOSS_PLOT,
    RunFolder.CHECKPOINT_STATE,
    RunFolder.STATUS,
    RunFolder.LOG,
    RunFolder.EVAL,
    RunFolder.EVAL_REPORT,
    RunFolder.EVAL_PLOT,
    RunFolder.MEMORISATION_PLOT,
]
FOLDER_NAMES = [RunFolder.CHECKPOINTS, RunFolder.PIPELINE, RunFolder.SAMPLES, RunFolder.RECON, RunFolder.LATEST]
SPELLED = re.compile(
    "|".join(
        [rf"(?<![\w.-]){re.escape(f)}(?!\w)" for f in FILE_NAMES]
        + [rf"(?<![\w.-]){d}/|/{d}(?![\w.-])" for d in (RunFolder.CHECKPOINTS, RunFolder.PIPELINE, RunFolder.RECON)]
    )
)
WHOLE = {*FILE_NAMES, *FOLDER_NAMES, RunFolder.VAE}
# (module, string): where a string that looks like the layout is something else
ALLOWED = {
    ("ldm/commands/quickstart.py", RunFolder.SAMPLES),  # `--out samples/` in a printed example: a user folder
    ("ldm/text2image.py", RunFolder.VAE),  # a diffusers pipeline's own vae/ subfolder, not a run folder's
    ("ldm/model_card.py", RunFolder.VAE),  # likewise: the exported pipeline's vae/config.json
}


def _layout_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant of a module that spells a run-folder name; docstrings and dict keys
    (JSON fields such as eval.json's "pipeline") are not paths."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            skip.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.Dict):
            skip.update(id(k) for k in node.keys if k is not None)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
            if text.strip("/") in WHOLE or SPELLED.search(text):
                found.append((node.lineno, text))
    return sorted(found)


def test_no_module_but_run_folder_spells_the_layout():
    offenders = []
    for path in sorted(LDM.rglob("*.py")):
        rel = path.relative_to(LDM.parent).as_posix()
        if rel == "ldm/run_folder.py":
            continue
        for line, text in _layout_strings(path):
            if not any(rel == mod and name in text for mod, name in ALLOWED):
                offenders.append(f"{rel}:{line}: {text!r}")
    assert not offenders, "use ldm.run_folder.RunFolder instead of spelling its names:\n" + "\n".join(offenders)


def test_the_layout_check_sees_a_spelled_name(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        '"""Writes config.yaml."""\n'
        'a = run / "checkpoints"\n'
        'b = f"{run}/pipeline/x"\n'
        'c = {"pipeline": 1}\n'
        'd = "no train.log here"\n'
        'e = "see runs/x/vae/ and --resume latest"\n'
    )
    assert [line for line, _ in _layout_strings(module)] == [2, 3, 5]


# ---------------------------------------------------------------------------------------------------------------------
# a run records its inputs


def test_a_run_records_its_inputs_and_exports_without_its_latent_cache(tmp_path):
    """inputs.json is written before step 0; with it, a checkpoint becomes a pipeline after the cache is deleted."""
    import platform
    import shutil
    from importlib.metadata import version

    import torch
    from fakes import write_tiny_latent_cache

    from ldm.cli import main as ldm_main
    from ldm.diffusion.pipeline import load_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine
    try:
        cache = write_tiny_latent_cache(tmp_path / "vae", tmp_path / "latents", ["angry", "happy", "sad"])
        run = RunFolder(tmp_path / "run")
        tiny = ["unet.preset=tiny", "training.batch_size=4", "training.log_every=1", "training.sample_every=0"]
        tiny += ["training.checkpoint_every=0", "training.channels_last=false"]
        tiny += ["training.sample_num_inference_steps=2"]
        argv = ["train", "--latents", str(cache), "--out", str(run.path), "--max-steps", "2", "--no-progress"]
        assert ldm_main([*argv, "--device", "cpu", *tiny]) == 0

        inputs = json.loads((run.path / "inputs.json").read_text())
        assert inputs["latents"]["path"] == str(cache.resolve()) and inputs["latents"]["latent_shape"] == [4, 8, 8]
        assert set(inputs["latents"]) >= {"data_fingerprint", "listing_fingerprint", "num_latents"}
        assert inputs["autoencoder"]["source"] == str(tmp_path / "vae")
        assert inputs["autoencoder"]["content_hash"] == "test"  # as the fake cache's manifest says
        assert inputs["scaling_factor"] == 1.0 and inputs["mixed_precision"] in ("no", "bf16")
        device = inputs["device"]
        assert device["kind"] == "cpu" and device["name"] and isinstance(device["avx512_bf16"], bool)
        assert inputs["versions"] == {
            "python": platform.python_version(),
            **{name: version(name) for name in ("torch", "diffusers", "accelerate")},
        }

        shutil.rmtree(cache)
        for extra in ([], ["--checkpoint", "latest"]):  # the run's pipeline/, and one rebuilt from the checkpoint
            out = tmp_path / f"export{len(extra)}"
            assert ldm_main(["export", "--run", str(run.path), "--out", str(out), *extra]) == 0
            pipe = load_pipeline(out, device="cpu")
            assert pipe.class_names == ["angry", "happy", "sad"] and pipe.config.scaling_factor == 1.0
            image = pipe(["happy"], num_inference_steps=2, seeds=[0], output_type="pt").images
            assert image.shape == (1, 3, 16, 16) and torch.isfinite(image).all()
    finally:
        torch.set_num_threads(threads)


def test_atomic_writes_give_ordinary_permissions(tmp_path):
    """Files and folders written atomically are readable by others like any new file (not mkstemp's 0600)."""
    import os

    from ldm.utils import atomic_dir, atomic_write_text

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "status.json", "{}")
        with atomic_dir(tmp_path / "pipeline") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(mask)
    assert (tmp_path / "status.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "pipeline").stat().st_mode & 0o777 == 0o755
