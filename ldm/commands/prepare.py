"""``ldm prepare``: encode a class-folder dataset into a latent cache (``<cache>/<class>/<n>.npy`` + manifest)."""

from __future__ import annotations

import argparse

from ldm.commands._common import add_config_arguments, dry_run, resolve_config

HELP = "encode a class-folder dataset with a frozen autoencoder into a latent cache"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder: one subfolder of images per class")
    p.add_argument(
        "--vae",
        default=None,
        help="autoencoder: hub id, local diffusers folder or ldm train-vae run folder (default: autoencoder.source)",
    )
    p.add_argument("--out", default=None, help="cache folder (default: data/latents/<name of --data>)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder batch (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache made differently")
    p.add_argument("--no-pack", action="store_true", help="do not write the packed latents.npy/labels.npy")
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ldm.errors import UserError

    cfg = resolve_config(args)
    if args.vae:
        cfg.autoencoder.source = args.vae
    if dry_run(args, cfg):
        return 0
    if not cfg.autoencoder.source:
        raise UserError("no autoencoder given: pass --vae (hub id, diffusers folder or train-vae run folder)")
    out = Path(args.out) if args.out else Path("data/latents") / Path(args.data).resolve().name

    from ldm.data.latents import prepare_latents

    manifest = prepare_latents(
        args.data,
        cfg.autoencoder.source,
        out,
        cfg,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
        pack=not args.no_pack,
    )
    print(manifest.describe(out))
    return 0
