"""``ldm export``: write a run's model as a standard diffusers pipeline folder.

    ldm export --run runs/faces --out exported/faces
    ldm export --run runs/faces --checkpoint step-002000 --out exported/faces-2k

Load the result with ``ClassConditionalLatentDiffusionPipeline.from_pretrained(dir)`` (``ldm.diffusion.pipeline``), or
with plain diffusers: ``DiffusionPipeline.from_pretrained(dir, custom_pipeline=dir, trust_remote_code=True)``.
"""

from __future__ import annotations

import argparse

from ldm.choices import SCHEDULER_NAMES
from ldm.run_folder import RunFolder

HELP = f"export a run (its {RunFolder.PIPELINE}/ or a checkpoint's EMA weights) as a diffusers pipeline folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder (runs/<name>) or a pipeline folder")
    p.add_argument("--out", required=True, help="folder to write (replaced atomically if it exists)")
    p.add_argument(
        "--checkpoint", default=None, metavar="NAME",
        help=f"export this checkpoint (step-XXXXXX, 'latest', or a path) instead of the run's {RunFolder.PIPELINE}/",
    )  # fmt: skip
    p.add_argument(
        "--scheduler", default=None, help=f"default sampler of the exported pipeline: {', '.join(SCHEDULER_NAMES)}"
    )


def run(args: argparse.Namespace) -> int:
    from ldm.diffusion.pipeline import export_pipeline

    ckpt = args.checkpoint
    if ckpt == RunFolder.LATEST:
        ckpt = RunFolder(args.run).latest_checkpoint()
        if ckpt is None:
            from ldm.errors import UserError

            raise UserError(f"{args.run} has no complete checkpoint")
    out, pipe = export_pipeline(args.run, args.out, checkpoint=ckpt, scheduler=args.scheduler)
    print(
        f"exported {len(pipe.class_names)} classes ({', '.join(pipe.class_names[:8])}"
        f"{', ...' if len(pipe.class_names) > 8 else ''}) -> {out}"
    )
    return 0
