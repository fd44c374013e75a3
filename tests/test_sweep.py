"""``ldm sweep`` and ``ldm runs``: a 2x2 sweep of tiny runs through the CLI, stopped in the middle and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import write_tiny_latent_cache

from ldm.cli import main as ldm_main
from ldm.run_folder import RunFolder

CLASSES = ["angry", "happy", "sad"]
TINY = [
    "training.batch_size=4", "training.warmup_steps=1", "training.log_every=1", "training.sample_every=0",
    "training.sample_minutes=0", "training.checkpoint_every=1", "training.sample_num_inference_steps=2",
    "training.sample_num_images=1", "diffusion.num_train_timesteps=100", "unet.preset=tiny",
]  # fmt: skip
GRID = ["--grid", "training.learning_rate=1e-3,2e-3", "--grid", "diffusion.label_dropout=0.1,0.2"]


@pytest.fixture
def cache(tmp_path) -> Path:
    return write_tiny_latent_cache(tmp_path / "vae", tmp_path / "latents", CLASSES)


def _steps(run: Path) -> list[int]:
    return [m["step"] for m in RunFolder(run).read_metrics() if "loss" in m]


def test_a_sweep_stopped_in_the_middle_resumes_without_training_a_member_twice(cache, tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", "--latents", str(cache), "--out", str(out), *GRID, "--max-steps", "30", "--device", "cpu", *TINY]
    second = out / "learning_rate=1e-3-label_dropout=0.2"
    # stopped (Ctrl-C) while the second member trains
    proc = subprocess.Popen([sys.executable, "-m", "ldm", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("== run 2 of 4"):
            deadline = time.monotonic() + 60
            while len(_steps(second)) < 3 and time.monotonic() < deadline:  # into its training
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped: run the same command again" in rest
    first = out / "learning_rate=1e-3-label_dropout=0.1"
    assert RunFolder(first).read_status()["state"] == "finished" and _steps(first) == list(range(1, 31))
    record = json.loads((out / "sweep.json").read_text())
    assert [m["state"] for m in record["members"]] == ["finished", "resumable", "new", "new"]
    stopped_at = RunFolder(second).read_status()["step"]
    assert 3 <= stopped_at < 30

    # the same command again: the finished member is skipped, the interrupted one resumed, the rest trained
    assert ldm_main(argv) == 0
    record = json.loads((out / "sweep.json").read_text())
    assert [m["state"] for m in record["members"]] == ["finished"] * 4
    for m in record["members"]:
        assert _steps(out / m["name"]) == list(range(1, 31)), m["name"]  # each step trained once
    assert f"resuming from {second}/checkpoints/step-{stopped_at:06d}" in (second / "train.log").read_text()
    summary = (out / "summary.md").read_text()
    assert summary.count("| finished |") == 4 and "**training.learning_rate**" in summary
    assert (out / "compare.png").stat().st_size > 10_000

    # ldm runs: the sweep's runs, and two of them compared (the differing setting highlighted, a figure)
    assert ldm_main(["runs", str(out)]) == 0
    figure = tmp_path / "cmp.png"
    a, b = (out / m["name"] for m in record["members"][:2])
    assert ldm_main(["runs", "--compare", str(a), str(b), "--figure", str(figure)]) == 0
    assert figure.is_file()


def test_a_bad_grid_is_refused_before_any_training(cache, tmp_path, capsys):
    out = tmp_path / "sweep"
    base = ["sweep", "--latents", str(cache), "--out", str(out), "--max-steps", "2", *TINY]
    assert ldm_main([*base, "--grid", "training.learning_rat=1e-3,2e-3"]) == 2
    assert "unknown config key 'training.learning_rat'" in capsys.readouterr().err
    assert ldm_main([*base, "--grid", "training.learning_rate=fast,2e-3"]) == 2
    assert "got 'fast'" in capsys.readouterr().err
    assert ldm_main([*base, "--grid", "training.learning_rate"]) == 2
    assert "KEY=VALUE,VALUE" in capsys.readouterr().err
    assert not out.exists()  # nothing was started
    assert ldm_main([*base, "--grid", "unet.preset=tiny,small", "--seeds", "0,1", "--dry-run"]) == 0
    assert capsys.readouterr().out.count("[new]") == 4


def test_the_compare_handler_through_gradio_client(tmp_path):
    """The Runs tab's Compare as an API call: two runs with different learning rates -> the table names the
    setting that differs, with both values, and a figure."""
    import socket

    from gradio_client import Client
    from test_app import make_tiny_run

    from ldm.app.blocks import launch_app

    for name, lr in (("a", "0.001"), ("b", "0.003")):
        run = make_tiny_run(tmp_path / "runs" / name)
        (run / "config.yaml").write_text(f"training:\n  learning_rate: {lr}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch_app(tmp_path, port=port, prevent_thread_lock=True, quiet=True, device="cpu")
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        figure, table, grids = client.predict(["runs/a", "runs/b"], api_name="/compare_runs")
        assert "**training.learning_rate**" in table and "**0.001**" in table and "**0.003**" in table
        assert Path(figure).stat().st_size > 10_000
        _, one, _ = client.predict(["runs/a"], api_name="/compare_runs")
        assert "Tick two runs or more" in one
    finally:
        demo.close()


def test_continue_sweep_runs_the_same_command_again(tmp_path):
    """The app's Continue sweep rebuilds the sweep's command from its sweep.json (relative to the workspace)."""
    from ldm.app.settings import plan_continue_sweep
    from ldm.app.workspace import Workspace
    from ldm.errors import UserError

    ws = Workspace(tmp_path)
    folder = tmp_path / "runs" / "sweeps" / "lr"
    folder.mkdir(parents=True)
    (tmp_path / "data" / "latents" / "demo").mkdir(parents=True)
    spec = {"latents": "data/latents/demo", "out": "runs/sweeps/lr", "config": None, "max_minutes": 3.0,
            "max_steps": 0, "grid": [["training.learning_rate", ["5e-4", "1e-3"]]], "seeds": [0, 1],
            "eval_samples": 100, "overrides": ["unet.preset=tiny"]}  # fmt: skip
    (folder / "sweep.json").write_text(json.dumps(spec))
    argv = plan_continue_sweep(ws, "lr").phases[0].argv
    command = argv[argv.index("sweep") :]
    assert command == ["sweep", "--latents", "data/latents/demo", "--out", "runs/sweeps/lr", "--max-minutes", "3",
                       "--max-steps", "0", "--grid", "training.learning_rate=5e-4,1e-3", "--seeds", "0,1",
                       "--eval-samples", "100", "unet.preset=tiny"]  # fmt: skip
    (tmp_path / "runs" / "sweeps" / "nothing-here").mkdir()
    with pytest.raises(UserError, match="not a sweep"):
        plan_continue_sweep(ws, "nothing-here")


def test_the_lowest_kid_is_called_a_win_only_beyond_the_evaluations_noise():
    from ldm.evaluation.compare import best_by_kid, kid_verdict, markdown_table

    def row(name, kid, std):
        numbers = {"loss": 0.1, "kid": kid, "kid_std": std, "fid": None, "class_accuracy": 0.9, "memorised": 0.0}
        return {"run": name, "status": "finished", "steps": 10, "minutes": 1.0, **numbers, "evaluated": "ldm eval"}

    close = [row("a", 0.1309, 0.0051), row("b", 0.1296, 0.0047), row("c", 0.1369, 0.0053)]
    assert best_by_kid(close) == "b"
    verdict = kid_verdict(close, "b")
    assert verdict.startswith("Lowest KID: b, but a is within the evaluations' noise")
    table = markdown_table(close, {"training.learning_rate": ["4e-3", "2e-3", "1e-3"]}, "b")
    assert "| **b** (best KID) |" in table and "0.1296 ± 0.0047" in table and verdict in table
    apart = [row("a", 0.20, 0.01), row("b", 0.10, 0.01)]
    assert kid_verdict(apart, "b").startswith("Lowest KID: b, ahead of a by more than their KID std")
    assert kid_verdict([row("a", 0.2, 0.01)], "a") == ""  # one evaluated run: nothing to rank
