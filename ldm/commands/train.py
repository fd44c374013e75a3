"""``ldm train``: train the class-conditional diffusion UNet on a latent cache, into a run folder.

    ldm train --latents data/latents/demo --out runs/demo --config configs/demo.yaml
    ldm train --out runs/demo --resume latest                      # after a stop: finish the budget it started with
    ldm train --out runs/demo --resume latest --max-minutes 2      # train 2 minutes more (also after it finished)
    ldm train --latents data/latents/faces --out runs/lr1e-3 --config configs/faces.yaml training.learning_rate=1e-3

Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a checkpoint and the exported pipeline, and exits 0
(status "stopped"); a second Ctrl-C aborts at once (the newest checkpoint stays usable).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldm.commands._common import (
    add_config_arguments,
    add_resume_argument,
    dry_run,
    resolve_training_config,
    run_stoppable,
)
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
    more = "; with --resume: that much more training (a new segment)"
    p.add_argument("--max-steps", type=int, default=None, help=f"stop after N optimiser steps{more}")
    p.add_argument("--epochs", type=int, default=None, help=f"stop after N passes over the cache{more}")
    p.add_argument("--max-minutes", type=float, default=None, help=f"stop after M minutes of training{more}")
    add_resume_argument(p)
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


def run(args: argparse.Namespace) -> int:
    from ldm.errors import UserError

    budget = {"max_steps": args.max_steps, "epochs": args.epochs, "max_minutes": args.max_minutes}
    cfg, ckpt, continuing = resolve_training_config(args, "training", tuple(budget), **budget)
    recorded = None
    if ckpt is not None and args.latents is None:
        # continuing a run: on the cache it was trained on
        recorded = RunFolder.checkpoint_latents(ckpt)
        if recorded is None:
            raise UserError(f"--resume: checkpoint {ckpt} does not record its latent cache; pass --latents CACHE")
        args.latents = str(recorded)
    elif args.latents is None:
        raise UserError("--latents CACHE is required for a new run (a folder made by `ldm prepare`)")
    if dry_run(args, cfg):
        return 0
    if not Path(args.latents).is_dir():
        if recorded is not None:
            raise UserError(
                f"--resume: the run was trained on the latent cache {recorded}, which is no longer there; "
                "pass --latents CACHE (the same images, encoded by the same autoencoder)"
            )
        raise UserError(f"--latents {args.latents}: no such folder (make one with `ldm prepare`)")

    from ldm.training.trainer import train

    def start(stop: Callable[[], bool]) -> Any:
        progress = not args.no_progress
        return train(
            cfg, args.latents, args.out, resume=args.resume, should_stop=stop, progress=progress, device=args.device,
            continue_training=continuing,
        )  # fmt: skip

    result = run_stoppable("train", args.threads, start)
    if result is None:
        return 1
    if args.no_progress:  # with progress on, the trainer's log already echoed it
        print(result.message)
    return 0
