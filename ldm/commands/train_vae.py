"""``ldm train-vae``: train a diffusers AutoencoderKL from scratch on a class-folder dataset (stage 1 of LDM).

    ldm train-vae --data data/synth-faces --out runs/vae
    ldm train-vae --data faces/ --out runs/vae-faces --max-minutes 20 data.channels=1 autoencoder.down_factor=8
    ldm train-vae --data faces/ --out runs/x --dry-run      # print the resolved config and exit

Ctrl-C (or SIGTERM) stops after the current step and still saves ``vae/`` and ``eval.json`` (exit 0);
a second Ctrl-C aborts without saving.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ldm.commands._common import add_config_arguments, dry_run, resolve_config
from ldm.run_folder import RunFolder

HELP = "train an autoencoder (diffusers AutoencoderKL) from scratch on a folder of class folders"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder: one subfolder of images per class")
    p.add_argument("--out", required=True, help="run folder to write (e.g. runs/vae); use it later as --vae")
    p.add_argument(
        "--max-minutes", type=float, default=None, help="training time budget (sets autoencoder.max_minutes)"
    )
    p.add_argument("--max-steps", type=int, default=None, help="step budget (sets autoencoder.max_steps)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(p)


class _StopFlag:
    """First SIGINT/SIGTERM asks the loop to stop after its step (it still saves); a second SIGINT aborts."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.event.set()
        print(
            f"\n{signal.Signals(signum).name}: stopping after this step and saving (Ctrl-C again to abort)",
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
    if args.max_minutes is not None:
        extra.append(f"autoencoder.max_minutes={args.max_minutes}")
    if args.max_steps is not None:
        extra.append(f"autoencoder.max_steps={args.max_steps}")
    cfg = resolve_config(args, extra)
    if dry_run(args, cfg):
        return 0

    import torch

    from ldm.training.autoencoder import train_vae

    if args.threads:
        torch.set_num_threads(args.threads)
    with _StopFlag() as stop:
        result = train_vae(cfg, args.data, args.out, progress=not args.no_progress, should_stop=stop)
    how = "stopped early" if result["stopped_early"] else "finished"
    run = RunFolder(args.out)
    print(
        f"{how} after {result['steps']} steps ({result['train_seconds']:.0f} s): "
        f"held-out PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f} on {result['num_holdout']} images; "
        f"latent {tuple(result['latent_shape'])}, scaling_factor {result['scaling_factor']:.4f}\n"
        f"autoencoder saved in {run.vae_dir} (use --vae {args.out}); reconstructions in {run.recon_dir}/"
    )
    return 0
