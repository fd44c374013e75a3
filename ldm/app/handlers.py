"""The app's handlers: plain methods of :class:`LdmApp`, each a thin call into the library, testable without a browser.

    app = LdmApp("~/faces-project")
    app.refresh_models(None)                       # model picker choices
    app.generate(model, "smiling", "", 4, "dpm++", 25, 3.0, "(none)", 0, False)

``ldm/app.py`` wires them to components. Every handler returns plain values or ``gr.update``-style component
objects; bad input never raises out of a handler: it becomes a message (``gr.Warning`` toast plus a message box).
"""

from __future__ import annotations

import html
import json
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import gradio as gr

from ldm.app.jobs import JobManager
from ldm.app.settings import (
    JobPlan,
    TrainSettings,
    load_settings,
    plan_job,
    plan_resume,
    plan_resume_run,
    save_settings,
)
from ldm.app.workspace import Workspace, read_json, tail
from ldm.config import ConfigError
from ldm.errors import UserError
from ldm.run_folder import RunFolder

NO_NEGATIVE = "(none)"
NO_MODEL_HELP = (
    "**No trained model in this workspace yet.** Train one in the **Training** tab (a few minutes on a laptop with "
    "the `tiny` preset), or run `make demo` in a terminal (the demo run lands in `runs/`), then press **Refresh**."
)


def _warn(message: str) -> str:
    """Show ``message`` as a toast and return it as markdown for the message box."""
    gr.Warning(message)
    return f"**Problem:** {message}"


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(float(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _open_image(path: Path | None) -> Any:
    """A PIL copy of an image file (or None); copies so the file is not held open while the trainer replaces it."""
    if path is None:
        return None
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.copy()
    except OSError:
        return None


def loss_frame(metrics: list[dict[str, Any]], smooth: float = 0.9) -> Any:
    """pandas DataFrame (step, loss, series) of the raw loss and its exponential moving average, for gr.LinePlot."""
    import pandas as pd

    rows = []
    ema = None
    for r in metrics:
        if not isinstance(r.get("loss"), (int, float)) or not isinstance(r.get("step"), (int, float)):
            continue
        loss = float(r["loss"])
        ema = loss if ema is None else smooth * ema + (1 - smooth) * loss
        rows.append({"step": int(r["step"]), "loss": loss, "series": "loss"})
        rows.append({"step": int(r["step"]), "loss": ema, "series": "smoothed"})
    frame = pd.DataFrame(rows, columns=["step", "loss", "series"])
    # explicit dtypes even when empty: the plot takes its axis types from the first frame it gets, and an empty
    # frame's object columns would make the loss axis categorical for good
    return frame.astype({"step": "int64", "loss": "float64", "series": "str"})


def _plot_value(frame: Any) -> Any:
    """None for an empty frame: the plot clears, and its first real frame then draws its lines (a plot that got an
    empty frame first draws axes but no lines in gradio 6.31)."""
    return frame if len(frame) else None


def progress_html(job: dict[str, Any] | None, status: dict[str, Any] | None, detail: str = "") -> str:
    """The Training tab's progress bar: phase, step / max steps, percentage, ETA and loss, as HTML.

    ``status`` is the run's status.json (train phase); ``detail`` is extra text for the other phases."""
    if not job:
        return '<div class="ldm-progress-text">No training job yet: fill in the settings and press Start.</div>'
    phases = job.get("phases") or []
    index = int(job.get("phase_index") or 0)
    phase = job.get("phase") or "?"
    state = job.get("state") or "?"
    run = html.escape(Path(str(job.get("run", ""))).name)
    status = status or {}
    step, max_steps = int(status.get("step") or 0), int(status.get("max_steps") or 0)
    if phase == "train" and max_steps > 0 and status:
        frac = min(1.0, step / max_steps)
        bar = f'<div class="ldm-bar" style="width:{100 * frac:.1f}%"></div>'
        pct = f"{100 * frac:.0f}%"
    else:
        frac = None
        bar = '<div class="ldm-bar ldm-bar-busy"></div>' if state == "running" else '<div class="ldm-bar"></div>'
        pct = ""
    parts = [f"<b>{run}</b>", f"phase {index + 1}/{max(1, len(phases))}: {html.escape(phase)}", html.escape(state)]
    if detail:
        parts.append(html.escape(detail))
    if phase == "train" and status:
        parts.append(f"step {step}" + (f" / {max_steps}" if max_steps else ""))
        if pct:
            parts.append(pct)
        if state == "running" and status.get("eta_seconds") is not None:
            parts.append(f"ETA {_fmt_seconds(status['eta_seconds'])}")
        if isinstance(status.get("loss"), (int, float)):
            parts.append(f"loss {status['loss']:.4f}")
    message = job.get("message") or ""
    if phase == "train" and status.get("message"):
        # the trainer's own words say more than the worker's ("failed at step 10: ...", "stopped: saving")
        message = status["message"] if state == "running" else f"{message}: {status['message']}"
    css_state = html.escape(state)
    return (
        f'<div class="ldm-progress ldm-state-{css_state}" data-step="{step}" data-state="{css_state}">{bar}</div>'
        f'<div class="ldm-progress-text">{" · ".join(parts)}</div>'
        f'<div class="ldm-progress-msg">{html.escape(str(message))}</div>'
    )


class PipelineCache:
    """Loaded pipelines by folder, newest use last; reloaded when the folder's weights change (a run re-exports)."""

    def __init__(self, device: str | None = None, dtype: Any = None, max_items: int = 2):
        self.device, self.dtype, self.max_items = device, dtype, max_items
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _stamp(folder: Path) -> float:
        files = [folder / "model_index.json", *folder.glob("unet/*.safetensors"), *folder.glob("vae/*.safetensors")]
        return max((p.stat().st_mtime for p in files if p.exists()), default=0.0)

    def get(self, path: Path) -> Any:
        from ldm.diffusion.pipeline import load_pipeline

        folder = RunFolder.find_pipeline(path).resolve()
        key, stamp = str(folder), self._stamp(folder)
        with self._lock:
            hit = self._items.get(key)
            if hit and hit[0] == stamp:
                self._items.move_to_end(key)
                return hit[1]
            pipe = load_pipeline(folder, self.device, self.dtype)
            self._items[key] = (stamp, pipe)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            return pipe


class LdmApp:
    """State of one app instance (workspace, job manager, pipeline cache) and its handlers."""

    def __init__(self, workspace: str | Path | Workspace, device: str | None = None):
        self.ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        self.jobs = JobManager(self.ws)
        self.pipelines = PipelineCache(device)
        self.outputs = self.ws.app_dir / "outputs"
        self.outputs.mkdir(parents=True, exist_ok=True)
        from ldm.app.text2image import Text2ImageState

        self.text2image = Text2ImageState(self.ws, self.outputs, device)

    # ------------------------------------------------------------------------------------------------------------
    # Inference tab

    def model_choices(self) -> list[tuple[str, str]]:
        return self.ws.models()

    def refresh_models(self, current: str | None) -> tuple[Any, str]:
        """Model picker choices (keeping ``current`` when still there) and the tab's notice."""
        choices = self.model_choices()
        values = [v for _, v in choices]
        value = current if current in values else (values[0] if values else None)
        notice = "" if choices else NO_MODEL_HELP
        return gr.Dropdown(choices=choices, value=value), notice

    def _model_path(self, model: str | None) -> Path:
        if not model:
            raise UserError("no model chosen: " + NO_MODEL_HELP.replace("**", ""))
        return self.ws.resolve(model, what="model folder")

    def class_names(self, model: str | None) -> list[str]:
        """Class names of a run or pipeline folder, read from its model_index.json (no weights loaded)."""
        folder = RunFolder.find_pipeline(self._model_path(model))
        index = read_json(folder / "model_index.json") or {}
        id2label = index.get("id2label")
        if not isinstance(id2label, dict):
            raise UserError(f"{self.ws.rel(folder)} has no class names (id2label) in model_index.json")
        return [str(id2label[str(i)]) for i in range(len(id2label))]

    def select_model(self, model: str | None) -> tuple[Any, Any, Any, str]:
        """Fill the class dropdown, negative class dropdown and class examples from the chosen model."""
        try:
            names = self.class_names(model) if model else []
        except UserError as e:
            return gr.Dropdown(choices=[], value=None), gr.Dropdown(), gr.Dataset(samples=[]), _warn(str(e))
        note = f"{len(names)} classes: {', '.join(names[:20])}{' …' if len(names) > 20 else ''}" if names else ""
        return (
            gr.Dropdown(choices=names, value=names[0] if names else None),
            gr.Dropdown(choices=[NO_NEGATIVE, *names], value=NO_NEGATIVE),
            gr.Dataset(samples=[[n] for n in names]),
            note,
        )

    def generate(
        self,
        model: str | None,
        class_choice: str | None,
        class_text: str | None,
        num_images: float,
        sampler: str,
        steps: float,
        guidance: float,
        negative: str | None,
        seed: float,
        randomize: bool,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[list[tuple[str, str]], Any, list[str], str, str, int]:
        """Generate images of one class: (gallery, snapshot figure, PNG files, parameters text, message, seed).

        The free-text class wins over the dropdown when filled. PNGs land in ``.ldm-app/outputs/<time>-<class>/``
        and carry their generation parameters as PNG text.
        """
        seed = int(seed or 0)
        if randomize:
            seed = random.randrange(0, 2**31 - 1)
        try:
            return self._generate(
                model, class_choice, class_text, num_images, sampler, steps, guidance, negative, seed, progress
            )
        except (UserError, ConfigError) as e:
            return [], None, [], "", _warn(str(e)), seed

    def _generate(
        self, model, class_choice, class_text, num_images, sampler, steps, guidance, negative, seed, progress
    ):
        import math

        import torch

        from ldm.config import SamplingConfig
        from ldm.diffusion.pipeline import resolve_class
        from ldm.diffusion.sample_files import sample_to_folder

        path = self._model_path(model)
        names = self.class_names(str(path))
        wanted = (class_text or "").strip() or (class_choice or "")
        class_id = resolve_class(wanted, names)  # UserError listing the closest names
        neg = None if not negative or negative == NO_NEGATIVE else names[resolve_class(negative, names)]
        n, steps = int(num_images or 1), int(steps or 25)
        if not 1 <= n <= 64:
            raise UserError(f"number of images must be 1..64, got {n}")
        if not 1 <= steps <= 1000:
            raise UserError(f"steps must be 1..1000, got {steps}")
        progress(0, desc="loading the model")
        pipe = self.pipelines.get(path)
        batch_size = 16
        total = math.ceil(n / batch_size) * steps
        done = [0]

        def on_step(i: int, t: Any, latents: Any) -> None:
            done[0] += 1
            progress(min(1.0, done[0] / total), desc=f"denoising step {min(done[0], total)}/{total}")

        folder = self.outputs / f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(names[class_id])}-seed{seed}"
        sampling = SamplingConfig(
            scheduler=sampler,
            num_inference_steps=steps,
            guidance_scale=float(guidance),
            num_images=n,
            seed=seed,
            negative_class=neg or "",
            batch_size=batch_size,
        )
        t0 = time.perf_counter()
        with torch.no_grad():
            # writes <class>-seed<S>.png carrying their parameters (ldm sample --from-image regenerates them)
            out = sample_to_folder(
                pipe, [class_id], folder, sampling, snapshots=True, model_path=path, callback=on_step
            )
        seconds = time.perf_counter() - t0
        progress(1.0, desc="done")
        files = [str(p) for p in out.images]
        seeds = [r["seed"] for r in out.records]
        first = out.records[0]
        params = {
            "model": self.ws.rel(path),
            "weights_hash": str(first["model"].get("weights_hash", ""))[:16],
            "class": names[class_id],
            "negative_class": neg,
            "scheduler": sampler,
            "num_inference_steps": steps,
            "guidance_scale": float(guidance),
            "seeds": seeds,
            "size": f"{first['width']}x{first['height']}",
            "seconds": round(seconds, 2),
            "folder": self.ws.rel(folder),
        }
        gallery = [(f, f"{names[class_id]} · seed {s}") for f, s in zip(files, seeds)]
        message = f"Done: {n} image(s) of **{names[class_id]}** in {seconds:.1f} s (seeds {seeds[0]}..{seeds[-1]})."
        snapshot = str(out.snapshots) if out.snapshots else None
        return gallery, snapshot, files, json.dumps(params, indent=2), message, seed

    # ------------------------------------------------------------------------------------------------------------
    # Training tab

    def discovered_folders(self) -> tuple[Any, Any, Any]:
        """Dropdown choices of the data folder, latent folder and autoencoder fields (free text stays allowed)."""
        from ldm.app.settings import TRAIN_HERE

        found = self.ws.discover()
        rel = self.ws.rel
        return (
            gr.Dropdown(choices=[rel(p) for p in found.datasets]),
            gr.Dropdown(choices=[rel(p) for p in found.caches]),
            gr.Dropdown(choices=[TRAIN_HERE] + [rel(p) for p in found.vae_runs + found.autoencoders]),
        )

    def start_training(self, *values: Any) -> tuple[str, Any]:
        """Start the job the settings describe; (message, timer update)."""
        try:
            s = TrainSettings.from_values(*values)
            plan = plan_job(self.ws, s)
            self.jobs.start(plan.run, plan.phases, plan.log, plan.info)
        except (UserError, ConfigError) as e:
            return _warn(str(e)), gr.Timer(active=self.jobs.is_running())
        names = " → ".join(p.name for p in plan.phases)
        gr.Info(f"training started: {names}")
        return f"Started **{self.ws.rel(plan.run)}**: {names}.", gr.Timer(active=True)

    def stop_training(self) -> str:
        try:
            job = self.jobs.stop()
        except UserError as e:
            return _warn(str(e))
        gr.Info("stopping: the trainer finishes its step and saves a checkpoint")
        return f"Stop requested for **{self.ws.rel(job['run'])}**: finishing the step, saving a checkpoint."

    def _start_resume(self, plan_for: Callable[[dict[str, Any] | None], JobPlan]) -> JobPlan:
        """Start ``plan_for(last job)`` unless a job is running (UserError then)."""
        job = self.jobs.current()
        if job and job.get("state") == "running":
            raise UserError(
                f"a job is running ({self.ws.rel(job['run'])}); Resume continues a stopped run: stop it or wait for it"
            )
        plan = plan_for(job)
        self.jobs.start(plan.run, plan.phases, plan.log, plan.info)
        return plan

    def resume_training(self) -> tuple[str, Any]:
        try:
            plan = self._start_resume(lambda job: plan_resume(self.ws, job))
        except (UserError, ConfigError) as e:
            return _warn(str(e)), gr.Timer(active=self.jobs.is_running())
        gr.Info("resuming from the newest checkpoint")
        return f"Resumed **{self.ws.rel(plan.run)}** from its newest checkpoint.", gr.Timer(active=True)

    def resume_run(self, run: str | None) -> tuple[str, Any, Any, str]:
        """Resume the run picked in the Runs tab and switch to the Training tab, which shows its progress:
        (training message, timer update, tabs update, runs-tab message)."""
        try:
            plan = self._start_resume(lambda _job: plan_resume_run(self.ws, run))
        except (UserError, ConfigError) as e:
            return gr.Markdown(), gr.Timer(active=self.jobs.is_running()), gr.Tabs(), _warn(str(e))
        gr.Info("resuming from the newest checkpoint")
        message = f"Resumed **{self.ws.rel(plan.run)}** from its newest checkpoint."
        return message, gr.Timer(active=True), gr.Tabs(selected="training"), message

    def poll(self) -> tuple[str, Any, Any, str, Any]:
        """Live view of the job: (progress HTML, loss frame, newest sample grid, log tail, timer update).

        The log tail is short and the box tall enough for it (wrapped), so the newest line is always in view."""
        job = self.jobs.current()
        if not job:
            return progress_html(None, None), None, None, "", gr.Timer(active=False)
        run = Path(job["run"])
        log = tail(Path(job.get("log") or run / "app-job.log"), lines=12)
        timer = gr.Timer(active=job.get("state") == "running")
        if job.get("phase") != "train":
            # before training: the autoencoder's own metrics and reconstruction grids show that work is moving
            phases = job.get("phases") or []
            index = int(job.get("phase_index") or 0)
            folder = RunFolder((phases[index] if index < len(phases) else {}).get("folder") or run)
            metrics = folder.read_metrics()
            last = metrics[-1] if metrics else {}
            detail = f"step {last['step']}, {last.get('seconds', 0):.0f} s" if "step" in last else ""
            recon = folder.recon_grids()
            return progress_html(job, None, detail), None, _open_image(recon[-1] if recon else None), log, timer
        status = RunFolder(run).read_status()
        info = self.ws.run_info(run) if run.exists() else None
        return (
            progress_html(job, status),
            _plot_value(loss_frame(RunFolder(run).read_metrics())),
            _open_image(info.newest_sample if info else None),
            log,
            timer,
        )

    def job_settings(self) -> list[Any]:
        """The settings of the last job (to refill the form after a reload), else the defaults."""
        job = self.jobs.current() or {}
        saved = (job.get("info") or {}).get("settings")
        s = TrainSettings()
        if isinstance(saved, dict):
            known = {f.name for f in fields(TrainSettings)}
            s = TrainSettings(**{k: v for k, v in saved.items() if k in known})
        return s.values()

    def save_settings(self, path_text: str, *values: Any) -> str:
        try:
            s = TrainSettings.from_values(*values)
            path = save_settings(self.ws, s, path_text)
        except (UserError, ConfigError) as e:
            return _warn(str(e))
        return f"Settings saved to `{self.ws.rel(path)}`."

    def load_settings(self, path_text: str) -> list[Any]:
        """(every settings field..., message)."""
        try:
            s = load_settings(self.ws, path_text)
        except (UserError, ConfigError) as e:
            return [gr.update() for _ in fields(TrainSettings)] + [_warn(str(e))]
        return s.values() + [f"Settings loaded from `{path_text}`."]

    # ------------------------------------------------------------------------------------------------------------
    # Runs tab

    def runs_table(self) -> tuple[Any, Any]:
        """(table rows, run picker update) of every run in the workspace, newest first."""
        import pandas as pd

        infos = self.ws.runs()
        rows = [
            {
                "run": r.name,
                "status": r.state,
                "steps": f"{r.step}" + (f" / {r.max_steps}" if r.max_steps else ""),
                "last loss": None if r.last_loss is None else round(r.last_loss, 5),
                "model": "yes" if r.has_pipeline else "no",
                "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated)),
            }
            for r in infos
        ]
        frame = pd.DataFrame(rows, columns=["run", "status", "steps", "last loss", "model", "updated"])
        choices = [(r.name, str(r.path)) for r in infos]
        return frame, gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)

    def show_run(self, run: str | None) -> tuple[str, Any, Any]:
        """(details markdown, newest sample grid, loss frame) of one run."""
        if not run:
            return (
                "No run selected (runs appear here once `ldm train` or the Training tab has started one).",
                None,
                None,
            )
        try:
            path = self.ws.resolve(run, what="run folder")
        except UserError as e:
            return _warn(str(e)), None, None
        r = self.ws.run_info(path)
        loss = "–" if r.last_loss is None else f"{r.last_loss:.5f}"
        steps = f"{r.step}" + (f" / {r.max_steps}" if r.max_steps else "")
        sample = f"`{self.ws.rel(r.newest_sample)}`" if r.newest_sample else "none yet"
        md = (
            f"**{r.name}** · status **{r.state}** · steps {steps} · last loss {loss}  \n"
            f"{html.escape(r.message)}  \nnewest sample grid: {sample} · "
            f"model for inference: {'yes' if r.has_pipeline else 'not exported yet'}"
        )
        return md, _open_image(r.newest_sample), _plot_value(loss_frame(RunFolder(path).read_metrics()))

    def use_for_inference(self, run: str | None) -> tuple[Any, Any, str, Any]:
        """Make ``run`` the Inference tab's model and switch to that tab: (model picker, tabs, message, notice)."""
        try:
            path = self.ws.resolve(run, what="run folder")
            if not RunFolder(path).has_pipeline:
                raise UserError(
                    f"{self.ws.rel(path)} has no exported model yet (it appears at the first checkpoint or when "
                    "training ends); pick another run or wait"
                )
        except UserError as e:
            return gr.Dropdown(), gr.Tabs(), _warn(str(e)), gr.Markdown()
        choices = self.model_choices()
        return (
            gr.Dropdown(choices=choices, value=str(path)),
            gr.Tabs(selected="inference"),
            f"Using **{self.ws.rel(path)}** in the Inference tab.",
            "",  # the "no model yet" notice, if it was showing
        )


def _slug(name: str) -> str:
    from ldm.utils import slugify

    return slugify(name)
