"""``ldm train``: train the class-conditional diffusion UNet on a latent cache, into a run folder.

    ldm train --latents data/latents/demo --out runs/demo --config configs/demo.yaml
    ldm train --out runs/demo --resume latest --max-steps 4000     # the cache the run was trained on
    ldm train --latents data/latents/faces --out runs/lr1e-3 --config configs/faces.yaml training.learning_rate=1e-3

Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a checkpoint and the exported pipeline, and exits 0
(status "stopped"); a second Ctrl-C aborts at once (the newest checkpoint stays usable).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from ldm.commands._common import add_config_arguments, dry_run, resolve_config
from ldm.run_folder import RunFolder

HELP = "train the diffusion model on a latent cache (resumable, safe to stop with Ctrl-C)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--latents",
        default=None,
        metavar="CACHE",
        help="latent cache folder made by `ldm prepare` (with --resume: by default the one the run was trained on)",
    )
    p.add_argument("--out", required=True, metavar="RUN", help="run folder, e.g. runs/NAME")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps (training.max_steps)")
    p.add_argument("--epochs", type=int, default=None, help="stop after N passes over the cache (training.epochs)")
    p.add_argument(
        "--max-minutes", type=float, default=None, help="stop after M minutes of training (training.max_minutes)"
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="continue from the newest checkpoint of --out ('latest'), a run folder or a checkpoint folder; "
        f"without --config the run's own {RunFolder.CONFIG} is used",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: accelerate's choice)")
    p.add_argument(
        "--no-progress", action="store_true", help=f"no progress bar (the log still goes to {RunFolder.LOG})"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0 = torch's default); on a busy shared CPU, 1 can be several times faster",
    )
    add_config_arguments(p)


class _StopFlag:
    """SIGINT/SIGTERM -> a stop request polled by the trainer; a second SIGINT raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.event.set()
        name = signal.Signals(signum).name
        print(
            f"\n{name}: stopping after this step and saving a checkpoint (Ctrl-C again to abort without saving)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def __call__(self) -> bool:
        return self.event.is_set()


def run(args: argparse.Namespace) -> int:
    extra = []
    if args.max_steps is not None:
        extra.append(f"training.max_steps={args.max_steps}")
    if args.epochs is not None:
        extra.append(f"training.epochs={args.epochs}")
    if args.max_minutes is not None:
        extra.append(f"training.max_minutes={args.max_minutes}")
    from ldm.errors import UserError

    recorded = None
    if args.resume is not None:
        # Continuing a run means continuing its recipe: start from its own resolved config, on its own cache.
        ckpt = RunFolder(args.out).resolve_resume(args.resume)
        run_config = RunFolder.of_checkpoint(ckpt).config_path
        if args.config is None and run_config.is_file():
            args.config = str(run_config)
        if args.latents is None:
            recorded = RunFolder.checkpoint_latents(ckpt)
            if recorded is None:
                raise UserError(f"--resume: checkpoint {ckpt} does not record its latent cache; pass --latents CACHE")
            args.latents = str(recorded)
    elif args.latents is None:
        raise UserError("--latents CACHE is required for a new run (a folder made by `ldm prepare`)")
    cfg = resolve_config(args, extra)
    if dry_run(args, cfg):
        return 0
    if not Path(args.latents).is_dir():
        if recorded is not None:
            raise UserError(
                f"--resume: the run was trained on the latent cache {recorded}, which is no longer there; "
                "pass --latents CACHE (the same images, encoded by the same autoencoder)"
            )
        raise UserError(f"--latents {args.latents}: no such folder (make one with `ldm prepare`)")

    import torch

    from ldm.training.trainer import TrainingDiverged, train

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    with _StopFlag() as stop:
        try:
            result = train(
                cfg,
                args.latents,
                args.out,
                resume=args.resume,
                should_stop=stop,
                progress=not args.no_progress,
                device=args.device,
            )
        except TrainingDiverged as e:
            print(f"ldm train: error: {e}", file=sys.stderr)
            return 1
    if args.no_progress:  # with progress on, the trainer's log already echoed it
        print(result.message)
    return 0
