"""Run folder helpers: status, metrics, loss plot, labelled grids, checkpoint discovery, pruning and resume targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ldm.errors import UserError
from ldm.figures import labelled_grid, plot_loss, smooth_ema
from ldm.run_folder import (
    append_metrics,
    existing_run_problem,
    latest_checkpoint,
    list_checkpoints,
    mark_latest,
    prune_checkpoints,
    read_metrics,
    read_status,
    resolve_resume,
    step_name,
    truncate_metrics,
    write_status,
)


def _ckpt(run: Path, step: int, complete: bool = True) -> Path:
    p = run / "checkpoints" / step_name(step)
    p.mkdir(parents=True)
    if complete:
        (p / "state.json").write_text(json.dumps({"step": step}))
    return p


def test_status_round_trip_and_states(tmp_path):
    write_status(tmp_path, "running", step=3, max_steps=10, message="training", eta_seconds=12.34, loss=0.5)
    s = read_status(tmp_path)
    assert s["state"] == "running" and s["step"] == 3 and s["max_steps"] == 10 and s["eta_seconds"] == 12.3
    assert s["loss"] == 0.5 and isinstance(s["pid"], int) and s["updated"].endswith("+00:00")
    with pytest.raises(ValueError, match="running, finished, stopped, failed"):
        write_status(tmp_path, "done", step=1)
    assert read_status(tmp_path / "nowhere") is None


def test_metrics_skip_a_torn_line_and_truncate_on_resume(tmp_path):
    for step in (10, 20, 30):
        append_metrics(tmp_path, {"step": step, "loss": 1.0 / step})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "lo')  # a writer killed mid-line
    assert [r["step"] for r in read_metrics(tmp_path)] == [10, 20, 30]
    truncate_metrics(tmp_path, after_step=20)
    assert [r["step"] for r in read_metrics(tmp_path)] == [10, 20]


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
    _ckpt(run, 10)
    _ckpt(run, 20)
    _ckpt(run, 30, complete=False)  # killed before state.json
    (run / "checkpoints" / ".tmp-step-000040-abc").mkdir()  # killed inside atomic_dir
    assert [p.name for p in list_checkpoints(run)] == ["step-000010", "step-000020"]
    # no pointer, or a pointer to an older / missing checkpoint: the newest complete one wins
    assert latest_checkpoint(run).name == "step-000020"
    mark_latest(run, run / "checkpoints" / "step-000010")
    assert latest_checkpoint(run).name == "step-000020"
    mark_latest(run, run / "checkpoints" / "step-000030")
    assert latest_checkpoint(run).name == "step-000020"
    assert resolve_resume(run, "latest").name == "step-000020"


def test_prune_keeps_the_newest_k_and_removes_stale_temp_folders(tmp_path):
    run = tmp_path / "run"
    for s in (1, 2, 3, 4):
        _ckpt(run, s)
    (run / "checkpoints" / ".tmp-step-000005-x").mkdir()
    removed = prune_checkpoints(run, keep=2)
    assert [p.name for p in removed] == ["step-000001", "step-000002"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000003", "step-000004"]
    assert prune_checkpoints(run, keep=0) == []  # 0 keeps everything


def test_resolve_resume_accepts_latest_run_or_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UserError, match="no complete checkpoint"):
        resolve_resume(run, "latest")
    c = _ckpt(run, 7)
    assert resolve_resume(tmp_path / "new", run) == c
    assert resolve_resume(tmp_path / "new", c) == c
    with pytest.raises(UserError, match="accepted: 'latest', a run folder"):
        resolve_resume(run, tmp_path / "nothing")


def test_existing_run_problem_names_the_way_out(tmp_path):
    run = tmp_path / "run"
    assert existing_run_problem(run) is None
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    assert existing_run_problem(run) is None  # a run that never reached a checkpoint may be started again
    _ckpt(run, 3)
    msg = existing_run_problem(run)
    assert "--resume latest" in msg and "new --out" in msg
