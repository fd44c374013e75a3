"""The app's handlers: plain methods of :class:`LdmApp`, each a thin call into the library, testable without a browser.

    app = LdmApp("~/faces-project")
    app.refresh_models(None)                       # model picker choices
    gallery = app.generate(model, "smiling", "", 4, "dpm++", 25, 3.0, "(none)", 0, False)[0]
    app.check_memorisation(model, gallery, 0)      # image 1 beside its closest training images

``ldm/app.py`` wires them to components. Every handler returns plain values or ``gr.update``-style component
objects; bad input never raises out of a handler: it becomes a message (``gr.Warning`` toast plus a message box).
"""

from __future__ import annotations

import html
import json
import random
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gradio as gr

from ldm.app.jobs import JobManager
from ldm.app.settings import (
    RUN_NAME,
    JobPlan,
    TrainSettings,
    load_settings,
    plan_job,
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


def loss_plot(metrics: list[dict[str, Any]]) -> Any:
    """The loss plot's update: the frame, and a caption while a single point cannot draw a line yet."""
    frame = loss_frame(metrics)
    steps = frame["step"].unique() if len(frame) else []
    caption = ""
    if len(steps) == 1:
        loss = float(frame[frame["series"] == "loss"]["loss"].iloc[0])
        caption = f"One point so far (step {int(steps[0])}, loss {loss:.4f}): the curve starts at the next one."
    return gr.LinePlot(value=_plot_value(frame), caption=caption)


@dataclass
class JobView:
    """What the Training tab says about the job at one moment: every line of it comes from here, so the headline,
    the detail line and the message under the buttons always agree."""

    state: str  # none | starting | running | stopping | finishing | finished | stopped | failed
    run: str = ""  # the run's folder name
    phase: str = ""
    phase_of: str = ""  # "phase 2/3"
    step: int | None = None  # the trainer's step, when its status.json belongs to this job
    max_steps: int | None = None
    fraction: float | None = None  # share of the budget done (steps or time), for the bar
    eta_seconds: float | None = None
    loss: float | None = None
    detail: str = ""  # progress of a phase before training (the autoencoder's steps)
    message: str = ""  # one sentence: what is happening or how it ended, and what to do next


def segment_lines(segments: Any) -> list[str]:
    """One line per training segment of a run (status.json's ``segments``): the first run and each continuation,
    with its steps, minutes, budget and how it ended."""
    lines = []
    for i, seg in enumerate(segments if isinstance(segments, list) else []):
        budget = " or ".join(
            f"{k.replace('max_', '')} {seg[k]:g}" for k in ("max_minutes", "max_steps", "epochs") if seg.get(k)
        )
        start, end = int(seg.get("start_step") or 0), seg.get("end_step")
        minutes = ""
        if seg.get("end_seconds") is not None:
            minutes = f", {(float(seg['end_seconds']) - float(seg.get('start_seconds') or 0)) / 60:.1f} min"
        how = f": {html.escape(str(seg['end']))}" if seg.get("end") else " (in progress or interrupted)"
        what = "first run" if i == 0 else f"continuation {i}"
        steps = f"steps {start} → {end if end is not None else '…'}{minutes}"
        lines.append(f"{i + 1}. {what}, {steps}, budget {budget or '–'}{how}")
    return lines


def _sentence(text: str) -> str:
    """``text`` ending with a full stop (trainer messages have none), first letter upper case."""
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else f"{text}."


def evaluation_text(eval_path: Path) -> str:
    """Markdown of a run's ``eval.json`` (``ldm eval``): KID, FID, class accuracy with its per-class table, and the
    memorisation share; when the run was not evaluated, a line saying so and what computes it."""
    ev = read_json(eval_path)
    if not isinstance(ev, dict) or ev.get("kid") is None:
        return (
            "  \nNot evaluated yet: **Evaluate** measures KID, FID and class accuracy."
            "  \n**Memorisation share**: not evaluated: **Evaluate** computes it."
        )
    acc = ev.get("class_accuracy") or {}
    overall = acc.get("overall") if isinstance(acc, dict) else acc
    n = (ev.get("settings") or {}).get("num_samples", "?")
    lines = [
        f"  \n**Evaluation** ({n} images): KID {ev['kid']:.4f} ± {ev.get('kid_std') or 0:.4f} · FID "
        f"{ev.get('fid', float('nan')):.1f} · class accuracy {overall:.3f}",
    ]
    if isinstance(acc, dict) and acc.get("per_class"):
        lines.append("\n\n| class | accuracy |\n|---|---|")
        lines += [f"| {html.escape(c)} | {a:.2f} |" for c, a in acc["per_class"].items()]
        lines.append("\n")
    lines.append(memorisation_line(ev.get("memorisation"), n))
    return "\n".join(lines)


def memorisation_line(mem: Any, num_samples: Any) -> str:
    """The Runs tab's line on the memorisation share of an evaluation (its ``memorisation`` section)."""
    share = mem.get("share_below_threshold") if isinstance(mem, dict) else None
    if not isinstance(share, (int, float)):
        return "**Memorisation share**: not in this evaluation: evaluating again (**Evaluate**) computes it."
    count = f" ({round(share * num_samples)} of {num_samples})" if isinstance(num_samples, int) else ""
    return (
        f"**Memorisation share**: {100 * share:.1f}% of the generated images{count} are closer to a training image "
        f"than the threshold {float(mem.get('threshold') or 0):.3f} (the median distance from a training image to its "
        "nearest other one); the figure below shows the closest pairs. In the Inference tab, **Closest training "
        "images** checks any image you generate."
    )


def _sweep_member(folder: Path) -> tuple[str, int, int]:
    """(name, 1-based index, count) of the member a sweep trains now: the first not finished (the last when all
    are); ("", 0, 0) before its sweep.json exists."""
    from ldm.training.sweep import SWEEP_FILE, member_state

    record = read_json(folder / SWEEP_FILE) or {}
    members = [m["name"] for m in record.get("members") or []]
    for i, name in enumerate(members):
        if member_state(folder / name) != "finished":
            return name, i + 1, len(members)
    return (members[-1], len(members), len(members)) if members else ("", 0, 0)


def _last_error(log: str) -> str:
    """The last line of a log that explains a failure (the CLI's "error: ..." or a Python exception), else ''."""
    for line in reversed(log.splitlines()):
        text = line.strip()
        if text.startswith("error:") or ": error: " in text:  # "ldm train: error: ..." (argparse's form too)
            return text.split("error: ", 1)[1]
        if text and text.split(":", 1)[0].endswith(("Error", "Exception")):
            return text
    return ""


def job_view(job: dict[str, Any] | None, status: dict[str, Any] | None, detail: str = "", log: str = "") -> JobView:
    """The job's state from the job file (``job``), the run's ``status.json`` (``status``, train phase) and the log
    tail (``log``, for the reason of a failure). A status written before this job started is stale (an earlier
    job's end) and is not shown."""
    if not job:
        return JobView("none", message="No training job yet: fill in the settings and press Start.")
    phases = job.get("phases") or []
    index = int(job.get("phase_index") or 0)
    phase = str(job.get("phase") or "?")
    view = JobView(
        state=str(job.get("state") or "?"),
        run=Path(str(job.get("run", ""))).name,
        phase=phase,
        phase_of=f"phase {index + 1}/{max(1, len(phases))}",
        detail=detail,
    )
    fresh = None
    trains = phase in ("train", "sweep")  # a sweep's status is its current member's
    if trains and status and float(status.get("updated_unix") or 0) >= float(job.get("started") or 0) - 1:
        fresh = status
    if fresh:
        view.step = int(fresh.get("step") or 0)
        view.max_steps = int(fresh.get("max_steps") or 0) or None
        view.loss = fresh.get("loss") if isinstance(fresh.get("loss"), (int, float)) else None
        view.eta_seconds = fresh.get("eta_seconds")
        fractions = [view.step / view.max_steps] if view.max_steps else []
        segment = (fresh.get("segments") or [{}])[-1]
        if fresh.get("max_minutes") and fresh.get("elapsed_seconds") is not None:
            spent = float(fresh["elapsed_seconds"]) - float(segment.get("start_seconds") or 0)
            fractions.append(spent / (60 * float(fresh["max_minutes"])))
        view.fraction = min(1.0, max(fractions)) if fractions else None
    trainer_says = str((fresh or {}).get("message") or "")
    if view.state == "running":
        if job.get("stop_requested"):
            view.state, view.message = "stopping", "Stop requested: finishing the current step, saving a checkpoint."
        elif not trains:
            view.message = f"{phase} running" + (f": {detail}" if detail else "")
        elif not fresh:
            view.state, view.message = "starting", "Starting: loading the data and the model."
        elif fresh.get("state") != "running":
            view.state, view.message = "finishing", f"{trainer_says} Exporting the model."
        else:
            view.message = trainer_says if trainer_says not in ("", "training", "starting") else "Training."
    elif view.state == "failed":
        reason = _last_error(log) or trainer_says
        view.message = f"{job.get('message') or 'failed'}" + (f": {reason}" if reason else "")
    elif view.state == "finished":
        then = " Generate from it in the Inference tab, or Resume to train it longer."
        view.message = _sentence(trainer_says or "Finished") + then
    elif view.state == "stopped":
        view.message = _sentence(trainer_says or str(job.get("message") or "stopped")) + " Resume continues it."
    return view


def progress_html(job: dict[str, Any] | None, status: dict[str, Any] | None, detail: str = "", log: str = "") -> str:
    """The Training tab's progress: a bar, a headline (run, phase, state, step / max steps, %, ETA, loss) and the
    message line, all from :func:`job_view`."""
    return view_html(job_view(job, status, detail, log))


def view_html(view: JobView) -> str:
    if view.state == "none":
        return f'<div class="ldm-progress-text">{html.escape(view.message)}</div>'
    busy = view.state in ("starting", "running", "stopping", "finishing")
    if view.fraction is not None:
        bar = f'<div class="ldm-bar" style="width:{100 * view.fraction:.1f}%"></div>'
    else:
        bar = '<div class="ldm-bar ldm-bar-busy"></div>' if busy else '<div class="ldm-bar"></div>'
    parts = [f"<b>{html.escape(view.run)}</b>", f"{view.phase_of}: {html.escape(view.phase)}", html.escape(view.state)]
    if view.detail:
        parts.append(html.escape(view.detail))
    if view.step is not None:
        parts.append(f"step {view.step}" + (f" / {view.max_steps}" if view.max_steps else ""))
        if view.fraction is not None:
            parts.append(f"{100 * view.fraction:.0f}%")
        if busy and view.eta_seconds is not None:
            parts.append(f"ETA {_fmt_seconds(view.eta_seconds)}")
        if view.loss is not None:
            parts.append(f"loss {view.loss:.4f}")
    css_state = html.escape(view.state)
    return (
        f'<div class="ldm-progress ldm-state-{css_state}" data-step="{view.step if view.step is not None else -1}" '
        f'data-state="{css_state}">{bar}</div>'
        f'<div class="ldm-progress-text">{" · ".join(parts)}</div>'
        f'<div class="ldm-progress-msg">{html.escape(view.message)}</div>'
    )


NO_PICK = "No image picked: the first one is checked."
FLAG = "⚠ close to training image "  # a gallery caption starts with it when the image is a copy candidate
NOT_CHECKED = (
    "Not checked yet: **Check** compares generated images with the model's training images. The first check computes "
    "the training images' features once, with a progress bar (about a third of a second per image on a 2-core CPU: a "
    "minute for 200), and keeps them; after that, every new image is checked as it is generated."
)


def _gallery_items(gallery: Any) -> list[tuple[str, str]]:
    """(file path, caption) of each gallery image, from the gallery's value (tuples, or the API's dicts)."""
    items = []
    for item in gallery or []:
        if isinstance(item, dict):
            image = item.get("image") or {}
            path, caption = image.get("path") if isinstance(image, dict) else image, item.get("caption")
        elif isinstance(item, (list, tuple)):
            path, caption = item[0], item[1] if len(item) > 1 else None
        else:
            path, caption = item, None
        if path:
            items.append((str(path), str(caption or "")))
    return items


def _unflagged(caption: str) -> str:
    """A gallery caption without the flag an earlier check put in front of it."""
    if caption.startswith(FLAG):
        return caption.split(" · ", 1)[1] if " · " in caption else ""
    return caption


def _flag_captions(items: list[tuple[str, str]], checked: list[int], found: Any, train: Any) -> Any:
    """The gallery with the checked images' captions flagged (copy candidates) or unflagged; gr.skip() when no
    caption changes (a redrawn gallery would close the picked image)."""
    out, changed = [], False
    for pos, (path, caption) in enumerate(items):
        new = caption
        if pos in checked:
            r = checked.index(pos)
            new = _unflagged(caption)
            if found.flagged[r]:
                new = f"{FLAG}{train.name(int(found.indices[r, 0]))}" + (f" · {new}" if new else "")
        out.append((path, new))
        changed |= new != caption
    return out if changed else gr.skip()


def nearest_summary(checked: list[int], found: Any, train: Any) -> str:
    """One markdown sentence on the checked gallery images (0-based positions ``checked``): which are copy
    candidates, or how far the nearest training image is."""
    from ldm.figures import distance_pair

    near = [(pos, train.name(int(found.indices[r, 0])), float(found.distances[r, 0])) for r, pos in enumerate(checked)]
    close = [x for r, x in enumerate(near) if found.flagged[r]]
    if len(checked) == 1:
        pos, name, d = near[0]
        d, t = distance_pair(d, found.threshold)
        if close:
            return (
                f"**Image {pos + 1} is close to training image `{name}`**: distance {d}, below the threshold {t}; it "
                "may copy it."
            )
        return (
            f"Image {pos + 1} is not close to any training image: the nearest, `{name}`, is at distance {d}, above "
            f"the threshold {t}."
        )
    t = distance_pair(0.0, found.threshold)[1]
    if close:
        which = ", ".join(f"image {pos + 1} → `{name}` ({d:.2f})" for pos, name, d in close)
        return (
            f"**{len(close)} of {len(checked)} images are close to a training image** (distance below the threshold "
            f"{t}): {which}."
        )
    pos, name, d = min(near, key=lambda x: x[2])
    d, t = distance_pair(d, found.threshold)
    return (
        f"None of the {len(checked)} images is close to a training image: the nearest pair is image {pos + 1} and "
        f"`{name}` at distance {d}, above the threshold {t}."
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
        self.device = device
        self._nearest: Any = None  # NearestTraining, made on first use (see the nearest property)
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
    ) -> tuple[list[tuple[str, str]], Any, list[str], str, str, float | None]:
        """Generate images of one class: (gallery, snapshot figure, PNG files, parameters text, message, seed).

        ``class_choice`` (the Class box: pick or type) names the class; ``class_text`` is read only when it is empty
        (an API parameter kept for old callers; the page has no second class box). The returned seed is the one used,
        or on failure the ``seed`` given, so a failed Generate does not change the Seed box. PNGs land in
        ``.ldm-app/outputs/<time>-<class>/`` and carry their generation parameters as PNG text.
        """
        used = random.randrange(0, 2**31 - 1) if randomize else int(seed or 0)
        try:
            return self._generate(
                model, class_choice, class_text, num_images, sampler, steps, guidance, negative, used, progress
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
        wanted = (class_choice or "").strip() or (class_text or "")
        class_id = resolve_class(wanted, names)  # UserError listing the closest names
        neg = None if not negative or negative == NO_NEGATIVE else names[resolve_class(negative, names)]
        n, steps = int(num_images or 1), int(steps or 25)
        if not 1 <= n <= 64:
            raise UserError(f"number of images must be 1..64, got {n}")
        if not 1 <= steps <= 1000:
            raise UserError(f"steps must be 1..1000, got {steps}")
        note = ""
        if neg == names[class_id]:
            # eps_neg = eps_c makes the guided eps_neg + w (eps_c - eps_neg) the plain eps_c: guidance cancels out
            note = (
                f"negative class = class ({neg}): guidance pushes away from the class itself and cancels out (the "
                "images are as with guidance 1); pick another negative class or (none)"
            )
            gr.Warning(note)
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
        if note:
            message += f"  \n**Warning:** {note}"
        snapshot = str(out.snapshots) if out.snapshots else None
        return gallery, snapshot, files, json.dumps(params, indent=2), message, seed

    # ------------------------------------------------------------------------------------------------------------
    # Inference tab: closest training images

    @property
    def nearest(self) -> Any:
        """The :class:`ldm.evaluation.nearest.NearestTraining` of this app (made on first use; Inception loads at the
        first check). Its feature cache is the one the Evaluate job uses (it runs in the workspace)."""
        if self._nearest is None:
            from ldm.device import resolve_device
            from ldm.evaluation.classifier import default_cache_dir
            from ldm.evaluation.nearest import NearestTraining

            device = resolve_device(self.device)
            cache = default_cache_dir(self.ws.root)
            self._nearest = NearestTraining(cache, device=device if device.startswith("cuda") else "cpu")
        return self._nearest

    def _checked_model(self, paths: list[str], model: str | None) -> Path:
        """The model that made the images: the one their PNGs record when it is in the workspace, else the picked
        one (images generated before the model box changed are still compared with their own training images)."""
        from ldm.diffusion.sample_files import read_parameters

        try:
            recorded = (read_parameters(paths[0]).get("model") or {}).get("path")
        except UserError:
            recorded = None
        if recorded:
            try:
                return self.ws.resolve(recorded, what="model folder")
            except UserError:
                pass
        return self._model_path(model)

    def _training_set(self, model_path: Path, images: Any, compute: bool, progress: Any) -> Any:
        from ldm.evaluation.nearest import run_of, training_data_of

        data = self.ws.resolve(str(training_data_of(model_path)), what="training images")
        run = run_of(model_path) or model_path
        return self.nearest.training_set(
            data, images.shape[-1], images.shape[1], run=run, compute=compute, progress=progress
        )

    def _nearest_footer(self, train: Any, seconds: float) -> str:
        cost = f"computed in {train.seconds:.0f} s and cached" if train.computed else "cached"
        return (
            f"  \nDistances between Inception features (the ones Evaluate uses) of the {len(train)} training images "
            f"in `{self.ws.rel(train.data_dir)}` ({cost}); the threshold is the median distance from a training image "
            f"to its nearest other one ({train.threshold_from}). Checked in {seconds:.1f} s."
        )

    def pick_image(self, evt: gr.SelectData) -> tuple[int, str]:
        """A click on a gallery image: (its 0-based position for the check, the line saying which is picked)."""
        value = evt.value if isinstance(evt.value, dict) else {}
        caption = _unflagged(str(value.get("caption") or ""))
        return int(evt.index), f"Picked: image {int(evt.index) + 1}" + (f" ({caption})." if caption else ".")

    def check_memorisation(
        self, model: str | None, gallery: Any, index: float | None, progress: gr.Progress = gr.Progress()
    ) -> tuple[Any, str, Any]:
        """Compare gallery image ``index`` (0-based; None or negative: every image) with the model's training images:
        (figure of each checked image beside its 3 closest training images, markdown, gallery with the copy
        candidates' captions flagged, or gr.skip() when no caption changes)."""
        try:
            return self._check_memorisation(model, gallery, index, progress)
        except (UserError, ConfigError) as e:
            return None, _warn(str(e)), gr.skip()

    def check_all_images(self, model: str | None, gallery: Any, progress: gr.Progress = gr.Progress()) -> Any:
        """:meth:`check_memorisation` of every gallery image."""
        return self.check_memorisation(model, gallery, None, progress)

    def _check_memorisation(self, model, gallery, index, progress):
        from ldm.evaluation.nearest import read_generated
        from ldm.figures import nearest_figure

        t0 = time.perf_counter()
        items = _gallery_items(gallery)
        if not items:
            raise UserError("no images to check: generate some first")
        if index is None or int(index) < 0:
            checked = list(range(len(items)))
        elif int(index) < len(items):
            checked = [int(index)]
        else:
            raise UserError(f"image {int(index) + 1} is not in the gallery, which holds {len(items)}")
        paths = [items[i][0] for i in checked]
        images = read_generated(paths)
        train = self._training_set(self._checked_model(paths, model), images, True, progress)
        found = self.nearest.check(train, images, progress=progress)
        progress(1.0, desc="drawing")
        labels = [
            f"image {i + 1}" + (f": {_unflagged(items[i][1])}" if _unflagged(items[i][1]) else "") for i in checked
        ]
        names = [train.name(i) for i in range(len(train))]
        figure = nearest_figure(
            images, train.real.images, found.indices, found.distances, found.threshold, names, labels
        )
        text = nearest_summary(checked, found, train) + self._nearest_footer(train, time.perf_counter() - t0)
        return figure, text, _flag_captions(items, checked, found, train)

    def flag_generated(self, model: str | None, gallery: Any, message: str | None) -> tuple[Any, Any, str, None]:
        """After Generate: when the training images' features are at hand (a check or an evaluation computed them),
        compare every new image with them and flag the copy candidates; (gallery, Generate's message with one line
        added, the check's text, the check's figure cleared: it showed earlier images). Computes no training
        features: that is the check's job, with its progress bar."""
        from ldm.evaluation.nearest import read_generated

        t0 = time.perf_counter()
        items = _gallery_items(gallery)
        if not items:
            return gr.skip(), gr.skip(), "", None
        try:
            paths = [p for p, _ in items]
            images = read_generated(paths)
            train = self._training_set(self._checked_model(paths, model), images, False, None)
            if train is None:
                return gr.skip(), gr.skip(), NOT_CHECKED, None
            found = self.nearest.check(train, images)
        except (UserError, ConfigError) as e:  # said in the check's box, not as a toast: nobody asked yet
            return gr.skip(), gr.skip(), f"Not checked: {e}.", None
        checked = list(range(len(items)))
        line = nearest_summary(checked, found, train)
        footer = self._nearest_footer(train, time.perf_counter() - t0)
        flagged = _flag_captions(items, checked, found, train)
        return (
            flagged,
            f"{message or ''}  \n{line}",
            f"{line} **Check all images** shows each beside its closest training images.{footer}",
            None,
        )

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
        return f"Starting **{self.ws.rel(plan.run)}**: {names}.", gr.Timer(active=True)

    def stop_training(self) -> str:
        try:
            job = self.jobs.stop()
        except UserError as e:
            return _warn(str(e))
        gr.Info("stopping: the trainer finishes its step and saves a checkpoint")
        return f"Stop requested for **{self.ws.rel(job['run'])}**: finishing the step, saving a checkpoint."

    def _resume_or_continue(self, run_text: str | None, more: dict[str, float]) -> str:
        """Start training ``run_text`` again from its newest checkpoint: a run that finished its budget trains
        ``more`` (minutes / steps) more, any other finishes the budget it was started with. Returns the message."""
        job = self.jobs.current()
        if job and job.get("state") == "running":
            raise UserError(
                f"a job is running ({self.ws.rel(job['run'])}); stop it or wait for it before resuming another"
            )
        run = self.ws.resolve(run_text, what="run folder")
        info = self.ws.run_info(run)
        same_run = job is not None and Path(job["run"]) == run
        job_info = (job.get("info") or {}) if same_run else {}
        if info.state == "finished":
            if not any(v > 0 for v in more.values()):
                raise UserError(
                    f"run {info.name} already finished its budget; set how much longer to train it "
                    "(Max minutes or Max steps) and press Resume again"
                )
            plan = plan_resume_run(self.ws, run, job_info, more=more)
            amount = " and ".join(
                f"{v:g} more {'minutes' if k == 'max_minutes' else 'steps'}" for k, v in more.items() if v > 0
            )
            message = f"Continuing **{info.name}** from step {info.step} for {amount}."
        else:
            plan = plan_resume_run(self.ws, run, job_info)
            message = f"Resuming **{info.name}** from its newest checkpoint: it finishes the budget it started with."
        self.jobs.start(plan.run, plan.phases, plan.log, plan.info)
        gr.Info(message.replace("**", ""))
        return message

    def resume_training(self, *values: Any) -> tuple[str, Any]:
        """The Training tab's Resume: the run named in the form; a finished one trains the form's Max minutes / Max
        steps more. (message, timer update)."""
        try:
            s = TrainSettings.from_values(*values)
            if not RUN_NAME.match(s.run_name or ""):
                raise UserError(f"run name {s.run_name!r}: type the name of the run to resume (runs/NAME)")
            run = self.ws.resolve(f"runs/{s.run_name}", what="run", must_exist=False)
            if not RunFolder(run).is_started:
                raise UserError(f"there is no run runs/{s.run_name} yet; press Start to start it")
            message = self._resume_or_continue(str(run), {"max_minutes": s.max_minutes, "max_steps": s.max_steps})
        except (UserError, ConfigError) as e:
            return _warn(str(e)), gr.Timer(active=self.jobs.is_running())
        return message, gr.Timer(active=True)

    def resume_run(self, run: str | None, minutes: float | None = 0) -> tuple[str, Any, Any, str]:
        """The Runs tab's Resume / continue of the picked run (a finished one trains ``minutes`` more), then the
        Training tab, which shows its progress: (training message, timer update, tabs update, runs-tab message)."""
        try:
            message = self._resume_or_continue(run, {"max_minutes": float(minutes or 0)})
        except (UserError, ConfigError, ValueError) as e:
            return gr.Markdown(), gr.Timer(active=self.jobs.is_running()), gr.Tabs(), _warn(str(e))
        return message, gr.Timer(active=True), gr.Tabs(selected="training"), message

    PLOT_SECONDS = 10.0  # the live loss plot and sample grid are redrawn at most this often (see poll)
    POLL_SECONDS = 2.0  # the Training tab's refresh in the first QUICK_POLL_FOR seconds of a job and while it stops
    QUICK_POLL_FOR = 30.0
    # ... and after that: each poll costs the trainer's CPU in the browser; every 10 s it costs no measurable speed
    # beyond the open page's own cost, every 5 s ~4% (scripts/bench_app_watch.py, docs/benchmarks.md)
    SLOW_POLL_SECONDS = 10.0
    redraw_every_poll = False  # True: send them on every poll, changed or not (the behaviour before; a benchmark's)

    def poll(self, seen: dict[str, Any] | None = None) -> tuple[Any, ...]:
        """Live view of the job: (progress HTML, loss plot, newest sample grid, log tail, message, timer, seen).

        ``seen`` is the page's memory of what it already shows (a ``gr.State``): the plot and the grid are sent
        only when their data changed, and at most every :data:`PLOT_SECONDS` while the job runs (redrawing a plot
        costs the browser's CPU, which on a small machine is the trainer's); the message under the buttons is
        replaced when the job's state changes, so it never contradicts the progress line. The log tail is short and
        the box tall enough for it, so the newest line is always in view."""
        seen = dict(seen or {})
        job = self.jobs.current()
        if not job:
            view = job_view(None, None)
            return view_html(view), None, None, "", gr.skip(), gr.Timer(active=False), seen
        run = Path(job["run"])
        log = tail(Path(job.get("log") or run / "app-job.log"), lines=12)
        running = job.get("state") == "running"
        # quick while something is about to change (a start, a stop), then slower: every poll costs the trainer
        # CPU time in the server and in the browser (scripts/bench_app_watch.py)
        settling = time.time() - float(job.get("started") or 0) < self.QUICK_POLL_FOR or job.get("stop_requested")
        timer = gr.Timer(value=self.POLL_SECONDS if settling else self.SLOW_POLL_SECONDS, active=running)
        target = run
        if job.get("phase") == "sweep":
            # a sweep: the member training now, as a training run, with "run i of N" beside it
            member, i, n = _sweep_member(run)
            target = run / member if member else run
            status = RunFolder(target).read_status() if member else None
            view = job_view(job, status, f"run {i} of {n}: {member}" if member else "planning", log)
            plot_data = RunFolder(target).read_metrics() if member else []
            grids = RunFolder(target).sample_grids() if member else []
            grid = grids[-1] if grids else None
        elif job.get("phase") != "train":
            # before training: the autoencoder's own metrics and reconstruction grids show that work is moving
            phases = job.get("phases") or []
            index = int(job.get("phase_index") or 0)
            folder = RunFolder(self.ws.root / ((phases[index] if index < len(phases) else {}).get("folder") or run))
            metrics = folder.read_metrics()
            last = metrics[-1] if metrics else {}
            detail = f"step {last['step']}, {last.get('seconds', 0):.0f} s" if "step" in last else ""
            if job.get("phase") == "eval":  # ldm eval logs "[eval] generated 48/200 (12 s)"
                said = [ln for ln in log.splitlines() if ln.startswith("[eval]")]
                detail = said[-1].removeprefix("[eval] ") if said else "starting"
            recon = folder.recon_grids()
            view = job_view(job, None, detail, log)
            plot_data, grid = None, recon[-1] if recon else None
        else:
            view = job_view(job, RunFolder(run).read_status(), log=log)
            plot_data = RunFolder(run).read_metrics()
            info = self.ws.run_info(run) if run.exists() else None
            grid = info.newest_sample if info else None

        now = time.monotonic()
        key = f"{job.get('started')}|{view.state}|{job.get('phase')}"
        message = f"{view.message}" if seen.get("state") != key else gr.skip()
        seen["state"] = key
        due = not running or now - float(seen.get("drawn_at", 0.0)) >= self.PLOT_SECONDS
        plot_sig = f"{job.get('started')}|{target}|{len(plot_data or [])}"
        grid_sig = f"{grid}|{grid.stat().st_mtime if grid and grid.exists() else 0}"
        plot, image, drawn = gr.skip(), gr.skip(), False
        if self.redraw_every_poll:
            seen.pop("plot", None), seen.pop("grid", None)
        if seen.get("plot") != plot_sig and (due or "plot" not in seen):
            plot, seen["plot"], drawn = loss_plot(plot_data or []), plot_sig, True
        if seen.get("grid") != grid_sig and (due or "grid" not in seen):
            image, seen["grid"], drawn = _open_image(grid), grid_sig, True
        if drawn:
            seen["drawn_at"] = now
        return view_html(view), plot, image, log, message, timer, seen

    def _start_unless_running(self, plan: JobPlan) -> None:
        job = self.jobs.current()
        if job and job.get("state") == "running":
            raise UserError(f"a job is running ({self.ws.rel(job['run'])}); stop it or wait for it first")
        self.jobs.start(plan.run, plan.phases, plan.log, plan.info)

    def start_sweep(
        self, name: str, key1: str, values1: str, key2: str, values2: str, minutes: float, evaluate: float, *values
    ) -> tuple[str, Any]:
        """Start a sweep of up to two settings over the form's settings, ``minutes`` per run; (message, timer)."""
        from ldm.app.settings import plan_sweep

        try:
            s = TrainSettings.from_values(*values)
            grid = [(k, v) for k, v in ((key1, values1), (key2, values2)) if (k or "").strip() and (v or "").strip()]
            plan = plan_sweep(self.ws, s, (name or "").strip(), grid, float(minutes or 0), int(evaluate or 0))
            self._start_unless_running(plan)
        except (UserError, ConfigError, ValueError) as e:
            return _warn(str(e)), gr.Timer(active=self.jobs.is_running())
        n = 1
        for _, v in grid:
            n *= len([x for x in v.split(",") if x.strip()])
        gr.Info(f"sweep started: {n} runs")
        message = f"Starting sweep **{self.ws.rel(plan.run)}**: {n} runs of {float(minutes):g} min."
        return message, gr.Timer(active=True)

    def continue_sweep(self, name: str) -> tuple[str, Any]:
        """Run sweep ``name`` again: finished members are skipped, an interrupted one resumes; (message, timer)."""
        from ldm.app.settings import plan_continue_sweep

        try:
            plan = plan_continue_sweep(self.ws, (name or "").strip())
            self._start_unless_running(plan)
        except (UserError, ConfigError) as e:
            return _warn(str(e)), gr.Timer(active=self.jobs.is_running())
        return f"Continuing sweep **{self.ws.rel(plan.run)}**: finished runs are skipped.", gr.Timer(active=True)

    def pick_recipe(self, name: str | None, *values: Any) -> list[Any]:
        """Fill the form with recipe ``name`` (its data folders and run name kept): (every field..., recipe note)."""
        from ldm.app.recipes import CUSTOM, recipe_settings

        if not name or name == CUSTOM:
            return [gr.skip() for _ in fields(TrainSettings)] + [""]
        try:
            current = TrainSettings.from_values(*values)
        except (UserError, ConfigError):
            current = TrainSettings()
        try:
            s = recipe_settings(name, current)
        except (UserError, ConfigError, OSError) as e:
            return [gr.skip() for _ in fields(TrainSettings)] + [_warn(str(e))]
        return s.values() + [self.recipe_note(name, s.max_minutes, s.max_steps)]

    def recipe_note(self, name: str | None, minutes: float | None, max_steps: float | None) -> str:
        """The recipe's measured result and what the budget in the form gives with it (markdown)."""
        from ldm.app.recipes import CUSTOM, budget_estimate, recipe_summary

        if not name or name == CUSTOM:
            return ""
        try:
            minutes, max_steps = float(minutes or 0), int(max_steps or 0)
        except (TypeError, ValueError):
            minutes, max_steps = 0.0, 0
        try:
            estimate = budget_estimate(name, minutes, max_steps)
            return recipe_summary(name) + (f"  \n{estimate}" if estimate else "")
        except UserError as e:
            return str(e)

    def job_settings(self) -> list[Any]:
        """The settings of the last job (to refill the form after a reload), else no change to the form."""
        job = self.jobs.current() or {}
        saved = (job.get("info") or {}).get("settings")
        if not isinstance(saved, dict):  # e.g. a resume from the Runs tab: the form keeps what it shows
            return [gr.skip() for _ in fields(TrainSettings)]
        known = {f.name for f in fields(TrainSettings)}
        return TrainSettings(**{k: v for k, v in saved.items() if k in known}).values()

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

    def runs_table(self, picked: str | None = None) -> tuple[Any, Any]:
        """(table update, run picker update) of every run in the workspace, newest first; the picker keeps the run
        ``picked`` while it exists (a refresh must not switch the user's run), else the newest."""
        import pandas as pd

        # column: its share of the table's width; shares (not pixels) keep every column in view on a 390 px phone,
        # where the cells wrap instead of the table scrolling sideways
        widths = {"run": "19%", "status": "19%", "steps": "14%", "last loss": "13%", "model": "14%", "updated": "21%"}
        infos = self.ws.runs()
        rows = [
            {
                "run": r.name,
                "status": r.state,
                "steps": f"{r.step}" + (f" / {r.max_steps}" if r.max_steps else ""),
                "last loss": None if r.last_loss is None else round(r.last_loss, 4),
                "model": "yes" if r.has_pipeline else "no",
                "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated)),
            }
            for r in infos
        ]
        frame = pd.DataFrame(rows, columns=list(widths))
        choices = [(r.name, str(r.path)) for r in infos]
        table = gr.Dataframe(value=frame, column_widths=list(widths.values()))
        keep = picked if picked in {value for _, value in choices} else None
        return table, gr.Dropdown(choices=choices, value=keep or (choices[0][1] if choices else None))

    def show_run(self, run: str | None) -> tuple[str, Any, Any, Any]:
        """(details markdown, newest sample grid, loss plot, memorisation figure) of one run."""
        if not run:
            return (
                "No run selected (runs appear here once `ldm train` or the Training tab has started one).",
                None,
                None,
                None,
            )
        try:
            path = self.ws.resolve(run, what="run folder")
        except UserError as e:
            return _warn(str(e)), None, None, None
        r = self.ws.run_info(path)
        loss = "–" if r.last_loss is None else f"{r.last_loss:.5f}"
        steps = f"{r.step}" + (f" / {r.max_steps}" if r.max_steps else "")
        sample = f"`{self.ws.rel(r.newest_sample)}`" if r.newest_sample else "none yet"
        md = (
            f"**{r.name}** · status **{r.state}** · steps {steps} · last loss {loss}  \n"
            f"{html.escape(r.message)}  \nnewest sample grid: {sample} · "
            f"model for inference: {'yes' if r.has_pipeline else 'not exported yet'}"
        )
        history = segment_lines((RunFolder(path).read_status() or {}).get("segments"))
        if len(history) > 1:
            md += "  \n**History**  \n" + "  \n".join(history)
        md += evaluation_text(RunFolder(path).eval_path)
        memorisation = RunFolder(path).memorisation_plot_path
        figure = _open_image(memorisation) if memorisation.is_file() else None
        return md, _open_image(r.newest_sample), loss_plot(RunFolder(path).read_metrics()), figure

    def compare_choices(self, picked: list[str] | None) -> Any:
        """The runs the Compare box offers (every diffusion run, sweeps' members too), keeping the ticked ones."""
        names = [r.name for r in self.ws.runs() if r.kind != "autoencoder"]
        return gr.CheckboxGroup(choices=names, value=[p for p in (picked or []) if p in names])

    def compare_runs(self, picked: list[str] | None) -> tuple[Any, str, list[tuple[str, str]]]:
        """The ticked runs side by side: (figure of their smoothed losses and KID, markdown table with the settings
        that differ in bold, their newest sample grids)."""
        from ldm.evaluation.compare import best_by_kid, compare_figure, differing_settings, markdown_table, summarise

        try:
            runs = [self.ws.resolve(r, what="run folder") for r in (picked or [])]
        except UserError as e:
            return None, _warn(str(e)), []
        if len(runs) < 2:
            return None, "Tick two runs or more to compare them.", []
        names = [self.ws.rel(r) for r in runs]
        rows = [summarise(r, n) for r, n in zip(runs, names)]
        table = markdown_table(rows, differing_settings(runs), best_by_kid(rows))
        figure = compare_figure(runs, self.ws.app_dir / "compare.png", names)
        grids = []
        for r, n in zip(runs, names):
            newest = RunFolder(r).sample_grids()
            if newest:
                grids.append((str(newest[-1]), n))
        return str(figure), table, grids

    def evaluate_run(self, run: str | None, samples: float | None) -> tuple[str, Any, Any, str]:
        """Run ``ldm eval`` on the picked run in the worker (its progress shows in the Training tab): (training
        message, timer, tabs, runs-tab message). The real images are the ones its latent cache was made from."""
        from ldm.app.jobs import Phase
        from ldm.data.manifest import Manifest

        try:
            path = self.ws.resolve(run, what="run folder")
            if not RunFolder(path).has_pipeline:
                raise UserError(f"{self.ws.rel(path)} has no exported model yet: train it first")
            ckpt = RunFolder(path).latest_checkpoint()
            cache = RunFolder.checkpoint_latents(ckpt) if ckpt else None
            real = Manifest.load(cache).data_dir if cache and Manifest.exists(cache) else None
            if not real:
                raise UserError(f"{self.ws.rel(path)}: its latent cache names no image folder to compare against")
            real_path = self.ws.resolve(real, what="real images")
            n = int(samples or 0)
            if not 10 <= n <= 5000:
                raise UserError(f"images to generate: 10..5000, got {n}")
            argv = [sys.executable, "-m", "ldm", "eval", "--run", self.ws.rel(path), "--real", self.ws.rel(real_path)]
            argv += ["--num-samples", str(n)]
            plan = JobPlan(path, cache, [Phase("eval", argv, self.ws.rel(path))], path / "app-job.log", {})
            self._start_unless_running(plan)
        except (UserError, ConfigError, ValueError) as e:
            return gr.Markdown(), gr.Timer(active=self.jobs.is_running()), gr.Tabs(), _warn(str(e))
        message = f"Evaluating **{self.ws.rel(path)}** with {n} images: progress in the log below."
        return message, gr.Timer(active=True), gr.Tabs(selected="training"), message

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
