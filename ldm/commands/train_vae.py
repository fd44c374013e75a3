"""``ldm train-vae``: train a diffusers AutoencoderKL from scratch on a class-folder dataset (stage 1 of LDM).

    ldm train-vae --data data/synth-faces --out runs/vae
    ldm train-vae --data faces/ --out runs/vae-faces --max-minutes 20 data.channels=1 autoencoder.down_factor=8
    ldm train-vae --out runs/vae-faces --resume latest                  # after a stop: finish its budget
    ldm train-vae --out runs/vae-faces --resume latest --max-minutes 30 # 30 minutes more, on the data it used
    ldm train-vae --data faces/ --out runs/x --dry-run      # print the resolved config and exit

Ctrl-C (or SIGTERM) stops after the current step and still saves a checkpoint, ``vae/`` and ``eval.json`` (exit 0);
a second Ctrl-C aborts without saving (the newest checkpoint stays usable).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ldm.commands._common import add_config_arguments, add_resume_argument
from ldm.run_folder import RunFolder

HELP = "train an autoencoder (diffusers AutoencoderKL) from scratch on a folder of class folders"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default=None,
        help="dataset folder: one subfolder of images per class (with --resume: by default the one the run used)",
    )
    p.add_argument("--out", required=True, help="run folder to write (e.g. runs/vae); use it later as --vae")
    p.add_argument(
        "--max-minutes", type=float, default=None, help="training time budget (sets autoencoder.max_minutes)"
    )
    p.add_argument("--max-steps", type=int, default=None, help="step budget (sets autoencoder.max_steps)")
    add_resume_argument(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ldm.commands._common import dry_run, resolve_training_config, run_stoppable
    from ldm.errors import UserError

    # autoencoder.max_steps stays as an upper bound of a continuation by time (it must be at least 1)
    budget = {"max_minutes": args.max_minutes, "max_steps": args.max_steps}
    cfg, _, continuing = resolve_training_config(args, "autoencoder", ("max_minutes",), **budget)
    if args.resume is None and args.data is None:
        raise UserError("--data DIR is required for a new run (a folder of class folders)")
    if dry_run(args, cfg):
        return 0

    from ldm.training.autoencoder import train_vae

    def start(stop: Callable[[], bool]) -> dict[str, Any]:
        progress = not args.no_progress
        return train_vae(
            cfg, args.data, args.out, progress=progress, should_stop=stop, resume=args.resume,
            continue_training=continuing,
        )  # fmt: skip

    result = run_stoppable("train-vae", args.threads, start)
    if result is None:
        return 1
    how = "stopped early" if result["stopped_early"] else "finished"
    run = RunFolder(args.out)
    held = (
        f"held-out PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f} on {result['num_holdout']} images"
        if result["num_holdout"]
        else "no held-out images to measure (every class keeps its only images for training)"
    )
    print(
        f"{how} after {result['steps']} steps ({result['train_seconds']:.0f} s): {held}; "
        f"latent {tuple(result['latent_shape'])}, scaling_factor {result['scaling_factor']:.4f}\n"
        f"autoencoder saved in {run.vae_dir} (use --vae {args.out}); reconstructions in {run.recon_dir}/"
    )
    return 0
