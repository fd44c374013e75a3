"""``ldm sample``: generate images by class name from a run or an exported pipeline.

    ldm sample --run runs/faces --class smiling --class sleepy -n 8 --out samples/
    ldm sample --run runs/faces --class smiling --negative-class frowning --guidance-scale 4 --snapshots --out s/
    ldm sample --from-image s/smiling-seed3.png --out again/        # regenerate from the PNG's own parameters

Defaults (sampler, steps, guidance, images per class, seed) come from the run's ``config.yaml`` (section
``sampling``) when there is one, else from :class:`ldm.config.SamplingConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ldm.choices import SCHEDULER_NAMES

HELP = "generate images by class name (CFG, negative class, seeds, snapshots) from a run or pipeline folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="run folder (runs/<name>) or exported pipeline folder")
    p.add_argument(
        "--class", dest="classes", action="append", default=[], metavar="NAME",
        help="class to generate (repeatable; case- and whitespace-insensitive)",
    )  # fmt: skip
    p.add_argument("-n", "--num-images", type=int, default=None, help="images per class (default: config, 4)")
    p.add_argument("--num-inference-steps", type=int, default=None, help="denoising steps (default: config, 25)")
    p.add_argument("--scheduler", default=None, help=f"sampler: {', '.join(SCHEDULER_NAMES)} (default: config, dpm++)")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance; 1 = off (default 3)")
    p.add_argument("--negative-class", default=None, metavar="NAME", help="class to steer away from")
    p.add_argument("--seed", type=int, default=None, help="seed of the first image of each class; image j: seed+j")
    p.add_argument("--snapshots", action="store_true", help="also write snapshots.png (noisy latent / predicted x0)")
    p.add_argument(
        "--snapshot-timesteps", type=int, nargs="+", default=None, metavar="T",
        help="timesteps of the snapshot figure (default: config, 999 700 500 200 150 120 100 80 60 40 20 0)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=None, help="images per UNet batch (default: config, 16)")
    p.add_argument(
        "--from-image", default=None, metavar="PNG", help="regenerate the image from its embedded parameters"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available; cpu for --from-image)")


def _sampling_defaults(run: Path | None):  # -> SamplingConfig
    from ldm.config import ConfigError, SamplingConfig
    from ldm.run_folder import RunFolder

    if run is not None and RunFolder(run).config_path.is_file():
        try:
            return RunFolder(run).read_config().sampling
        except ConfigError:
            pass  # an older or foreign config: fall back to the defaults rather than refuse to sample
    return SamplingConfig()


def run(args: argparse.Namespace) -> int:
    from ldm.errors import UserError

    if args.from_image:
        return _from_image(args)
    if not args.run:
        raise UserError("give --run RUN (a run folder or an exported pipeline folder), or --from-image PNG")
    if not args.classes:
        raise UserError("give at least one --class NAME")
    from ldm.utils import check_output_folder

    check_output_folder(args.out)
    from ldm.diffusion.pipeline import load_pipeline
    from ldm.diffusion.sample_files import sample_to_folder
    from ldm.run_folder import RunFolder

    run_dir = Path(args.run)
    folder = RunFolder.find_pipeline(run_dir)
    sc = _sampling_defaults(run_dir if folder != run_dir else None)
    scheduler = args.scheduler or sc.scheduler
    if scheduler.strip().lower() not in SCHEDULER_NAMES:
        raise UserError(f"unknown scheduler {scheduler!r}; accepted: {', '.join(SCHEDULER_NAMES)}")
    pipe = load_pipeline(folder, device=args.device)
    flags = ("num_images", "num_inference_steps", "guidance_scale", "negative_class", "seed", "batch_size")
    given = {k: getattr(args, k) for k in flags if getattr(args, k) is not None}
    if args.snapshot_timesteps:
        given["snapshot_timesteps"] = tuple(args.snapshot_timesteps)
    sampling = dataclasses.replace(sc, scheduler=scheduler.strip().lower(), **given)
    files = sample_to_folder(pipe, args.classes, args.out, sampling, snapshots=args.snapshots, model_path=folder)
    for p in files.images:
        print(p)
    if files.grid:
        print(f"grid: {files.grid}")
    if files.snapshots:
        print(f"snapshots: {files.snapshots}")
    return 0


def _from_image(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ldm.diffusion.pipeline import load_pipeline
    from ldm.diffusion.sample_files import model_identity, read_parameters, regenerate, save_png_with_parameters
    from ldm.errors import UserError
    from ldm.run_folder import RunFolder
    from ldm.utils import check_output_folder

    check_output_folder(args.out)
    params = read_parameters(args.from_image)
    if params.get("kind") == "text2image":  # made by `ldm t2i`: regenerated by it
        from ldm.commands.t2i import from_image

        return from_image(args.from_image, args.out, args.run)
    if params.get("kind") != "image":
        raise UserError(f"{args.from_image} is a {params.get('kind')} figure; give one of the single-image PNGs")
    model = params.get("model") or {}
    source = args.run or model.get("path")
    if not source:
        raise UserError(f"{args.from_image} names no model path; give --run RUN")
    folder = RunFolder.find_pipeline(source)
    # Pixel-identical results need the device and dtype of the original (CPU float32 by default).
    device = args.device or "cpu"
    pipe = load_pipeline(folder, device=device)
    ident = model_identity(pipe, folder)
    if model.get("weights_hash") and ident["weights_hash"] != model["weights_hash"]:
        raise UserError(
            f"the model in {folder} is not the one that made {args.from_image}: weights hash "
            f"{ident['weights_hash'][:12]} != {str(model['weights_hash'])[:12]} (was the run trained further or "
            f"re-exported?); give --run with the original model"
        )
    image = regenerate(params, pipe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / Path(args.from_image).name
    if path.resolve() == Path(args.from_image).resolve():
        path = out / f"{path.stem}-regenerated.png"
    save_png_with_parameters(image, path, {**params, "model": {**model, **ident}})
    with Image.open(args.from_image) as orig:
        same = np.array_equal(np.asarray(orig.convert(image.mode)), np.asarray(image))
    print(path)
    print(f"pixel-identical to {args.from_image}: {'yes' if same else 'no'}")
    return 0
