"""The diffusion training loop: a class-conditional UNet on a latent cache, with EMA, checkpoints and safe stop.

    ldm train --latents data/latents/demo --out runs/demo --config configs/demo.yaml
    ldm train --latents data/latents/demo --out runs/demo --resume latest --max-steps 4000

or from Python::

    from ldm.config import load_config
    from ldm.training.trainer import train
    result = train(load_config("configs/demo.yaml"), "data/latents/demo", "runs/demo")

One optimiser step, top to bottom (:meth:`Trainer.step`): ``gradient_accumulation_steps`` micro-batches of
``batch_size`` latents drawn from a seeded permutation of the cache, each through
:func:`ldm.diffusion.objective.diffusion_loss` (noise, timesteps and label dropout from a seeded generator), gradients
clipped, optimiser and learning rate stepped, EMA updated. Everything goes through ``accelerate.Accelerator``,
so the same code runs on a CPU (one process), a GPU, or several (``accelerate launch -m ldm.cli train ...``).

The training state in ``checkpoints/step-XXXXXX/`` holds everything needed to continue *exactly*: the model,
the EMA, the optimiser, the learning-rate position, the RNG states (python, numpy, torch, the noise generator) and
the data position (epoch, offset into that epoch's permutation). Resuming from it gives the same next loss as the
uninterrupted run. The exported model (the EMA weights as a diffusers pipeline) is a different thing: ``pipeline/``.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.config import Config, DiffusionConfig, TrainingConfig, to_dict
from ldm.errors import UserError
from ldm.figures import labelled_grid, plot_loss
from ldm.run_folder import save_png
from ldm.training.loop import BatchStream, TrainingDiverged, TrainingLoop, make_ema
from ldm.training.optim import make_optimizer
from ldm.utils import atomic_dir

__all__ = ["BatchStream", "TrainResult", "Trainer", "TrainingDiverged", "train"]


@dataclass
class TrainResult:
    """What :func:`train` did. ``state`` is ``"finished"`` (a step/epoch/time budget was reached) or ``"stopped"``."""

    run_dir: Path
    state: str
    step: int  # optimiser steps done, including those before a resume
    epoch: float  # passes over the cache (images seen / cache size)
    loss: float | None  # mean loss of the last log window
    elapsed_seconds: float  # wall-clock time of the training loop, including before a resume
    checkpoint: Path | None  # the final checkpoint folder
    pipeline_dir: Path | None  # the exported diffusers pipeline
    sample_grid: Path | None  # the last sample grid
    message: str


# ---------------------------------------------------------------------------------------------------------------------
# budget and settings


def step_horizon(tc: TrainingConfig, num_latents: int, latents_per_step: int) -> int | None:
    """Optimiser steps until ``max_steps`` or ``epochs`` ends the run (whichever first); None if only time is set."""
    limits = []
    if tc.max_steps > 0:
        limits.append(tc.max_steps)
    if tc.epochs > 0:
        limits.append(math.ceil(tc.epochs * num_latents / latents_per_step))
    return min(limits) if limits else None


def check_training_config(tc: TrainingConfig) -> None:
    """Raise UserError for settings that cannot train (naming the key and what is accepted)."""
    for key in (
        "max_steps",
        "epochs",
        "max_minutes",
        "warmup_steps",
        "log_every",
        "sample_every",
        "eval_every",
        "checkpoint_every",
    ):
        if getattr(tc, key) < 0:
            raise UserError(f"training.{key} must be >= 0, got {getattr(tc, key)}")
    if tc.max_steps <= 0 and tc.epochs <= 0 and tc.max_minutes <= 0:
        raise UserError(
            "nothing says when to stop: set training.max_steps, training.epochs or training.max_minutes "
            "(or --max-steps / --epochs / --max-minutes); the first one reached ends the run"
        )
    if tc.batch_size < 1 or tc.gradient_accumulation_steps < 1:
        raise UserError("training.batch_size and training.gradient_accumulation_steps must be >= 1")
    if tc.learning_rate <= 0:
        raise UserError(f"training.learning_rate must be > 0, got {tc.learning_rate}")
    if tc.ema and not 0 < tc.ema_decay < 1:
        raise UserError(f"training.ema_decay must be in (0, 1), got {tc.ema_decay}")
    if tc.eval_every > 0 and tc.eval_num_samples < 2:
        raise UserError(f"training.eval_num_samples must be >= 2 when eval_every is set, got {tc.eval_num_samples}")
    if tc.max_grad_norm < 0:
        raise UserError(f"training.max_grad_norm must be >= 0 (0 = no clipping), got {tc.max_grad_norm}")


def check_diffusion_config(dc: DiffusionConfig) -> None:
    """Raise UserError for objective settings out of range (naming the key and what is accepted)."""
    if not 0.0 <= dc.label_dropout < 1.0:
        raise UserError(
            f"diffusion.label_dropout must be in [0, 1) (the share of null-class labels; 0.1 is usual), got "
            f"{dc.label_dropout}"
        )
    if dc.snr_gamma is not None and dc.snr_gamma <= 0:
        raise UserError(f"diffusion.snr_gamma must be > 0 (5 is usual) or null (no weighting), got {dc.snr_gamma}")
    if dc.huber_delta <= 0:
        raise UserError(f"diffusion.huber_delta must be > 0, got {dc.huber_delta}")


# ---------------------------------------------------------------------------------------------------------------------
# the trainer


class Trainer(TrainingLoop):
    """The state of one diffusion training run. :func:`train` is the usual entry point; the class is public so that
    benchmarks time exactly this step::

        t = Trainer(cfg, "data/latents/demo", "/tmp/bench-run", device="cpu")
        t.setup()                       # writes config.yaml and classes.json into the run folder
        loss, grad_norm, lr = t.step()  # one optimiser step (all micro-batches), as in training

    Arguments as :func:`train`'s.
    """

    kind = "diffusion"
    section = "training"
    weights = "unet"
    shared_rng = True  # every process has the same random stream (see setup)
    divergence_hint = (
        "Try a lower training.learning_rate, training.max_grad_norm=1, or training.mixed_precision=no, then"
    )

    def check_config(self) -> None:
        self.tc = self.cfg.training
        check_training_config(self.tc)
        check_diffusion_config(self.cfg.diffusion)

    def load_source(self, latents: Path) -> None:
        from ldm.data.latents import load_latent_cache

        self.cache = load_latent_cache(latents)
        self.latents_path = latents
        self.classes = list(self.cache.classes)
        self.num_classes = len(self.classes)
        n, c, h, w = self.cache.latents.shape
        if self.tc.hflip and self.cache.mirrored is None:
            raise UserError(
                f"training.hflip needs the mirrored latents, which the cache {latents} does not hold: prepare it with "
                "data.hflip=true (ldm prepare ... data.hflip=true), or set training.hflip=false"
            )
        if h != w:
            raise UserError(f"the latent cache holds non-square latents {h}x{w}; the UNet needs square ones")
        self.latent_shape = (c, h, w)
        self.latents_per_step = self.tc.batch_size * self.tc.gradient_accumulation_steps * self.world
        self.max_steps, self.max_minutes = self.tc.max_steps, self.tc.max_minutes
        self.horizon = step_horizon(self.tc, n, self.latents_per_step)
        self._plot_at, self._plot_cost = -1e9, 0.0  # time and cost of the last loss.png redraw (see _plot)

    # -- setup ------------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        from ldm.diffusion.objective import make_train_scheduler
        from ldm.models.unet import build_unet

        tc = self.tc
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            # Recorded before the first step, so a run folder always says how it was made and from what.
            self.run_folder.write_config(self.cfg)
            self.run_folder.write_classes(self.classes)
            self.run_folder.samples_dir.mkdir(exist_ok=True)

        torch.manual_seed(tc.seed)  # weight initialisation
        c, h, _ = self.latent_shape
        unet = build_unet(self.cfg.unet, sample_size=h, in_channels=c, num_classes=self.num_classes)
        self.null_class_id = self.num_classes
        self.scheduler = make_train_scheduler(self.cfg.diffusion)
        self.settle_precision(unet, self._probe_loss(unet))
        if self.main:
            self.record_inputs()
        self.acc.wait_for_everyone()
        self.ema = make_ema(unet, tc.ema_decay, tc.ema_warmup, tc.ema_power) if tc.ema else None
        self.stream = BatchStream(len(self.cache.latents), tc.seed)
        if self.resume_from is not None:
            self._load_checkpoint(unet)
        else:
            random.seed(tc.seed)
            np.random.seed(tc.seed % 2**32)

        if tc.channels_last:
            unet = unet.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(unet.parameters(), tc, str(self.device))
        self.unet, self.optimizer = self.acc.prepare(unet, optimizer)
        self.raw_model = self.acc.unwrap_model(self.unet)
        if self.ema is not None:
            self.ema.to(self.device)

        # The noise generator lives on the training device. One random stream, the same on every process: each draws
        # for the global batch and keeps its slice, so N processes train as one process with the global batch does.
        self.generator = torch.Generator(device=self.device).manual_seed(tc.seed * 7919 + 1)
        if self.resume_from is not None:
            self.load_optimizer(self.optimizer)
            self.restore_rng(lambda: self.generator.manual_seed(tc.seed * 7919 + 1 + 104_729 * self.step_count))

        self.latents = self.cache.latents.to(self.device)
        self.labels = self.cache.labels.to(self.device)
        self.mirrored = self.cache.mirrored.to(self.device) if self.tc.hflip else None
        self.vae = None
        self.evaluator = None
        if self.main:
            self._vae()  # load it now: a missing autoencoder should fail before training, not at the first grid
            if tc.eval_every > 0:
                self.evaluator = self._make_evaluator()  # likewise missing Inception weights or real images
        self.t0 = time.monotonic()  # reset by run(); set here so step() works on its own (benchmarks)

    def _load_checkpoint(self, unet: torch.nn.Module) -> None:
        """Load model, EMA, data position and step from ``self.resume_from`` into the fresh objects."""

        ckpt = self.resume_from
        state = self.read_checkpoint_state()
        if state.get("classes") != self.classes:
            raise UserError(
                f"cannot resume from {ckpt}: it was trained on classes {state.get('classes')}, "
                f"the latent cache {self.latents_path} has {self.classes}"
            )
        if tuple(state.get("latent_shape", ())) != self.latent_shape:
            raise UserError(
                f"cannot resume from {ckpt}: latent shape {state.get('latent_shape')} != cache {self.latent_shape}"
            )
        trained_on, cache_ae = state.get("autoencoder_hash"), self.cache.manifest.autoencoder.content_hash
        if trained_on and cache_ae and trained_on != cache_ae:
            raise UserError(
                f"cannot resume from {ckpt}: it was trained on latents of another autoencoder (hash "
                f"{trained_on[:12]}) than the one that made the cache {self.latents_path} ({cache_ae[:12]}); "
                f"resume on the run's own cache ({state.get('latents')}) or start a new run on this one"
            )
        if state.get("unet") != to_dict(self.cfg.unet):
            raise UserError(
                f"cannot resume from {ckpt}: its unet config {state.get('unet')} differs from this config's "
                f"{to_dict(self.cfg.unet)}; resume with the run's own {self.run_folder.CONFIG}"
            )
        self.load_weights(unet)
        self.stream.load_state_dict(state["data"])

    def save_state(self, folder: Path) -> dict[str, Any]:
        return {
            "epoch": self._epoch(),
            "data": self.stream.state_dict(),
            "lr_schedule": {
                "kind": self.tc.lr_schedule,
                "warmup_steps": self.tc.warmup_steps,
                "horizon": self.horizon,
                "peak": self.tc.learning_rate,
            },
            "classes": self.classes,
            "latent_shape": list(self.latent_shape),
            "latents": str(self.latents_path.resolve()),
            # the autoencoder whose latents the model learned: resuming on another one's would pair the model with
            # a decoder it never saw (the exported pipeline takes the cache's autoencoder)
            "autoencoder_hash": self.cache.manifest.autoencoder.content_hash,
            "unet": to_dict(self.cfg.unet),
        }

    # -- one optimiser step -------------------------------------------------------------------------------------------

    # -- one optimiser step -------------------------------------------------------------------------------------------

    def step(self) -> tuple[float, float | None, float]:
        """One optimiser step; returns (mean loss over processes and micro-batches, grad norm or None, lr)."""
        from ldm.diffusion.objective import diffusion_loss

        tc = self.tc
        # the step horizon, when known, drives the cosine alone (the time share differs between runs and resumes)
        time_fraction = self._time_fraction() if self.horizon is None else 0.0
        lr = tc.learning_rate * self.lr_multiplier(tc.warmup_steps, tc.lr_schedule, self.horizon, time_fraction)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.unet.train()
        total = torch.zeros((), device=self.device)
        bs, rank = tc.batch_size, self.acc.process_index
        for micro in range(tc.gradient_accumulation_steps):
            # Every process draws the same global batch and keeps its own slice: one shared data order.
            idx = self.stream.next(bs * self.world)[rank * bs : (rank + 1) * bs].to(self.device)
            x, y = self.latents[idx], self.labels[idx]
            if self.mirrored is not None:  # training.hflip: the mirrored image's latent, half of the time
                draws = torch.rand(bs * self.world, generator=self.generator, device=self.device)
                mirror = draws[rank * bs : (rank + 1) * bs] < 0.5
                x = torch.where(mirror[:, None, None, None], self.mirrored[idx], x)
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            last = micro == tc.gradient_accumulation_steps - 1
            with self.acc.no_sync(self.unet) if not last else contextlib.nullcontext(), self.acc.autocast():
                loss = diffusion_loss(
                    self.unet, self.scheduler, x, y, self.cfg.diffusion, self.null_class_id, self.generator,
                    world=self.world, rank=rank,
                )  # fmt: skip
            self.acc.backward(loss / tc.gradient_accumulation_steps)
            total += loss.detach().float()
        mean_loss = float(self.acc.reduce(total / tc.gradient_accumulation_steps, "mean"))
        if not math.isfinite(mean_loss):
            self.optimizer.zero_grad(set_to_none=True)
            return mean_loss, None, lr
        grad_norm = None
        if tc.max_grad_norm > 0:
            grad_norm = float(self.acc.clip_grad_norm_(self.unet.parameters(), tc.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.raw_model.parameters())
        self.step_count += 1
        return mean_loss, grad_norm, lr

    def _probe_loss(self, unet: torch.nn.Module) -> Callable[[], torch.Tensor]:
        """A training batch's loss, for :meth:`settle_precision`: the first ``batch_size`` latents (repeated when the
        cache is smaller), noise from its own generator (the run's random streams are untouched)."""
        from ldm.diffusion.objective import diffusion_loss

        n = self.tc.batch_size
        idx = torch.arange(n) % len(self.cache.latents)
        x, y = self.cache.latents[idx].to(self.device), self.cache.labels[idx].to(self.device)
        gen = torch.Generator(device=self.device).manual_seed(0)
        unet.to(self.device).train()
        return lambda: diffusion_loss(unet, self.scheduler, x, y, self.cfg.diffusion, self.null_class_id, gen)

    def train_step(self) -> float:
        loss, grad_norm, lr = self.step()
        self._window.append((loss, grad_norm))
        self._images_window += self.latents_per_step
        self._lr = lr
        return loss

    def _epoch(self) -> float:
        return self.stream.images_seen / self.stream.n

    def extra_stop_reason(self) -> str | None:
        # passes over the cache since the segment started (a continuation counts its own epochs)
        start = self.segment_start_step * self.latents_per_step if len(self.segments) > 1 else 0
        if self.tc.epochs > 0 and self.stream.images_seen - start >= self.tc.epochs * self.stream.n:
            return f"reached epochs={self.tc.epochs}"
        return None

    def budget(self) -> dict[str, Any]:
        return {**super().budget(), "epochs": self.tc.epochs}

    def status_extra(self) -> dict[str, Any]:
        return {"epoch": round(self._epoch(), 4)}

    # -- the periodic work after a step: log, sample grid, quick evaluation, checkpoint ----------------------------

    def begin(self) -> None:
        from ldm.models.unet import describe_unet

        if self.main:
            self.log(
                f"training on {len(self.cache.latents)} latents {self.latent_shape} x {self.num_classes} classes "
                f"({', '.join(self.classes[:8])}{', ...' if self.num_classes > 8 else ''}) from {self.latents_path}"
            )
            self.log(describe_unet(self.raw_model))
            self.log(
                f"device {self.device} x {self.world} process(es), mixed precision {self.mixed_precision}; "
                f"{self.latents_per_step} latents per optimiser step; stop at {self.budget_text()}"
                + (f" (~{self.horizon} steps)" if self.horizon else "")
            )
        self._window: list[tuple[float, float | None]] = []
        self._t_window = time.monotonic()
        self._images_window = 0
        self.records = self.run_folder.read_metrics() if self.main else []
        self.last_grid: Path | None = None
        self.last_sample_step = -1
        self.last_sample_seconds = self.elapsed_before  # training time at the last grid (or at this start)

    def after_step(self, at_end: bool) -> None:
        tc = self.tc
        if at_end or (tc.log_every > 0 and self.step_count % tc.log_every == 0):
            self.log_window(force_plot=at_end)
        # by steps, and by time: a slow machine or a short run still shows a grid every few minutes
        # (one process only: processes' clocks differ, and a grid is a step every process must take together)
        due_by_time = (
            self.world == 1
            and tc.sample_minutes > 0
            and self._elapsed() - self.last_sample_seconds >= 60 * tc.sample_minutes
        )
        if ((tc.sample_every > 0 and self.step_count % tc.sample_every == 0) or due_by_time) and not at_end:
            self.save_samples()
        if tc.eval_every > 0 and self.step_count % tc.eval_every == 0:
            self.evaluate()
        if tc.checkpoint_every > 0 and self.step_count % tc.checkpoint_every == 0 and not at_end:
            self.checkpoint_and_export()

    def log_window(self, force_plot: bool = False) -> None:
        """One metrics record: the means over the steps since the last one; the log line, loss.png, status.json."""
        now = time.monotonic()
        window, lr = self._window, self._lr
        norms = [g for _, g in window if g is not None]
        record = {
            "step": self.step_count,
            "epoch": round(self._epoch(), 4),
            "loss": sum(v for v, _ in window) / len(window),
            "lr": lr,
            "grad_norm": sum(norms) / len(norms) if norms else None,
            "images_per_sec": round(self._images_window / max(now - self._t_window, 1e-9), 2),
            "elapsed": round(self._elapsed(), 2),
        }
        self.last_loss = record["loss"]
        self._window, self._t_window, self._images_window = [], now, 0
        if self.main:
            eta = self._eta()
            self.log(
                f"step {record['step']} epoch {record['epoch']:.2f} loss {record['loss']:.4f} "
                f"lr {lr:.2e} grad_norm {record['grad_norm'] or 0:.3f} "
                f"{record['images_per_sec']:.1f} img/s elapsed {record['elapsed'] / 60:.1f} min"
                + (f" eta {eta / 60:.1f} min" if eta is not None else ""),
                echo=self.bar is None,  # the bar shows it already
            )
            self.run_folder.append_metrics(record)
            self.records.append(record)
            self._plot(self.records, force=force_plot)
            self.status("running", "training", loss=record["loss"])
            self.bar_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
        if self.on_log is not None:
            self.on_log(record)

    def save_samples(self) -> None:
        if self.main:
            self.last_grid = self.sample_grid()
            self.last_sample_step = self.step_count
            self.last_sample_seconds = self._elapsed()
            self.log(f"step {self.step_count}: samples -> {self.last_grid}")
        self.acc.wait_for_everyone()

    def evaluate(self) -> None:
        """The quick evaluation (main process); every process waits for it with its clock paused, so that all of
        them keep the same training time (the others would otherwise reach max_minutes first)."""
        t_eval = time.monotonic()
        if self.evaluator is not None:
            self._evaluate_and_log()
        self.acc.wait_for_everyone()
        self.t0 += time.monotonic() - t_eval  # the time budget is for training

    def _evaluate_and_log(self) -> None:
        from ldm.figures import plot_eval_metrics

        row = self.quick_eval()
        self.run_folder.append_metrics(row)
        self.records.append(row)
        plot_eval_metrics(self.records, self.run_folder.eval_plot_path)
        self.log(
            f"step {self.step_count}: KID {row['eval_kid']:.4f} +- {row['eval_kid_std']:.4f}, class "
            f"accuracy {row['eval_class_accuracy']:.2f} ({row['eval_num_samples']} samples, "
            f"{row['eval_seconds']:.0f} s, not counted in max_minutes) -> {self.run_folder.eval_plot_path.name}"
        )

    def checkpoint_and_export(self) -> None:
        self.save_checkpoint()
        if self.main:
            self.export()
            self.log(f"step {self.step_count}: checkpoint -> {self.last_ckpt}, pipeline exported")

    def finish(self, state: str, reason: str) -> TrainResult:
        """The end, whatever ended it: a final checkpoint, a final grid, the export."""
        self.checkpoint_unless_saved()
        pipeline_dir = None
        if self.main:
            if self.last_sample_step != self.step_count:
                self.last_grid = self.sample_grid()
            pipeline_dir = self.export()
            msg = f"{state} at step {self.step_count} ({reason}) after {self._elapsed() / 60:.1f} min"
            self.log(f"{msg}; checkpoint {self.last_ckpt}, samples {self.last_grid}, pipeline {pipeline_dir}")
        else:
            msg = f"{state} at step {self.step_count}"
        self.acc.wait_for_everyone()
        self.status(state, msg, loss=self.last_loss)
        return TrainResult(
            run_dir=self.out,
            state=state,
            step=self.step_count,
            epoch=self._epoch(),
            loss=self.last_loss,
            elapsed_seconds=self._elapsed(),
            checkpoint=self.last_ckpt,
            pipeline_dir=pipeline_dir,
            sample_grid=self.last_grid,
            message=msg,
        )

    def _plot(self, records: list[dict[str, Any]], force: bool = False) -> None:
        """Redraw loss.png; between forced redraws, at most once per max(10 s, 30x the last draw's duration), so
        plotting costs a few percent of the run at most, even with log_every=1 (the app draws its own curve)."""
        now = time.monotonic()
        if not force and now - self._plot_at < max(10.0, 30 * self._plot_cost):
            return
        plot_loss(records, self.run_folder.loss_plot_path, title=self.out.name)
        self._plot_at = time.monotonic()
        self._plot_cost = self._plot_at - now

    # -- the loop ---------------------------------------------------------------------------------------------------

    # -- EMA model, samples, checkpoints, export ----------------------------------------------------------------------

    def _eval_unet(self) -> torch.nn.Module:
        """A separate float32 copy of the UNet holding the EMA weights (or the raw weights without EMA)."""
        if getattr(self, "_eval", None) is None:
            self._eval = type(self.raw_model).from_config(self.raw_model.config).to(self.device)
            self._eval.eval().requires_grad_(False)
        if self.ema is not None:
            self.ema.copy_to(self._eval.parameters())
        else:
            self._eval.load_state_dict(self.raw_model.state_dict())
        return self._eval

    def training_source(self) -> dict[str, Any]:
        """The latent cache and its autoencoder: enough to export and inspect the run without the cache."""
        m = self.cache.manifest
        return {
            "latents": {
                "path": str(self.latents_path.resolve()),
                "data_dir": m.data_dir,
                "data_fingerprint": m.data_fingerprint,
                "listing_fingerprint": m.listing_fingerprint,
                "num_latents": len(self.cache.latents),
                "latent_shape": list(self.latent_shape),
                # what the exported model card says about the data, kept for when the cache is gone
                "counts": m.counts,
                "image_size": m.image_size,
                "channels": m.channels,
            },
            "autoencoder": {k: getattr(m.autoencoder, k) for k in ("source", "class_name", "content_hash", "folder")},
            "scaling_factor": float(self.cache.scaling_factor),
        }

    def _vae(self) -> Any:
        if self.vae is None:
            from ldm.models.autoencoder import load_autoencoder

            source = self.cache.manifest.autoencoder.source
            if not source:
                raise UserError(f"the latent cache manifest {self.latents_path} names no autoencoder source")
            self.vae = load_autoencoder(source, device=self.device).model
        return self.vae

    def _make_evaluator(self) -> Any:
        """The :class:`ldm.evaluation.report.QuickEvaluator` of ``training.eval_every`` (real images, their Inception
        features and the class classifier are loaded or computed once, here, and cached per dataset)."""
        from ldm.evaluation.report import QuickEvaluator

        tc, m = self.tc, self.cache.manifest
        real = tc.eval_data or m.data_dir or ""
        if not real or not Path(real).is_dir():
            raise UserError(
                f"training.eval_every={tc.eval_every} needs the real images: training.eval_data="
                f"{tc.eval_data!r} and the latent cache's data_dir={m.data_dir!r} is not a folder; set "
                "training.eval_data=DIR (one subfolder per class) or training.eval_every=0"
            )
        self.log(f"quick evaluation every {tc.eval_every} steps: {tc.eval_num_samples} samples against {real}")
        return QuickEvaluator(
            real,
            image_size=int(m.image_size or self.cfg.data.image_size),
            channels=int(m.channels or self.cfg.data.channels),
            num_samples=tc.eval_num_samples,
            scheduler=tc.sample_scheduler,
            num_inference_steps=tc.sample_num_inference_steps,
            guidance_scale=tc.sample_guidance_scale,
            seed=tc.sample_seed,
            device=str(self.device),
            log=self.log,
        )

    def quick_eval(self) -> dict[str, Any]:
        """Small-sample KID and class accuracy of the EMA weights; the row appended to metrics.jsonl."""
        from ldm.evaluation.report import quick_eval

        res = quick_eval(self.evaluator, self.pipeline(self.tc.sample_scheduler))
        return {"step": self.step_count, "elapsed": round(self._elapsed(), 2), **res}

    def pipeline(self, scheduler: str) -> Any:
        """The EMA weights (a float32 copy), the cache's autoencoder and the sampler ``scheduler`` as a
        :class:`~ldm.diffusion.pipeline.ClassConditionalLatentDiffusionPipeline` (in memory, nothing saved)."""
        from ldm.diffusion.pipeline import build_pipeline

        return build_pipeline(
            self._eval_unet(),
            self._vae(),
            self.scheduler.config,
            self.classes,
            float(self.cache.scaling_factor),
            scheduler=scheduler,
        )

    def sample_grid(self) -> Path:
        """Decode a fixed-noise grid (one row per class, same seeds in every row) with the EMA weights."""
        tc = self.tc
        cols = max(1, tc.sample_num_images)
        result = self.pipeline(tc.sample_scheduler)(
            [k for k in range(self.num_classes) for _ in range(cols)],
            num_inference_steps=tc.sample_num_inference_steps,
            guidance_scale=tc.sample_guidance_scale,
            seeds=[tc.sample_seed + j for _ in range(self.num_classes) for j in range(cols)],
        )
        rows = [result.images[k * cols : (k + 1) * cols] for k in range(self.num_classes)]
        title = (
            f"step {self.step_count}, {'EMA' if self.ema is not None else 'raw'} weights, {tc.sample_scheduler} "
            f"{tc.sample_num_inference_steps} steps, guidance {tc.sample_guidance_scale:g}, "
            f"seeds {tc.sample_seed}..{tc.sample_seed + cols - 1}"
        )
        path = self.run_folder.sample_grid_path(self.step_count)
        save_png(labelled_grid(rows, self.classes, title=title), path)
        return path

    def export(self) -> Path:
        """Write the EMA model as a diffusers pipeline into ``out/pipeline`` (atomically), with its model card
        (:mod:`ldm.model_card`; the facts of the checkpoint just written)."""
        from ldm.model_card import write_model_card

        pipe = self.pipeline(self.cfg.sampling.scheduler)
        final = self.run_folder.pipeline_dir
        with atomic_dir(final) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            write_model_card(tmp, self.run_folder, self.last_ckpt, name=self.run_folder.name, previous=final)
        return final


def train(cfg: Config, latents: str | Path, out: str | Path, **options: Any) -> TrainResult:
    """Train a class-conditional UNet on the latent cache ``latents``, writing the run folder ``out``.

    Args:
        cfg: the full config (``unet``, ``diffusion``, ``training`` and ``sampling`` sections are used).
        latents: a latent cache folder (``ldm prepare``); its manifest gives the class names (any number) and the
            autoencoder used to decode sample grids and exported with the model.
        out: the run folder (see :mod:`ldm.run_folder`). If it already holds checkpoints, ``resume`` is required.
        options: keyword arguments of :class:`Trainer`:
            ``resume``: ``"latest"`` (newest complete checkpoint of ``out``), a checkpoint folder or another run
            folder. The continuation is exact: same next loss as the uninterrupted run with the same config.
            ``should_stop``: polled after every step; when it returns True the run finishes the step, saves a
            checkpoint and the export, and returns with ``state="stopped"`` (the CLI wires SIGINT/SIGTERM to it).
            ``progress``: show a progress bar and echo the log (default True).
            ``on_log``: called with every metrics record (``step, epoch, loss, lr, grad_norm, images_per_sec,
            elapsed``).
            ``device``: ``"cpu"`` forces the CPU; None lets accelerate pick (CUDA when present).

    Raises:
        UserError: bad config, existing run without ``resume``, a checkpoint that does not fit the cache.
        TrainingDiverged: the loss became NaN/inf (status "failed"; the last good checkpoint is kept).
    """
    trainer = Trainer(cfg, latents, out, **options)
    trainer.setup()
    return trainer.run()
