"""The app's workspace: one root folder, path safety, and discovery of datasets, latent caches, runs and pipelines.

    ws = Workspace("~/faces-project")
    data = ws.resolve("data/att-faces", what="data folder")   # UserError when it points outside the root
    for run in ws.runs(): print(run.name, run.state, run.step, run.last_loss)

Every folder a user types into the app goes through :meth:`Workspace.resolve`: relative paths are taken from the
root, ``~``, ``..`` and symlinks are resolved first, and anything that does not end up inside the root is refused
with a message. Policy on symlinks: a link inside the workspace that points outside it is refused like any other
outside path (the workspace is the one folder the app may read and write, and a copy of it holds its data).
Discovery walks the root a few levels deep, skipping hidden folders and virtual environments, and never descends
into the folders it recognises (a latent cache holds thousands of files).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldm.data.manifest import MANIFEST
from ldm.errors import UserError
from ldm.run_folder import RunFolder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp")
# folders discovery never enters: environments, caches, VCS metadata
SKIP_DIRS = {"node_modules", "__pycache__", "site-packages", "test-artifacts"}
# files that mark a folder as something other than a class folder of images
MARKERS = (*RunFolder.MARKERS, "config.json", MANIFEST, "model_index.json", "sweep.json")
MAX_DEPTH = 4  # levels below the root searched for datasets, caches, runs and pipelines
APP_DIR = ".ldm-app"  # the app's own state inside the workspace (job file, generated images, settings)


@dataclass
class RunInfo:
    """What the app shows about one run folder (``ldm train --out`` or ``ldm train-vae --out``)."""

    path: Path
    name: str  # path relative to the workspace root
    kind: str  # "diffusion" or "autoencoder" (status.json's kind)
    state: str  # running | finished | stopped | failed | interrupted (running but its process is gone) | new
    step: int
    max_steps: int
    last_loss: float | None
    message: str
    newest_sample: Path | None  # samples/step-XXXXXX.png with the highest step (autoencoder: recon/)
    loss_plot: Path | None  # loss.png
    has_pipeline: bool  # pipeline/ exported (at the end of training)
    has_checkpoint: bool  # checkpoints/latest present (resumable)
    updated: float  # mtime of the newest of status.json / metrics.jsonl, seconds since the epoch


@dataclass
class Discovery:
    """Everything found in one walk of the workspace, paths absolute."""

    datasets: list[Path] = field(default_factory=list)  # folders of class subfolders of images
    caches: list[Path] = field(default_factory=list)  # latent caches (with a manifest)
    runs: list[Path] = field(default_factory=list)  # diffusion run folders
    vae_runs: list[Path] = field(default_factory=list)  # ldm train-vae run folders (vae/config.json)
    autoencoders: list[Path] = field(default_factory=list)  # standalone diffusers autoencoder folders
    pipelines: list[Path] = field(default_factory=list)  # exported pipeline folders outside run folders
    text2image: list[Path] = field(default_factory=list)  # other diffusers pipelines (for the Text to image tab)


def read_json(path: Path) -> Any:
    """JSON content of ``path``, or None when it is missing or half-written (the writer replaces it atomically)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = 30, max_bytes: int = 64_000) -> str:
    """Last ``lines`` lines of a text file ('' when missing). tqdm's carriage returns keep only the latest bar."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    out = [ln.rsplit("\r", 1)[-1] if "\r" in ln.rstrip("\r") else ln.rstrip("\r") for ln in data.split("\n")]
    out = [ln for ln in out if ln.strip()]
    return "\n".join(out[-lines:])


def pid_alive(pid: Any) -> bool:
    """True when a process with this id exists (zombies count as gone)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child not yet reaped by its parent still answers kill(0)
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_dataset(path: Path) -> bool:
    """A folder with at least one subfolder holding an image file (ImageFolder layout); checks a few entries only."""
    try:
        subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return False
    has_images = False
    for sub in subdirs[:8]:
        if any((sub / m).exists() for m in MARKERS):  # e.g. runs/: its subfolders hold loss.png but are runs
            return False
        if has_images:
            continue
        try:
            for i, f in enumerate(sub.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    has_images = True
                    break
                if i > 20:
                    break
        except OSError:
            continue
    return has_images


def _config_class(path: Path) -> str:
    cfg = read_json(path / "config.json")
    return cfg.get("_class_name", "") if isinstance(cfg, dict) else ""


class Workspace:
    """A root folder that holds the user's datasets, latent caches and runs; the app never leaves it."""

    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        if root.exists() and not root.is_dir():
            raise UserError(f"workspace {root} is a file, not a folder")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    @property
    def app_dir(self) -> Path:
        """``<root>/.ldm-app``: job file, generated images, app settings."""
        d = self.root / APP_DIR
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ---------------------------------------------------------------------------------------------------------------
    # path safety

    def contains(self, path: Path) -> bool:
        """True when the resolved ``path`` is the root or lies below it."""
        r = Path(path).resolve()
        return r == self.root or self.root in r.parents

    def resolve(
        self, text: str | Path | None, *, what: str = "folder", must_exist: bool = True, kind: str = "dir"
    ) -> Path:
        """Absolute, symlink-free path of ``text`` (relative = from the root) or UserError when it leaves the root.

        ``kind`` is "dir", "file" or "any"; ``must_exist=False`` allows a path to be created (an output folder).
        """
        raw = str(text or "").strip()
        if not raw:
            raise UserError(f"{what}: no path given; type a path inside the workspace {self.root}")
        p = Path(raw).expanduser()
        if not p.is_absolute():
            p = self.root / p
        # resolve() follows symlinks of every existing component and folds '..', so a link or '../' that
        # points out of the workspace is caught here, not after the fact
        r = p.resolve()
        if not self.contains(r):
            link = next((q for q in (p, *p.parents) if q.is_symlink() and q.is_relative_to(self.root)), None)
            why = f" (through the symlink {link.relative_to(self.root)})" if link is not None else ""
            raise UserError(
                f"{what} {raw!r} resolves to {r}{why}, which is outside the workspace {self.root}; only folders "
                "inside the workspace are accepted, and a symlink inside it that points outside is refused too: "
                "copy the folder into the workspace"
            )
        if must_exist and not r.exists():
            raise UserError(f"{what} {raw!r} does not exist (looked for {r})")
        if r.exists():
            if kind == "dir" and not r.is_dir():
                raise UserError(f"{what} {raw!r} is a file; a folder is expected")
            if kind == "file" and not r.is_file():
                raise UserError(f"{what} {raw!r} is a folder; a file is expected")
        return r

    def rel(self, path: Path | str) -> str:
        """``path`` relative to the root for display ('.' for the root itself)."""
        p = Path(path)
        try:
            s = str(p.resolve().relative_to(self.root))
        except ValueError:
            return str(p)
        return s or "."

    # ---------------------------------------------------------------------------------------------------------------
    # discovery

    def discover(self) -> Discovery:
        """Walk the root (``MAX_DEPTH`` levels, hidden folders and environments skipped) and classify folders."""
        found = Discovery()

        def walk(d: Path, depth: int) -> None:
            try:
                entries = sorted(p for p in d.iterdir() if p.is_dir())
            except OSError:
                return
            names = {p.name for p in d.iterdir()} if depth else set()
            if depth:
                if "model_index.json" in names:
                    index = read_json(d / "model_index.json") or {}
                    ours = index.get("_class_name") == "ClassConditionalLatentDiffusionPipeline"
                    (found.pipelines if ours else found.text2image).append(d)
                    return
                if MANIFEST in names:
                    found.caches.append(d)
                    return
                if RunFolder(d).has_vae:
                    found.vae_runs.append(d)
                    if RunFolder(d).status_path.exists():  # trained by `ldm train-vae`: also a run of the Runs tab
                        found.runs.append(d)
                    return
                if RunFolder(d).is_run:
                    found.runs.append(d)
                    return
                if "config.json" in names and _config_class(d).startswith("Autoencoder"):
                    found.autoencoders.append(d)
                    return
                if "pyvenv.cfg" in names:  # a virtual environment
                    return
                if _is_dataset(d):
                    found.datasets.append(d)
                    return
            if depth >= MAX_DEPTH:
                return
            for sub in entries:
                if sub.name.startswith(".") or sub.name in SKIP_DIRS or sub.is_symlink():
                    continue
                walk(sub, depth + 1)

        walk(self.root, 0)
        return found

    def run_info(self, run: Path) -> RunInfo:
        """Status of one run folder from ``status.json``, ``metrics.jsonl``, ``samples/`` and ``checkpoints/``."""
        folder = RunFolder(run)
        run = folder.path
        status = folder.read_status() or {}
        state = str(status.get("state") or "new")
        if state == "running" and status.get("pid") is not None and not pid_alive(status.get("pid")):
            state = "interrupted"
        metrics = folder.read_metrics()
        last_loss = None
        for row in reversed(metrics):
            if isinstance(row.get("loss"), (int, float)):
                last_loss = float(row["loss"])
                break
        step = status.get("step")
        if not isinstance(step, int):
            step = int(metrics[-1].get("step", 0)) if metrics else 0
        kind = str(status.get("kind") or "diffusion")
        samples = folder.recon_grids() if kind == "autoencoder" else folder.sample_grids()
        mtimes = [p.stat().st_mtime for p in (folder.status_path, folder.metrics_path) if p.exists()]
        return RunInfo(
            path=run,
            name=self.rel(run),
            kind=kind,
            state=state,
            step=step,
            max_steps=int(status.get("max_steps") or 0),
            last_loss=last_loss,
            message=str(status.get("message") or ""),
            newest_sample=samples[-1] if samples else None,
            loss_plot=folder.loss_plot_path if folder.loss_plot_path.is_file() else None,
            has_pipeline=folder.has_pipeline,
            has_checkpoint=folder.has_latest,
            updated=max(mtimes) if mtimes else run.stat().st_mtime,
        )

    def runs(self, found: Discovery | None = None) -> list[RunInfo]:
        """Diffusion runs, newest first."""
        found = found or self.discover()
        infos = [self.run_info(r) for r in found.runs]
        return sorted(infos, key=lambda r: r.updated, reverse=True)

    def models(self, found: Discovery | None = None) -> list[tuple[str, str]]:
        """(label, absolute path) of everything the Inference tab can load, the default (first) being the best bet:
        finished runs with an exported pipeline, then other runs with one (running, stopped, ...), then runs with a
        checkpoint only, each newest first; then exported pipeline folders. The newest run is often a quick test
        still training, so it is not the default unless nothing finished."""
        found = found or self.discover()
        runs = [r for r in self.runs(found) if r.kind != "autoencoder" and (r.has_pipeline or r.has_checkpoint)]

        def tier(r: RunInfo) -> int:
            return 0 if r.has_pipeline and r.state == "finished" else 1 if r.has_pipeline else 2

        out = []
        for info in sorted(runs, key=tier):  # sorted is stable: newest first within a tier
            kind = "run" if info.has_pipeline else "run checkpoint"
            out.append((f"{info.name}  ({kind}, {info.state}, step {info.step})", str(info.path)))
        for p in found.pipelines:
            out.append((f"{self.rel(p)}  (exported pipeline)", str(p)))
        return out
