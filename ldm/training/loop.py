"""The training skeleton both stages share: accelerate, run folder, budgets, status, checkpoints, resume, safe stop.

A stage (the diffusion :class:`ldm.training.trainer.Trainer`, the autoencoder's
:class:`ldm.training.autoencoder.AutoencoderTrainer`) subclasses :class:`TrainingLoop` and supplies its models and
optimisers (``setup``), one optimiser step (``train_step``), its periodic work after a step (``after_step``: log,
grids, evaluation, checkpoints) and its end products (``finish``). The loop is written once, :meth:`TrainingLoop.run`::

    while reason is None:
        loss = self.train_step()          # one optimiser step, bookkeeping of its numbers
        reason = self.stop_reason()       # budget reached or stop requested (Ctrl-C, the app's Stop)
        self.after_step(at_end=reason is not None)

A run is trained in one or more *segments*: the first from step 0 with the config's budget; each later one
(``continue_training=True``: ``ldm train --resume latest --max-minutes M``, the app's "Continue training") adds its
budget on top of the resumed step, with a learning-rate segment of its own (:meth:`TrainingLoop.lr_multiplier`).
A plain resume continues the current segment, so a stopped run finishes the budget it was started with.

A checkpoint (:meth:`ldm.run_folder.RunFolder.checkpoint_dir`) holds the raw weights, the EMA, the optimiser(s),
the RNG states and a state file (written last: its presence marks the checkpoint complete) with the step, the elapsed
time and the stage's own fields; the run folder's ``latest`` pointer names the newest. Resuming restores all of it,
so the next loss equals the uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.config import Config
from ldm.device import CpuBf16
from ldm.errors import UserError
from ldm.run_folder import RunFolder
from ldm.utils import atomic_dir, check_output_folder

CHECKPOINT_FORMAT = 1
# Peak learning rate of a continuation segment, as a share of the config's: the model has settled at the end of the
# previous segment's cosine, and a restart at the full peak throws part of that away (a short warm-up to this peak,
# then a cosine to zero at the continuation's end).
CONTINUE_LR_SHARE = 0.5


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""


class BatchStream:
    """Endless stream of index batches over ``n`` items: a fresh permutation per epoch, seeded by (seed, epoch).

    The position is ``(epoch, offset)``; the permutation of an epoch is recomputed from the seed, so the state is two
    integers. A batch that runs past the end of an epoch continues into the next one (every batch has the same
    size, and no image is dropped, even when the cache is smaller than a batch).
    """

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("BatchStream needs at least one item")
        self.n, self.seed = n, seed
        self.epoch, self.offset = 0, 0
        self._perm: torch.Tensor | None = None

    def _permutation(self) -> torch.Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.n, generator=g)
        return self._perm

    def next(self, k: int) -> torch.Tensor:
        """The next ``k`` indices, LongTensor ``(k,)`` in ``[0, n)``."""
        parts, need = [], k
        while need > 0:
            perm = self._permutation()
            take = min(need, self.n - self.offset)
            parts.append(perm[self.offset : self.offset + take])
            self.offset += take
            need -= take
            if self.offset == self.n:
                self.epoch, self.offset, self._perm = self.epoch + 1, 0, None
        return torch.cat(parts)

    @property
    def images_seen(self) -> int:
        return self.epoch * self.n + self.offset

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "n": self.n, "seed": self.seed}

    def load_state_dict(self, d: dict[str, int]) -> None:
        if d["n"] != self.n:
            raise UserError(f"the checkpoint was trained on a cache of {d['n']} latents, this cache has {self.n}")
        self.epoch, self.offset, self._perm = int(d["epoch"]), int(d["offset"]), None


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a step draws from: python, numpy, torch (CPU and CUDA) and the stage's ``generator``."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "noise": generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["noise"])


def _same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two processes' saved states hold the same stage generator (the stream a step's noise comes from)."""
    return torch.equal(a["noise"], b["noise"])


def make_ema(model: torch.nn.Module, decay: float, warmup: bool = True, power: float = 0.75) -> Any:
    """diffusers' ``EMAModel`` of ``model``'s parameters: ``use_ema_warmup`` decay ``1 - (1 + t) ** -power``, else
    ``(1 + t) / (10 + t)``, both capped at ``decay``; one multi-tensor update per step."""
    from diffusers.training_utils import EMAModel

    return EMAModel(
        model.parameters(),
        decay=decay,
        use_ema_warmup=warmup,
        inv_gamma=1.0,
        power=power,
        foreach=True,  # one multi-tensor update instead of a Python loop over hundreds of tensors
        model_cls=type(model),
        model_config=model.config,
    )


def load_ema(ema: Any, folder: Path, model: torch.nn.Module) -> None:
    """Restore ``ema`` from a checkpoint's EMA folder (``EMAModel.save_pretrained``), or start the average from
    ``model``'s weights when the checkpoint has none (it was trained without EMA)."""
    from safetensors.torch import load_file

    if folder.is_dir():
        # Read the folder directly (EMAModel.from_pretrained warns about its own config keys).
        weights = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
        ema.shadow_params = [weights[name].clone().to(p.device) for name, p in model.named_parameters()]
        ema.optimization_step = int(json.loads((folder / "config.json").read_text())["optimization_step"])
    else:
        ema.shadow_params = [p.detach().clone() for p in model.parameters()]


class TrainingLoop:
    """One training run of a stage: the shared skeleton (see the module docstring).

    Subclasses set ``kind`` and ``section`` and implement ``check_config``, ``load_source`` (which sets
    ``max_steps``, ``max_minutes`` and ``horizon``: steps of the whole run, None when only time bounds it), ``setup``
    (models, optimisers, EMA; restores a checkpoint), ``train_step``, ``after_step``, ``save_state`` and ``finish``.
    """

    kind = ""  # "diffusion" or "autoencoder", recorded in status.json and in every checkpoint's state.json
    section = ""  # the config section of the stage's settings (mixed_precision, keep_checkpoints, ...)
    cpu_bf16: CpuBf16 = "kernels"  # what bf16 autocast needs on a CPU to pay for this stage (see ldm.device)
    label = "train"  # progress bar description
    shared_rng = False  # True: every process has the same random stream, so a resume may change the process count
    weights = ""  # a checkpoint's folder of the raw weights (``save_pretrained``); the EMA's is ``<weights>_ema``

    def __init__(
        self,
        cfg: Config,
        source: str | Path,
        out: str | Path,
        resume: str | Path | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: bool = True,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        device: str | None = None,
        continue_training: bool = False,
    ):
        """``cfg``: the full config; ``source``: what the stage trains on (a latent cache, an image folder); ``out``:
        the run folder; ``resume``: ``"latest"``, a run or checkpoint folder; ``should_stop``: polled after every
        step; ``progress``: a progress bar and the log echoed; ``on_log``: called with every metrics record;
        ``device``: ``"cpu"`` forces the CPU, None lets accelerate pick (CUDA when present); ``continue_training``
        (with ``resume``): the config's budget is trained *on top of* the resumed step, as a new segment."""
        self.cfg = cfg
        settings = getattr(cfg, self.section)
        self.check_config()
        self.out = Path(out)
        self.run_folder = RunFolder(self.out)
        self.should_stop = should_stop or (lambda: False)
        self.progress, self.on_log = progress, on_log
        self.keep_checkpoints = settings.keep_checkpoints
        from ldm.device import resolve_device

        # a typo or a GPU this machine does not have is an error, not a run on the CPU with another precision;
        # unset or "auto": CUDA when there is a GPU, else the CPU (training on Apple's MPS only when asked for)
        flag = "--device" if device else f"{self.section}.device"
        device = device or getattr(settings, "device", None)
        if device in (None, "", "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = resolve_device(device, flag)

        # Refuse before touching anything: a run folder with checkpoints is only continued on request.
        check_output_folder(self.out)
        self.resume_from: Path | None = None
        if continue_training and resume is None:
            raise UserError("continuing a run needs the checkpoint to continue from (resume)")
        self.continue_training = continue_training
        if resume is not None:
            self.resume_from = self.run_folder.resolve_resume(resume)
        elif (problem := self.run_folder.existing_run_problem()) is not None:
            raise UserError(problem)

        from accelerate import Accelerator

        from ldm.device import resolve_mixed_precision

        want_cpu = device == "cpu"
        probe = device
        key = f"{self.section}.mixed_precision"
        self.mixed_precision = resolve_mixed_precision(settings.mixed_precision, probe, key, self.cpu_bf16)
        from accelerate.state import AcceleratorState

        if AcceleratorState._shared_state.get("_mixed_precision", self.mixed_precision) != self.mixed_precision:
            # accelerate keeps one precision per process; a process that trains again with another one (the two
            # stages of `ldm quickstart`, tests, notebooks) starts from a fresh accelerator state
            AcceleratorState._reset_state()
        self.acc = Accelerator(mixed_precision=self.mixed_precision, cpu=want_cpu)
        self.main = self.acc.is_main_process
        self.device = self.acc.device
        self.world = self.acc.num_processes

        self.log = self.run_folder.log(echo=self._echo if self.main else None)
        self.precision_probe: dict[str, float] | None = None  # set by settle_precision when it measured
        self.bar = None
        self.step_count = 0
        self.start_step = 0
        self.elapsed_before = 0.0  # training seconds spent before this process (resume)
        self.last_loss: float | None = None
        # the budget of the current segment, counted from its start (set by load_source; see the module docstring)
        self.max_steps, self.max_minutes, self.horizon = 0, 0.0, None
        self.segments: list[dict[str, Any]] = [{"start_step": 0, "start_seconds": 0.0}]
        self.generator: torch.Generator | None = None  # the stage's own random source, saved with checkpoints
        self.last_ckpt: Path | None = None  # the newest checkpoint of this run and its step
        self.last_ckpt_step = -1
        self.t0 = time.monotonic()  # reset by run(); set here so step() works on its own (benchmarks)
        self.load_source(Path(source))

    # -- stage hooks --------------------------------------------------------------------------------------------------

    def check_config(self) -> None:
        """Raise UserError for settings that cannot train, before anything is touched."""

    def load_source(self, source: Path) -> None:
        """Read what the stage trains on; set the segment's budget ``max_steps``, ``max_minutes`` and ``horizon``
        (steps until the budget ends it, None when only time bounds it), all counted from the segment's start."""
        raise NotImplementedError

    def train_step(self) -> float:
        """One optimiser step and its bookkeeping; returns the loss (mean over processes)."""
        raise NotImplementedError

    def extra_stop_reason(self) -> str | None:
        """A stage's own budget (the diffusion trainer's epochs), checked with max_steps and max_minutes."""
        return None

    def after_step(self, at_end: bool) -> None:
        """Periodic work after a step (log, grids, evaluation, checkpoints); ``at_end``: the loop ends after it."""

    def begin(self) -> None:
        """Log what is trained, before the first step."""

    def finish(self, state: str, reason: str) -> Any:
        """The end products, whatever ended the run; returns the stage's result."""
        raise NotImplementedError

    def save_state(self, folder: Path) -> dict[str, Any]:
        """Write the stage's other files into a checkpoint folder (the raw weights, EMA, optimiser and RNG states are
        written by :meth:`save_checkpoint`); return its own fields of the checkpoint's state file."""
        raise NotImplementedError

    def training_source(self) -> dict[str, Any]:
        """What the stage trains on, for ``inputs.json`` (the latent cache, or the image folder)."""
        raise NotImplementedError

    def settle_precision(self, model: torch.nn.Module, probe_loss: Callable[[], torch.Tensor]) -> None:
        """``mixed_precision: auto`` where the CPU rule picked bf16: keep bf16 only if it is faster for this stage's
        own model and batch. A CPU flag is not a speed: on an Intel Xeon with avx512_bf16, bf16 autocast made the
        diffusion step slower (0.86x), on an AMD EPYC with the same flag faster (docs/benchmarks.md). So one forward
        and backward of ``probe_loss()`` is timed in float32 and under bf16 autocast, interleaved, best of three
        each, before the first step (about a second); the gradients are cleared, the weights untouched. One process
        only: processes measuring apart could disagree, and accelerate needs one precision."""
        from ldm.device import autocast_context

        settings = getattr(self.cfg, self.section)
        if settings.mixed_precision != "auto" or self.mixed_precision != "bf16" or self.device.type != "cpu":
            return
        if self.world > 1:  # the flag rule stands: every process must train in the same precision
            return
        recorded = (self.run_folder.read_inputs() or {}) if self.resume_from is not None else {}
        if recorded.get("mixed_precision") in ("no", "bf16"):  # a resumed run keeps the precision it trained in
            self.precision_probe = recorded.get("mixed_precision_probe")
            self._use_precision(recorded["mixed_precision"])
            return
        best = {"no": math.inf, "bf16": math.inf}
        for _ in range(3):
            for precision in best:
                t0 = time.perf_counter()
                with autocast_context(precision, "cpu"):
                    loss = probe_loss()
                loss.backward()
                best[precision] = min(best[precision], time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        self.precision_probe = {"bf16_seconds": round(best["bf16"], 4), "float32_seconds": round(best["no"], 4)}
        self._use_precision("no" if best["no"] < best["bf16"] else "bf16")
        self.log(
            f"mixed_precision auto: a step took {best['bf16']:.3f} s under bf16 autocast, {best['no']:.3f} s in "
            f"float32: training in {'bf16' if self.mixed_precision == 'bf16' else 'float32'}"
        )

    def _use_precision(self, precision: str) -> None:
        """Train in ``precision`` from now on (before models are prepared): a new accelerator when it changes."""
        if precision == self.mixed_precision:
            return
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        self.mixed_precision = precision
        AcceleratorState._reset_state()
        self.acc = Accelerator(mixed_precision=precision, cpu=self.device.type == "cpu")

    def record_inputs(self) -> None:
        """Write ``inputs.json`` before the first step: the stage's source, then the precision (with the measurement
        that chose it, if any), hardware and library versions the run trains with."""
        from ldm.device import describe_device, library_versions

        self.run_folder.write_inputs(
            {
                **self.training_source(),
                "mixed_precision": self.mixed_precision,
                **({"mixed_precision_probe": self.precision_probe} if self.precision_probe else {}),
                "device": describe_device(self.device),
                "num_processes": self.world,
                "versions": library_versions(),
            }
        )

    def status_extra(self) -> dict[str, Any]:
        """Extra fields of status.json (the diffusion trainer's epoch)."""
        return {}

    # -- output -------------------------------------------------------------------------------------------------------

    def _echo(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)  # above the bar, which is redrawn below it
        elif self.progress:
            print(msg, flush=True)

    def status(self, state: str, message: str = "", loss: float | None = None) -> None:
        self._status_at = time.monotonic()
        if self.main:
            self.run_folder.write_status(
                state,
                step=self.step_count,
                max_steps=self.end_step,
                message=message,
                eta_seconds=self._eta() if state == "running" else 0.0 if state == "finished" else None,
                kind=self.kind,
                **self.status_extra(),
                loss=loss,
                elapsed_seconds=round(self._elapsed(), 1),
                max_minutes=self.max_minutes or None,
                segments=self.segments,
            )

    def open_bar(self) -> None:
        self.bar = None
        if self.main and self.progress:
            from ldm.progress import progress_bar

            self.bar = progress_bar(
                total=self.end_step, initial=self.step_count, unit="step", desc=self.label, dynamic_ncols=True
            )

    def bar_postfix(self, **values: str) -> None:
        """Numbers beside the bar; with a time budget only (no total) also the time left."""
        if self.bar is None:
            return
        eta = self._eta()
        if self.horizon is None and eta is not None:
            values["left"] = time.strftime("%M:%S", time.gmtime(eta))
        self.bar.set_postfix(values)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -- timing and budgets -------------------------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.t0)

    @property
    def segment_start_step(self) -> int:
        return int(self.segments[-1]["start_step"])

    @property
    def end_step(self) -> int | None:
        """The step at which the current segment's step budget ends it (None when only time bounds it)."""
        return None if self.horizon is None else self.segment_start_step + self.horizon

    def _segment_seconds(self) -> float:
        """Training seconds of the current segment so far."""
        return self._elapsed() - float(self.segments[-1]["start_seconds"])

    def _time_fraction(self) -> float:
        """Elapsed share of the segment's ``max_minutes`` budget (0 without one)."""
        if self.max_minutes <= 0:
            return 0.0
        return self._segment_seconds() / (60.0 * self.max_minutes)

    def lr_multiplier(
        self, warmup_steps: int, schedule: str, horizon: int | None, time_fraction: float, **kw: Any
    ) -> float:
        """:func:`ldm.training.optim.lr_factor` within the current segment (step and ``horizon`` counted from its
        start), times :data:`CONTINUE_LR_SHARE` in a continuation segment."""
        from ldm.training.optim import lr_factor

        step = self.step_count - self.segment_start_step
        factor = lr_factor(step, warmup_steps, schedule, horizon, time_fraction, **kw)
        return factor * (CONTINUE_LR_SHARE if len(self.segments) > 1 else 1.0)

    def _eta(self) -> float | None:
        done = self.step_count - self.start_step
        if done <= 0:
            return None
        per_step = (time.monotonic() - self.t0) / done
        etas = []
        if self.end_step is not None:
            etas.append(max(0, self.end_step - self.step_count) * per_step)
        if self.max_minutes > 0:
            etas.append(max(0.0, 60.0 * self.max_minutes - self._segment_seconds()))
        return min(etas) if etas else None

    def _budget_reason(self) -> str | None:
        of = " of this continuation" if len(self.segments) > 1 else ""
        if self.max_steps > 0 and self.step_count - self.segment_start_step >= self.max_steps:
            return f"reached max_steps={self.max_steps}{of}"
        if (reason := self.extra_stop_reason()) is not None:
            return reason + of
        if self.max_minutes > 0 and self._segment_seconds() >= 60.0 * self.max_minutes:
            return f"reached max_minutes={self.max_minutes:g}{of}"
        return None

    def stop_reason(self) -> tuple[str | None, str]:
        """(why the loop ends after this step or None, the final state "finished" or "stopped")."""
        reason, state = self._budget_reason(), "finished"
        if reason is None and self.should_stop():
            reason, state = "stop requested", "stopped"
        if self.world > 1:
            # Several processes: stop all of them if any wants to (clocks and signals differ per process; a process
            # leaving the loop alone would hang the others in the next gradient all-reduce).
            flags = torch.tensor([float(reason is not None), float(state == "stopped")], device=self.device)
            flags = self.acc.reduce(flags, "sum")
            if flags[0] > 0 and reason is None:
                reason = "stop requested" if flags[1] > 0 else "another process reached the budget"
            state = "stopped" if flags[1] > 0 else state
        return reason, state

    def check_finite(self, loss: float) -> None:
        """NaN/inf loss: say so in the log and status.json and raise, keeping the last good checkpoint."""
        if math.isfinite(loss):
            return
        good = self.run_folder.checkpoints()
        msg = (
            f"loss is {loss} at step {self.step_count + 1}: training diverged; nothing was saved after "
            f"the last good checkpoint ({good[-1].name if good else 'none'}). {self.divergence_hint} "
            "--resume latest"
        )
        self.log(msg)
        self.status("failed", msg, loss=self.last_loss)
        raise TrainingDiverged(msg)

    divergence_hint = "Try a lower learning rate or mixed_precision=no, then"

    # -- checkpoints --------------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-XXXXXX/`` atomically (state.json last), point ``latest`` at it, prune old ones.

        The random states of every process go into ``rng.pt`` (``self.generator`` is the stage's own generator)."""
        rng = {"per_process": [rng_state(self.generator)]}
        if self.world > 1:
            from accelerate.utils import gather_object

            rng = {"per_process": gather_object([rng_state(self.generator)])}
        final = self.run_folder.checkpoint_dir(self.step_count)
        if self.main:
            try:
                with atomic_dir(final) as tmp:
                    self.raw_model.save_pretrained(tmp / self.weights, safe_serialization=True)
                    if self.ema is not None:
                        self.ema.save_pretrained(str(tmp / f"{self.weights}_ema"))
                    torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                    torch.save(rng, tmp / "rng.pt")
                    fields = self.save_state(tmp)
                    state = {
                        "files": RunFolder.file_sizes(tmp),  # checked before a resume loads them
                        "format_version": CHECKPOINT_FORMAT,
                        "kind": self.kind,
                        "step": self.step_count,
                        "elapsed_seconds": self._elapsed(),
                        "loss": self.last_loss,
                        "num_processes": self.world,
                        "mixed_precision": self.mixed_precision,
                        "segments": self.segments,
                        **fields,
                    }
                    RunFolder.write_checkpoint_state(tmp, self.out, state)
            except OSError as e:  # disk full, permissions: the half-written folder is gone, older ones stay
                good = self.run_folder.checkpoints()
                msg = (f"could not write checkpoint {final.name} ({e.strerror or e}); the newest good one is "
                       f"{good[-1].name if good else 'none'}")  # fmt: skip
                self.log(msg)
                self.status("failed", msg, loss=self.last_loss)
                raise UserError(msg) from None
            self.run_folder.mark_latest(final)
            self.run_folder.prune_checkpoints(self.keep_checkpoints)
        self.acc.wait_for_everyone()
        self.last_ckpt, self.last_ckpt_step = final, self.step_count
        return final

    def checkpoint_unless_saved(self) -> Path:
        """The checkpoint of the current step: written now unless it already exists (the end of a run)."""
        if self.last_ckpt_step != self.step_count:
            self.save_checkpoint()
        return self.last_ckpt

    def read_checkpoint_state(self) -> dict[str, Any]:
        """``state.json`` of the checkpoint being resumed; restores the step, elapsed time and last loss."""
        state = RunFolder.read_checkpoint_state(self.resume_from)
        kind = state.get("kind", "diffusion")
        if kind != self.kind:
            raise UserError(f"cannot resume from {self.resume_from}: it is a checkpoint of {kind} training")
        self.step_count = int(state["step"])
        self.elapsed_before = float(state.get("elapsed_seconds", 0.0))
        self.last_loss = state.get("loss")
        self.segments = [dict(seg) for seg in state.get("segments") or self.segments]
        if self.continue_training:
            self.segments[-1].setdefault("end_step", self.step_count)
            self.segments.append({"start_step": self.step_count, "start_seconds": self.elapsed_before})
        seg = self.segments[-1]
        seg.update(self.budget())  # a plain resume may change the budget of the segment it continues
        return state

    def budget(self) -> dict[str, Any]:
        """The current segment's budget as recorded in ``segments`` (status.json, checkpoints)."""
        return {"max_steps": self.max_steps, "max_minutes": self.max_minutes}

    def budget_text(self) -> str:
        """The current segment's budget in words, e.g. "max_minutes=2 or max_steps=500"."""
        return " or ".join(f"{k}={v:g}" for k, v in self.budget().items() if v) or "no limit"

    def load_weights(self, model: torch.nn.Module) -> None:
        """Load the resumed checkpoint's raw weights into ``model`` and its EMA into ``self.ema``."""
        from safetensors.torch import load_file

        weights = self.resume_from / self.weights / "diffusion_pytorch_model.safetensors"
        model.load_state_dict(load_file(str(weights)))
        if self.ema is not None:
            load_ema(self.ema, self.resume_from / f"{self.weights}_ema", model)

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.load_state_dict(
            torch.load(self.resume_from / "optimizer.pt", map_location="cpu", weights_only=False)
        )

    def restore_rng(self, reseed: Callable[[], None]) -> None:
        """Set this process's random states from the resumed checkpoint's ``rng.pt``; with another number of
        processes than wrote it, call ``reseed`` instead (and say that the continuation is not bit-identical)."""
        states = torch.load(self.resume_from / "rng.pt", map_location="cpu", weights_only=False)["per_process"]
        if len(states) == self.world:
            set_rng_state(states[self.acc.process_index], self.generator)
        elif self.shared_rng and all(_same_state(s, states[0]) for s in states):
            set_rng_state(states[0], self.generator)  # the stream all of them shared: any process count continues it
        else:
            self.log(
                f"warning: the checkpoint was written by {len(states)} process(es), this run has {self.world}; "
                "random generators reseeded from (seed, step), so the continuation is not bit-identical"
            )
            reseed()

    # -- the loop -----------------------------------------------------------------------------------------------------

    def run(self) -> Any:
        """Train until a budget is reached or a stop is requested; then save and return :meth:`finish`'s result."""
        self.t0 = time.monotonic()
        self.start_step = self.step_count
        self._start()
        reason, state = self._done_already(), "finished"
        try:
            while reason is None:
                loss = self.train_step()
                self.check_finite(loss)
                if self.bar is not None:
                    self.bar.update(1)
                reason, state = self.stop_reason()
                self.after_step(at_end=reason is not None)
                self._heartbeat(loss)
        except TrainingDiverged:
            raise
        except BaseException as e:
            # Anything else (a bug, KeyboardInterrupt, out of memory): say so in status.json, keep the checkpoints.
            self.status("failed", f"{type(e).__name__}: {e}", loss=self.last_loss)
            if self.main:
                self.log(f"failed at step {self.step_count}: {type(e).__name__}: {e}")
            raise
        finally:
            self.close_bar()
        self.segments[-1].update(end_step=self.step_count, end_seconds=round(self._elapsed(), 1), end=reason)
        self.status("running", f"{reason}: saving", loss=self.last_loss)
        return self.finish(state, reason)

    def _start(self) -> None:
        """Metrics kept up to the resumed step, the stage's log lines, status "running", the progress bar."""
        if self.resume_from is None:
            self.segments = [{"start_step": 0, "start_seconds": 0.0, **self.budget()}]
        if self.main:
            if self.resume_from is not None:
                self.run_folder.truncate_metrics(self.step_count)  # the steps after the checkpoint are trained again
                self.log(f"resuming from {self.resume_from} (step {self.step_count})")
                if self.continue_training:
                    self.log(
                        f"continuing: segment {len(self.segments)} trains {self.budget_text()} more from step "
                        f"{self.step_count}, peak learning rate x{CONTINUE_LR_SHARE:g}"
                    )
            elif self.run_folder.metrics_path.exists():
                # An earlier start of this run died before its first checkpoint: its metrics describe nothing kept.
                self.run_folder.truncate_metrics(0)
                self.log("starting fresh: the earlier attempt in this folder left no checkpoint")
        if (
            self.resume_from is not None
            and RunFolder.of_checkpoint(self.resume_from).path.resolve() == self.out.resolve()
        ):
            self.last_ckpt, self.last_ckpt_step = self.resume_from, self.step_count  # no copy of it at the end
        self.begin()
        self.status("running", "starting")
        self.open_bar()

    STATUS_SECONDS = 2.0  # status.json is rewritten at least this often while training (the app shows it)

    def _heartbeat(self, loss: float) -> None:
        """Keep status.json's step fresh between metrics lines (a slow machine logs every 10 steps = many seconds)."""
        now = time.monotonic()
        if self.main and now - getattr(self, "_status_at", 0.0) >= self.STATUS_SECONDS:
            self.status("running", "training", loss=self.last_loss if self.last_loss is not None else loss)

    def _done_already(self) -> str | None:
        """A resumed run may already be done (``--resume latest`` on a finished run): no step past the budget."""
        reason = self._budget_reason() if self.resume_from is not None else None
        if reason is None:
            return None
        return f"already {reason}: nothing to train; give it more time or steps to continue"
