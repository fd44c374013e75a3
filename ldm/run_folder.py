"""The run folder of ``ldm train`` and ``ldm train-vae``: one class, :class:`RunFolder`, owns its layout.

Layout of ``runs/<name>/`` (everything a reader needs is written atomically, so a reader never sees half a file)::

    config.yaml                 resolved config, written before the first step
    classes.json                class names in label order
    inputs.json                 what the run was trained on, written before the first step: latent cache path and
                                fingerprint, autoencoder source and hash, scaling factor, precision, device, versions
    metrics.jsonl               one JSON line every ``training.log_every`` steps
    loss.png                    raw and smoothed training loss, redrawn at each log
    samples/step-XXXXXX.png     fixed-noise sample grid, one row per class (EMA weights)
    checkpoints/step-XXXXXX/    full training state (see ``ldm.training.trainer``); ``.tmp-*`` folders are incomplete
    checkpoints/step-XXXXXX/state.json   written last: its presence marks the checkpoint complete
    checkpoints/latest          text file: the folder name of the newest complete checkpoint
    status.json                 state (running|finished|stopped|failed), step, max_steps, pid, message, updated, eta
    train.log                   the human log
    pipeline/                   the exported diffusers pipeline (EMA weights), refreshed at each checkpoint
    eval.json, eval.md          ``ldm eval`` results (also written into a bare pipeline folder it evaluates)
    memorisation.png            ``ldm eval``: generated images beside their nearest training images
    eval.png                    the quick-evaluation curves of ``training.eval_every``

An autoencoder run (``ldm train-vae``) has ``config.yaml``, ``metrics.jsonl``, ``recon/step-XXXXXX.png``, ``vae/``
(the trained autoencoder) and ``eval.json``.

Nothing outside this module spells these names: the trainer writes through a :class:`RunFolder`, and the app and the
other commands read through one (:meth:`RunFolder.read_status`, :meth:`RunFolder.read_metrics`,
:meth:`RunFolder.latest_checkpoint`) to watch a run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ldm.errors import UserError
from ldm.utils import atomic_write_bytes, atomic_write_json, atomic_write_text, recorded_path, resolve_recorded

# keys whose values are local paths in inputs.json and checkpoint state files: written relative to the run folder
# inside a workspace (:func:`ldm.utils.recorded_path`), read back absolute, so a moved workspace keeps its runs
PATH_KEYS = frozenset({"path", "data_dir", "source", "folder", "latents"})


def portable_paths(obj: Any, base: Path, writing: bool) -> Any:
    """``obj`` with the path values under :data:`PATH_KEYS` (at any depth) recorded for a file in ``base``
    (``writing``) or resolved back to absolute paths (reading); a hub id or any other value stays as it is."""
    if isinstance(obj, list):
        return [portable_paths(v, base, writing) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        if k in PATH_KEYS and isinstance(v, str):
            out[k] = (recorded_path(v, base) if Path(v).is_absolute() else v) if writing else resolve_recorded(v, base)
        else:
            out[k] = portable_paths(v, base, writing)
    return out


STATES = ("running", "finished", "stopped", "failed")
_STEP_DIR = re.compile(r"^step-(\d+)$")
_MODEL_INDEX = "model_index.json"  # diffusers' marker of a pipeline folder
_MODEL_CONFIG = "config.json"  # diffusers' marker of a model folder


def step_name(step: int) -> str:
    """``1234 -> "step-001234"`` (the name of checkpoints and sample grids)."""
    return f"step-{step:06d}"


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
# run folder


class RunFolder:
    """The layout of one run folder (see the module docstring): every path in it, and its readers and writers.

    ``RunFolder("runs/demo").status_path``, ``.read_metrics()``, ``.latest_checkpoint()``, ... Creating one touches
    nothing on disk; the folder may not exist yet.
    """

    # file and folder names, relative to the run folder
    CONFIG = "config.yaml"
    CLASSES = "classes.json"
    INPUTS = "inputs.json"
    METRICS = "metrics.jsonl"
    LOSS_PLOT = "loss.png"
    SAMPLES = "samples"
    CHECKPOINTS = "checkpoints"
    LATEST = "latest"  # inside CHECKPOINTS
    CHECKPOINT_STATE = "state.json"  # inside a checkpoint, written last
    STATUS = "status.json"
    LOG = "train.log"
    PIPELINE = "pipeline"
    EVAL = "eval.json"
    EVAL_REPORT = "eval.md"
    EVAL_PLOT = "eval.png"
    MEMORISATION_PLOT = "memorisation.png"
    VAE = "vae"  # autoencoder run: the trained autoencoder
    RECON = "recon"  # autoencoder run: reconstruction grids
    # files whose presence marks a folder as a run folder (the app's discovery never reads it as a class folder)
    MARKERS = (STATUS, CONFIG, METRICS)

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # -- paths --------------------------------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def classes_path(self) -> Path:
        return self.path / self.CLASSES

    @property
    def inputs_path(self) -> Path:
        return self.path / self.INPUTS

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def loss_plot_path(self) -> Path:
        return self.path / self.LOSS_PLOT

    @property
    def samples_dir(self) -> Path:
        return self.path / self.SAMPLES

    def sample_grid_path(self, step: int) -> Path:
        """``samples/step-XXXXXX.png``."""
        return self.samples_dir / f"{step_name(step)}.png"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    def checkpoint_dir(self, step: int | str) -> Path:
        """``checkpoints/step-XXXXXX`` for a step number, or ``checkpoints/<name>`` for a folder name."""
        return self.checkpoints_dir / (step_name(step) if isinstance(step, int) else str(step))

    @property
    def latest_path(self) -> Path:
        """``checkpoints/latest``, the pointer to the newest complete checkpoint."""
        return self.checkpoints_dir / self.LATEST

    @property
    def status_path(self) -> Path:
        return self.path / self.STATUS

    @property
    def log_path(self) -> Path:
        return self.path / self.LOG

    @property
    def pipeline_dir(self) -> Path:
        return self.path / self.PIPELINE

    @property
    def eval_path(self) -> Path:
        return self.path / self.EVAL

    @property
    def eval_report_path(self) -> Path:
        return self.path / self.EVAL_REPORT

    @property
    def eval_plot_path(self) -> Path:
        return self.path / self.EVAL_PLOT

    @property
    def memorisation_plot_path(self) -> Path:
        return self.path / self.MEMORISATION_PLOT

    @property
    def vae_dir(self) -> Path:
        return self.path / self.VAE

    @property
    def recon_dir(self) -> Path:
        return self.path / self.RECON

    def recon_grid_path(self, step: int) -> Path:
        """``recon/step-XXXXXX.png``."""
        return self.recon_dir / f"{step_name(step)}.png"

    # -- what the folder holds ----------------------------------------------------------------------------------------

    @property
    def is_started(self) -> bool:
        """Whether anything of a run was written here (status, checkpoints or config): its name is taken."""
        return self.status_path.exists() or self.checkpoints_dir.exists() or self.config_path.exists()

    @property
    def is_run(self) -> bool:
        """Whether the folder is a run of ``ldm train`` or ``ldm train-vae`` (class names, status or checkpoints)."""
        return self.classes_path.exists() or self.status_path.exists() or self.checkpoints_dir.is_dir()

    @property
    def has_pipeline(self) -> bool:
        """Whether ``pipeline/`` holds an exported diffusers pipeline."""
        return (self.pipeline_dir / _MODEL_INDEX).is_file()

    @property
    def has_latest(self) -> bool:
        """Whether the ``checkpoints/latest`` pointer exists (a checkpoint was written: resumable)."""
        return self.latest_path.is_file()

    @property
    def has_vae(self) -> bool:
        """Whether ``vae/`` holds a trained autoencoder (an ``ldm train-vae`` run that finished)."""
        return (self.vae_dir / _MODEL_CONFIG).is_file()

    def sample_grids(self) -> list[Path]:
        """Sample grids (``samples/step-*.png``), oldest first."""
        return sorted(self.samples_dir.glob("step-*.png")) if self.samples_dir.is_dir() else []

    def recon_grids(self) -> list[Path]:
        """Reconstruction grids of an autoencoder run (``recon/step-*.png``), oldest first."""
        return sorted(self.recon_dir.glob("step-*.png")) if self.recon_dir.is_dir() else []

    @staticmethod
    def pipeline_of(path: str | Path) -> Path | None:
        """The pipeline folder of ``path``: itself if it is one (``model_index.json``), else its ``pipeline/`` if that
        is one, else None."""
        p = Path(path)
        if (p / _MODEL_INDEX).is_file():
            return p
        pipe = RunFolder(p).pipeline_dir
        return pipe if (pipe / _MODEL_INDEX).is_file() else None

    @staticmethod
    def find_pipeline(path: str | Path) -> Path:
        """Like :meth:`pipeline_of`, but a UserError that says what is missing instead of None."""
        p = Path(path).expanduser()
        if not p.exists():
            raise UserError(
                f"model folder not found: {p} (give a run folder runs/<name> or an exported pipeline folder)"
            )
        found = RunFolder.pipeline_of(p)
        if found is not None:
            return found
        run = RunFolder(p)
        if p.is_dir() and run.checkpoints_dir.is_dir():
            raise UserError(
                f"{p} is a run folder without an exported pipeline yet (no {run.pipeline_dir / _MODEL_INDEX}); "
                f"wait for the first checkpoint, or run `ldm export --run {p} --out DIR`"
            )
        raise UserError(
            f"{p} is neither a pipeline folder (with {_MODEL_INDEX}) nor a run folder "
            f"(with {RunFolder.PIPELINE}/{_MODEL_INDEX})"
        )

    @staticmethod
    def display_name(pipeline_or_run: str | Path) -> str:
        """The name of the run a folder belongs to: the run folder's name for its ``pipeline/``, else the folder's."""
        p = Path(pipeline_or_run)
        return p.parent.name if p.name == RunFolder.PIPELINE else p.name

    # -- config, classes, inputs --------------------------------------------------------------------------------------

    def write_config(self, cfg: Any) -> None:
        """Write the resolved :class:`ldm.config.Config` to ``config.yaml``."""
        from ldm.config import save_config

        save_config(cfg, self.config_path)

    def read_config(self) -> Any:
        """The run's :class:`ldm.config.Config` (ConfigError when ``config.yaml`` is invalid or missing)."""
        from ldm.config import load_config

        return load_config(self.config_path)

    def write_classes(self, classes: list[str]) -> None:
        atomic_write_json(self.classes_path, list(classes))

    def read_classes(self) -> list[str] | None:
        """Class names in label order, or None without ``classes.json``."""
        return _read_json(self.classes_path)

    def write_inputs(self, inputs: dict[str, Any]) -> None:
        """Record what the run is trained on (``inputs.json``), before the first step."""
        atomic_write_json(self.inputs_path, portable_paths(inputs, self.path, writing=True))

    def read_inputs(self) -> dict[str, Any] | None:
        """The recorded inputs, or None (a run from before they were recorded, or not started)."""
        found = _read_json(self.inputs_path)
        return portable_paths(found, self.path, writing=False) if isinstance(found, dict) else None

    # -- status, metrics, log -----------------------------------------------------------------------------------------

    def write_status(
        self,
        state: str,
        *,
        step: int,
        max_steps: int | None = None,
        message: str = "",
        eta_seconds: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Write ``status.json`` atomically and return what was written.

        ``state`` is one of running, finished, stopped, failed; ``eta_seconds`` is the estimated time to the end of
        the run (None when unknown); ``extra`` keys (e.g. ``epoch``, ``loss``) are stored as given.
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
        atomic_write_json(self.status_path, status)
        return status

    def read_status(self) -> dict[str, Any] | None:
        """``status.json`` as a dict, or None if there is none (yet)."""
        found = _read_json(self.status_path)
        return found if isinstance(found, dict) else None

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (flushed and fsynced, so a watcher sees whole lines)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """All complete lines of ``metrics.jsonl`` as dicts (a half-written last line is skipped)."""
        try:
            text = self.metrics_path.read_text(encoding="utf-8")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                out.append(row)
        return out

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metric lines with ``step > after_step`` (on resume, those steps are trained again)."""
        records = [r for r in self.read_metrics() if int(r.get("step", 0)) <= after_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records))

    def log(self, echo: Any = None) -> RunLog:
        """A :class:`RunLog` appending to ``train.log``."""
        return RunLog(self.log_path, echo=echo)

    # -- checkpoints --------------------------------------------------------------------------------------------------

    @classmethod
    def checkpoint_state_path(cls, ckpt: str | Path) -> Path:
        """``<ckpt>/state.json``: written last into a checkpoint folder; its presence marks the checkpoint complete."""
        return Path(ckpt) / cls.CHECKPOINT_STATE

    @classmethod
    def is_checkpoint(cls, path: str | Path) -> bool:
        """Whether ``path`` is a complete checkpoint folder."""
        return cls.checkpoint_state_path(path).is_file()

    @classmethod
    def read_checkpoint_state(cls, ckpt: str | Path) -> dict[str, Any]:
        """The ``state.json`` of a checkpoint (OSError / ValueError when it is missing or broken), its recorded paths
        absolute (see :func:`portable_paths`; they are relative to the checkpoint's run folder)."""
        state = json.loads(cls.checkpoint_state_path(ckpt).read_text())
        return portable_paths(state, cls.of_checkpoint(ckpt).path, writing=False) if isinstance(state, dict) else state

    @classmethod
    def write_checkpoint_state(cls, ckpt: str | Path, run: str | Path, state: dict[str, Any]) -> None:
        """Write a checkpoint's ``state.json`` (its presence marks the checkpoint complete: write it last); ``run``
        is the run folder the checkpoint will live in (its recorded paths are relative to it)."""
        atomic_write_json(cls.checkpoint_state_path(ckpt), portable_paths(state, Path(run), writing=True))

    @staticmethod
    def file_sizes(folder: str | Path) -> dict[str, int]:
        """``{relative path: size in bytes}`` of every file under ``folder``: recorded in a checkpoint's state.json,
        so that a file damaged later (truncated, emptied) is noticed before it is loaded."""
        folder = Path(folder)
        return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}

    @classmethod
    def checkpoint_damage(cls, ckpt: str | Path) -> str | None:
        """Why the checkpoint ``ckpt`` cannot be loaded (state.json unreadable, a recorded file missing or of another
        size), or None when it is intact. Checkpoints from before sizes were recorded are taken as intact."""
        try:
            state = cls.read_checkpoint_state(ckpt)
        except (OSError, ValueError) as e:
            return f"its {cls.CHECKPOINT_STATE} cannot be read ({e})"
        for rel, size in (state.get("files") or {}).items():
            p = Path(ckpt) / rel
            if not p.is_file():
                return f"{rel} is missing"
            if p.stat().st_size != size:
                return f"{rel} has {p.stat().st_size} bytes, {size} were written"
        return None

    @classmethod
    def checkpoint_latents(cls, ckpt: str | Path) -> Path | None:
        """The latent cache folder a checkpoint was trained on (recorded in its state), or None if it names none."""
        try:
            recorded = cls.read_checkpoint_state(ckpt).get("latents")
        except (OSError, ValueError, AttributeError):
            return None
        return Path(recorded) if isinstance(recorded, str) and recorded else None

    @classmethod
    def of_checkpoint(cls, ckpt: str | Path) -> RunFolder:
        """The run folder a checkpoint folder ``<run>/checkpoints/step-XXXXXX`` belongs to."""
        return cls(Path(ckpt).parent.parent)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first; incomplete ones (``.tmp-*``, no state.json) are ignored."""
        d = self.checkpoints_dir
        if not d.is_dir():
            return []
        found = []
        for p in d.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir() and self.is_checkpoint(p):
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint: the one named by ``checkpoints/latest`` if it is complete, else the
        highest complete ``step-*`` folder (e.g. after a kill between writing a checkpoint and the pointer)."""
        ckpts = self.checkpoints()
        if self.latest_path.is_file():
            named = self.checkpoints_dir / self.latest_path.read_text().strip()
            if named in ckpts and named == ckpts[-1]:
                return named
        return ckpts[-1] if ckpts else None

    def mark_latest(self, ckpt: Path) -> None:
        """Point ``checkpoints/latest`` at ``ckpt``."""
        atomic_write_text(self.latest_path, Path(ckpt).name + "\n")

    def prune_checkpoints(self, keep: int) -> list[Path]:
        """Delete all but the newest ``keep`` complete checkpoints (and stale ``.tmp-*``/``.old-*`` folders).

        ``keep <= 0`` keeps everything. Returns the deleted folders.
        """
        removed = []
        ckpts = self.checkpoints()
        if keep > 0:
            for p in ckpts[:-keep]:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        d = self.checkpoints_dir
        if d.is_dir():
            for p in d.iterdir():
                if p.is_dir() and (p.name.startswith(".tmp-") or p.name.startswith(".old-")):
                    shutil.rmtree(p, ignore_errors=True)
        return removed

    def _newest_intact(self, newest: Path) -> Path:
        """``newest`` if intact, else the newest intact older checkpoint, saying on stderr which were skipped and
        why; UserError when none is intact."""
        import sys

        for ckpt in [newest, *reversed([c for c in self.checkpoints() if c != newest])]:
            damage = self.checkpoint_damage(ckpt)
            if damage is None:
                return ckpt
            print(f"checkpoint {ckpt} is damaged ({damage}); trying the one before it", file=sys.stderr)
        raise UserError(f"--resume latest: every checkpoint in {self.checkpoints_dir} is damaged (see above)")

    def resolve_resume(self, resume: str | Path) -> Path:
        """Checkpoint folder meant by ``--resume``: ``"latest"`` (this run's newest complete checkpoint), a run
        folder (its newest complete checkpoint) or a checkpoint folder. Raises UserError naming what was looked for."""
        if str(resume) == self.LATEST:
            ckpt = self.latest_checkpoint()
            if ckpt is None:
                raise UserError(
                    f"--resume latest: no complete checkpoint in {self.checkpoints_dir}; "
                    "start a new run without --resume (incomplete .tmp-* folders are ignored)"
                )
            return self._newest_intact(ckpt)
        p = Path(resume)
        if self.is_checkpoint(p):
            damage = self.checkpoint_damage(p)
            if damage:
                raise UserError(f"--resume {p}: the checkpoint is damaged: {damage}; give an older one or 'latest'")
            return p
        other = RunFolder(p)
        if p.is_dir() and other.checkpoints_dir.is_dir():
            ckpt = other.latest_checkpoint()
            if ckpt is not None:
                return ckpt
        raise UserError(
            f"--resume {resume}: not a checkpoint folder (with {self.CHECKPOINT_STATE}) nor a run folder with a "
            f"complete checkpoint; accepted: 'latest', a run folder, or runs/NAME/{self.CHECKPOINTS}/step-XXXXXX"
        )

    def existing_run_problem(self) -> str | None:
        """A message when the folder already holds a trained run (complete checkpoints, a trained autoencoder or an
        exported pipeline), else None."""
        ckpts = self.checkpoints()
        if not ckpts:
            for what, there in (("a trained autoencoder", self.has_vae), ("an exported pipeline", self.has_pipeline)):
                if there:
                    return f"{self.path} already holds {what} and no checkpoint to continue; choose a new --out folder"
            return None
        return (
            f"{self.path} already holds a run with {len(ckpts)} checkpoint(s) (newest {ckpts[-1].name}); "
            f"continue it with --resume latest, or choose a new --out folder"
        )


def _read_json(path: Path) -> Any:
    """JSON content of ``path``, or None when it is missing or half-written."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
