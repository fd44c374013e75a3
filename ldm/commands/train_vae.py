"""``ldm train-vae``: train a diffusers AutoencoderKL from scratch on a class-folder dataset (stage 1 of LDM).

    ldm train-vae --data data/synth-faces --out runs/vae
    ldm train-vae --data faces/ --out runs/vae-faces --max-minutes 20 data.channels=1 autoencoder.down_factor=8
    ldm train-vae --out runs/vae-faces --resume latest --max-minutes 30   # continue it, on the data it was trained on
    ldm train-vae --data faces/ --out runs/x --dry-run      # print the resolved config and exit

Ctrl-C (or SIGTERM) stops after the current step and still saves a checkpoint, ``vae/`` and ``eval.json`` (exit 0);
a second Ctrl-C aborts without saving (the newest checkpoint stays usable).
"""

from __future__ import annotations

import argparse
import sys

from ldm.commands._common import (
    StopFlag,
    add_config_arguments,
    dry_run,
    flag_overrides,
    resolve_config,
    resume_with_run_config,
    set_threads,
)

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
    p.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="continue from the newest checkpoint of --out ('latest'), a run folder or a checkpoint folder; "
        "without --config the run's own config.yaml is used",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ldm.errors import UserError

    extra = flag_overrides("autoencoder", max_minutes=args.max_minutes, max_steps=args.max_steps)
    if args.resume is not None:
        resume_with_run_config(args)
    elif args.data is None:
        raise UserError("--data DIR is required for a new run (a folder of class folders)")
    cfg = resolve_config(args, extra)
    if dry_run(args, cfg):
        return 0

    from ldm.training.autoencoder import train_vae
    from ldm.training.loop import TrainingDiverged

    set_threads(args.threads)
    with StopFlag() as stop:
        try:
            result = train_vae(
                cfg, args.data, args.out, progress=not args.no_progress, should_stop=stop, resume=args.resume
            )
        except TrainingDiverged as e:
            print(f"ldm train-vae: error: {e}", file=sys.stderr)
            return 1
    how = "stopped early" if result["stopped_early"] else "finished"
    print(
        f"{how} after {result['steps']} steps ({result['train_seconds']:.0f} s): "
        f"held-out PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f} on {result['num_holdout']} images; "
        f"latent {tuple(result['latent_shape'])}, scaling_factor {result['scaling_factor']:.4f}\n"
        f"autoencoder saved in {args.out}/vae (use --vae {args.out}); reconstructions in {args.out}/recon/"
    )
    return 0
