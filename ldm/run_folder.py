"""The run folder of ``ldm train``: paths, status, metrics, loss plot, sample grids and checkpoint bookkeeping.

Layout of ``runs/<name>/`` (everything a reader needs is written atomically, so a reader never sees half a file)::

    config.yaml                 resolved config, written before the first step
    classes.json                class names in label order
    metrics.jsonl               one JSON line every ``training.log_every`` steps
    loss.png                    raw and smoothed training loss, redrawn at each log
    samples/step-XXXXXX.png     fixed-noise sample grid, one row per class (EMA weights)
    checkpoints/step-XXXXXX/    full training state (see ``ldm.training.trainer``); ``.tmp-*`` folders are incomplete
    checkpoints/latest          text file: the folder name of the newest complete checkpoint
    status.json                 state (running|finished|stopped|failed), step, max_steps, pid, message, updated, eta
    train.log                   the human log
    pipeline/                   the exported diffusers pipeline (EMA weights), refreshed at each checkpoint

The functions here only read and write files; the training loop lives in :mod:`ldm.training.trainer`. The app and other
commands use the readers (:func:`read_status`, :func:`read_metrics`, :func:`latest_checkpoint`) to watch a run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ldm.errors import UserError
from ldm.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

STATES = ("running", "finished", "stopped", "failed")
CHECKPOINT_STATE_FILE = "state.json"  # written last inside a checkpoint; its presence marks it complete
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_name(step: int) -> str:
    """``1234 -> "step-001234"`` (the name of checkpoints and sample grids)."""
    return f"step-{step:06d}"


# ---------------------------------------------------------------------------------------------------------------------
# status and metrics


def write_status(
    run: str | Path,
    state: str,
    *,
    step: int,
    max_steps: int | None = None,
    message: str = "",
    eta_seconds: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write ``run/status.json`` atomically and return what was written.

    ``state`` is one of running, finished, stopped, failed; ``eta_seconds`` is the estimated time to the end of the
    run (None when unknown); ``extra`` keys (e.g. ``epoch``, ``loss``) are stored as given.
    """
    if state not in STATES:
        raise ValueError(f"status state must be one of {', '.join(STATES)}, got {state!r}")
    status = {
        "state": state,
        "step": int(step),
        "max_steps": None if max_steps is None else int(max_steps),
        "pid": os.getpid(),
        "message": message,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "updated_unix": time.time(),
        "eta_seconds": None if eta_seconds is None else round(float(eta_seconds), 1),
        **extra,
    }
    atomic_write_json(Path(run) / "status.json", status)
    return status


def read_status(run: str | Path) -> dict[str, Any] | None:
    """The run's ``status.json`` as a dict, or None if there is none (yet)."""
    p = Path(run) / "status.json"
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def append_metrics(run: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``run/metrics.jsonl`` (flushed and fsynced, so a watcher sees whole lines)."""
    p = Path(run) / "metrics.jsonl"
    with open(p, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """All complete lines of ``run/metrics.jsonl`` (a half-written last line is skipped)."""
    p = Path(run) / "metrics.jsonl"
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(run: str | Path, after_step: int) -> None:
    """Drop metric lines with ``step > after_step`` (on resume, those steps are trained again)."""
    records = [r for r in read_metrics(run) if int(r.get("step", 0)) <= after_step]
    atomic_write_text(Path(run) / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))


class RunLog:
    """Appends timestamped lines to ``run/train.log`` and echoes them through ``echo`` (e.g. ``tqdm.write``)."""

    def __init__(self, path: str | Path, echo: Any = None):
        self.path = Path(path)
        self.echo = echo

    def __call__(self, msg: str, echo: bool = True) -> None:
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as f:
            for line in msg.splitlines() or [""]:
                f.write(f"{stamp} {line}\n")
        if echo and self.echo is not None:
            self.echo(msg)


# ---------------------------------------------------------------------------------------------------------------------
# pictures (drawn by ldm.figures)


def save_png(image: Any, path: str | Path) -> None:
    """Save a PIL image as PNG atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints


def checkpoints_dir(run: str | Path) -> Path:
    return Path(run) / "checkpoints"


def list_checkpoints(run: str | Path) -> list[Path]:
    """Complete checkpoints of ``run``, oldest first; incomplete ones (``.tmp-*``, no state.json) are ignored."""
    d = checkpoints_dir(run)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / CHECKPOINT_STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run: str | Path) -> Path | None:
    """The newest complete checkpoint of ``run``: the one named by ``checkpoints/latest`` if it is complete,
    else the highest complete ``step-*`` folder (e.g. after a kill between writing a checkpoint and the pointer)."""
    ckpts = list_checkpoints(run)
    pointer = checkpoints_dir(run) / "latest"
    if pointer.is_file():
        named = checkpoints_dir(run) / pointer.read_text().strip()
        if named in ckpts and named == ckpts[-1]:
            return named
    return ckpts[-1] if ckpts else None


def mark_latest(run: str | Path, ckpt: Path) -> None:
    atomic_write_text(checkpoints_dir(run) / "latest", ckpt.name + "\n")


def prune_checkpoints(run: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (and stale ``.tmp-*``/``.old-*`` folders).

    ``keep <= 0`` keeps everything. Returns the deleted folders.
    """
    removed = []
    ckpts = list_checkpoints(run)
    if keep > 0:
        for p in ckpts[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    d = checkpoints_dir(run)
    if d.is_dir():
        for p in d.iterdir():
            if p.is_dir() and (p.name.startswith(".tmp-") or p.name.startswith(".old-")):
                shutil.rmtree(p, ignore_errors=True)
    return removed


def resolve_resume(out: str | Path, resume: str | Path) -> Path:
    """Checkpoint folder meant by ``--resume``: ``"latest"`` (newest complete checkpoint of ``out``), a run folder
    (its newest complete checkpoint) or a checkpoint folder. Raises UserError naming what was looked for."""
    if str(resume) == "latest":
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise UserError(
                f"--resume latest: no complete checkpoint in {checkpoints_dir(out)}; "
                "start a new run without --resume (incomplete .tmp-* folders are ignored)"
            )
        return ckpt
    p = Path(resume)
    if (p / CHECKPOINT_STATE_FILE).is_file():
        return p
    if p.is_dir() and checkpoints_dir(p).is_dir():
        ckpt = latest_checkpoint(p)
        if ckpt is not None:
            return ckpt
    raise UserError(
        f"--resume {resume}: not a checkpoint folder (with {CHECKPOINT_STATE_FILE}) nor a run folder with a complete "
        "checkpoint; accepted: 'latest', a run folder, or runs/NAME/checkpoints/step-XXXXXX"
    )


def checkpoint_latents(ckpt: str | Path) -> Path | None:
    """The latent cache folder a checkpoint was trained on (recorded in its state.json), or None if it names none."""
    try:
        recorded = json.loads((Path(ckpt) / CHECKPOINT_STATE_FILE).read_text()).get("latents")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(recorded) if isinstance(recorded, str) and recorded else None


def existing_run_problem(out: str | Path) -> str | None:
    """A message when ``out`` already holds a trained run (complete checkpoints), else None."""
    ckpts = list_checkpoints(out)
    if not ckpts:
        return None
    return (
        f"{out} already holds a run with {len(ckpts)} checkpoint(s) (newest {ckpts[-1].name}); "
        f"continue it with --resume latest, or choose a new --out folder"
    )


def iter_sample_grids(run: str | Path) -> Iterable[Path]:
    """Sample grids of ``run``, oldest first."""
    d = Path(run) / "samples"
    return sorted(d.glob("step-*.png")) if d.is_dir() else []
