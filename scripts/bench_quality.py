"""Quality benchmark: the original project's recipe against our default face recipe, same data, autoencoder and budget.

    python scripts/bench_quality.py                      # att-faces-20 at 64x64, 15 minutes of diffusion training each
    python scripts/bench_quality.py --minutes 1 --num-samples 40 --vae-minutes 2     # a smoke run

Both recipes train on the same latent cache (one autoencoder, trained here or given with ``--vae``) for the same
wall-clock budget, one after the other, and are measured in the same run with the same Inception features of the
real images and the same class classifier:

(a) the original recipe: the ``seed`` UNet2DModel *without* a class embedding, the class label fed through the
    timestep input (``--original-label-mode replace``: ``unet(x_t, label)``, the model never sees t; ``add``:
    ``unet(x_t, t + label)``), MSE on the noise, AdamW at 1e-3, batch 20, no EMA, diffusers' default DDPMScheduler
    (1000 steps, linear betas), no guidance, DDPM sampling with all 1000 steps; a plain float32 loop.
(b) ours: ``configs/faces.yaml`` through :func:`ldm.training.trainer.train` (class embedding with a null class, EMA,
    the config's loss, schedule and sampler, classifier-free guidance).

Prints KID, FID and class accuracy of both as a table with ratios (original / ours: > 1 means ours is better for
KID and FID; ours / original for accuracy), and writes ``<workdir>/bench_quality.json`` and ``.md``. Wall-clock and
process CPU seconds of each training are recorded: the machine is shared, so equal wall-clock is not equal work.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "att-faces-20"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def original_timestep_input(t: torch.Tensor, labels: torch.Tensor, mode: str) -> torch.Tensor:
    """What the original fed the UNet's timestep argument: the label instead of t, or t + label."""
    return labels if mode == "replace" else t + labels


def build_original_unet(latent_shape: tuple[int, int, int]):
    """The ``seed`` preset's UNet2DModel with no class embedding (the original had none)."""
    from diffusers import UNet2DModel

    from ldm.models.unet import PRESETS

    c, h, _ = latent_shape
    return UNet2DModel(**PRESETS["seed"], sample_size=h, in_channels=c, out_channels=c)


def train_original(cache, minutes: float, mode: str, seed: int, device: str) -> tuple[torch.nn.Module, dict]:
    """Plain float32 loop of the original recipe for ``minutes`` of wall-clock time."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    unet = build_original_unet(tuple(cache.latent_shape)).to(device).train()
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    x_all, y_all = cache.latents.to(device), cache.labels.to(device)
    gen = torch.Generator().manual_seed(seed)
    steps, losses = 0, []
    t0, c0 = time.time(), time.process_time()
    while time.time() - t0 < 60 * minutes:
        perm = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(perm), 20):
            idx = perm[i : i + 20].to(device)
            x0, y = x_all[idx], y_all[idx]
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = torch.randint(0, 1000, (len(x0),), generator=gen).to(device)
            pred = unet(sched.add_noise(x0, noise, t), original_timestep_input(t, y, mode)).sample
            loss = torch.nn.functional.mse_loss(pred, noise)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            losses.append(loss.item())
            if time.time() - t0 >= 60 * minutes:
                break
        log(f"original: step {steps}, loss {np.mean(losses[-20:]):.4f}, {time.time() - t0:.0f} s")
    stats = {
        "steps": steps,
        "images_seen": steps * 20,
        "final_loss_mean20": float(np.mean(losses[-20:])) if losses else None,
        "wall_seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
    }
    return unet.eval(), stats


@torch.no_grad()
def sample_original(unet, vae, scaling_factor: float, class_ids: list[int], mode: str, steps: int, seed: int,
                    batch_size: int, device: str) -> torch.Tensor:  # fmt: skip
    """DDPM ancestral sampling, no guidance, the label through the timestep input. Images (N, C, H, W) in [-1, 1]."""
    from diffusers import DDPMScheduler

    from ldm.diffusion.pipeline import decode_latents

    sched = DDPMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(steps)
    c, h, w = unet.config.in_channels, unet.config.sample_size, unet.config.sample_size
    out = []
    for i in range(0, len(class_ids), batch_size):
        ids = class_ids[i : i + batch_size]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(ids))]
        x = torch.stack([torch.randn(c, h, w, generator=g) for g in gens]).to(device)
        y = torch.tensor(ids, device=device)
        t_start = time.time()
        for t in sched.timesteps:
            tt = torch.full((len(ids),), int(t), device=device)
            eps = unet(x, original_timestep_input(tt, y, mode)).sample
            x = sched.step(eps, t, x, generator=gens[0]).prev_sample
        out.append(decode_latents(vae, x, scaling_factor))
        log(f"original: sampled {i + len(ids)}/{len(class_ids)} ({time.time() - t_start:.0f} s for this batch)")
    return torch.cat(out)


def prepare_autoencoder(args, cfg, workdir: Path) -> str:
    """``--vae`` or an autoencoder trained here on the data (reused on a second run)."""
    if args.vae:
        return args.vae
    vae_run = workdir / "vae"
    if (vae_run / "vae" / "config.json").is_file():
        log(f"autoencoder: reusing {vae_run}")
        return str(vae_run)
    from ldm.config import from_dict, to_dict
    from ldm.training.autoencoder import train_vae

    d = to_dict(cfg)
    d["autoencoder"]["max_minutes"] = args.vae_minutes
    log(f"autoencoder: training for {args.vae_minutes} min (configs' autoencoder section) into {vae_run}")
    summary = train_vae(from_dict(d), args.data, vae_run, progress=False)
    log(f"autoencoder: held-out PSNR {summary.get('psnr')}, SSIM {summary.get('ssim')}")
    return str(vae_run)


def metrics_of(name: str, images: torch.Tensor, class_ids: list[int], real, extractor, clf, seed: int) -> dict:
    from ldm.evaluation.classifier import match_channels
    from ldm.evaluation.report import class_accuracy, frechet_distance, kernel_inception_distance

    images = match_channels(images, real.images.shape[1])
    t0 = time.time()
    feats = extractor(images)
    kid, kid_std = kernel_inception_distance(real.features, feats, num_subsets=100, seed=seed)
    acc = class_accuracy(clf.predict(images).numpy(), class_ids, real.scan.classes)
    log(f"{name}: features and metrics in {time.time() - t0:.0f} s")
    return {
        "fid": frechet_distance(real.features, feats),
        "kid": kid,
        "kid_std": kid_std,
        "class_accuracy": acc["overall"],
    }


def save_grid(
    images: torch.Tensor, class_ids: list[int], names: list[str], path: Path, per_class: int = 4, classes: int = 8
) -> None:
    """One row per class (first ``classes`` classes), ``per_class`` images each: to look at, not to measure."""
    from ldm.figures import labelled_grid, to_pil
    from ldm.run_folder import save_png

    pil = to_pil(images)
    rows, labels = [], []
    for c in sorted(set(class_ids))[:classes]:
        idx = [i for i, k in enumerate(class_ids) if k == c][:per_class]
        rows.append([pil[i] for i in idx])
        labels.append(names[c])
    save_png(labelled_grid(rows, labels), path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="class-folder dataset (default: att-faces-20)")
    p.add_argument("--config", default=str(ROOT / "configs" / "faces.yaml"), help="our recipe (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=64, help="image side (default %(default)s)")
    p.add_argument("--minutes", type=float, default=15.0, help="diffusion training budget per recipe (default 15)")
    p.add_argument("--vae", default=None, help="autoencoder to use (default: train one, --vae-minutes)")
    p.add_argument("--vae-minutes", type=float, default=5.0, help="autoencoder training budget (default 5)")
    p.add_argument("--num-samples", type=int, default=200, help="generated images per recipe (default 200)")
    p.add_argument(
        "--original-label-mode",
        choices=("replace", "add"),
        default="replace",
        help="how the original fed the label: as the timestep (replace) or added to it (add)",
    )
    p.add_argument("--original-sample-steps", type=int, default=1000, help="DDPM steps of the original (1000)")
    p.add_argument("--workdir", default="runs/bench-quality", help="where everything is written")
    p.add_argument("--device", default="cpu", help="device (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data order and samples")
    p.add_argument("--cache-dir", default=None, help="classifier / real-feature cache (default ./.ldm-cache)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: torch's default); on a shared "
        "CPU 1 thread can be several times faster than oversubscribed cores",
    )
    args = p.parse_args(argv)  # fmt: skip

    from ldm.config import load_config
    from ldm.data.folders import scan_image_folder
    from ldm.data.latents import load_latent_cache, prepare_latents
    from ldm.diffusion.pipeline import load_pipeline
    from ldm.errors import UserError
    from ldm.evaluation.classifier import load_or_train_classifier
    from ldm.evaluation.inception import load_inception
    from ldm.evaluation.report import generate_images, load_real_set
    from ldm.training.trainer import train
    from ldm.utils import atomic_write_json, atomic_write_text

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not Path(args.config).is_file():
        raise SystemExit(f"our recipe's config {args.config} not found (give --config)")
    try:
        extractor = load_inception(args.device)
        cfg = load_config(args.config, [f"data.image_size={args.image_size}"])
        scan = scan_image_folder(args.data)
        classes = scan.classes

        # --- shared: autoencoder, latent cache, real features, classifier
        vae_source = prepare_autoencoder(args, cfg, workdir)
        manifest = prepare_latents(args.data, vae_source, workdir / "latents", cfg, device=args.device, progress=False)
        cache = load_latent_cache(workdir / "latents")
        log(f"latents: {manifest.num_images} x {tuple(cache.latent_shape)}, scaling {cache.scaling_factor:.4f}")
        channels = int(manifest.channels)
        real = load_real_set(scan, args.image_size, channels, extractor, args.cache_dir, log)
        clf = load_or_train_classifier(scan, image_size=args.image_size, channels=channels, cache_dir=args.cache_dir,
                                       device=args.device, log=log)  # fmt: skip
        class_ids = [i % len(classes) for i in range(args.num_samples)]

        # --- (b) ours
        ours_dir = workdir / f"ours-{time.strftime('%Y%m%d-%H%M%S')}"
        ours_cfg = load_config(
            args.config,
            [
                f"data.image_size={args.image_size}",
                f"training.max_minutes={args.minutes}",
                "training.max_steps=0",
                "training.epochs=0",
                "training.sample_every=0",  # grids and checkpoints only at the end, like the plain loop
                "training.checkpoint_every=0",
                f"training.seed={args.seed}",
            ],
        )
        log(f"ours: training {ours_cfg.unet.preset} for {args.minutes} min into {ours_dir}")
        t0, c0 = time.time(), time.process_time()
        res = train(ours_cfg, workdir / "latents", ours_dir, progress=False, device=args.device)
        ours_train = {
            "steps": res.step,
            "wall_seconds": round(res.elapsed_seconds, 1),  # the training loop, as the original's
            "wall_seconds_with_export": round(time.time() - t0, 1),  # + final grid, checkpoint and export
            "cpu_seconds": round(time.process_time() - c0, 1),
        }
        log(f"ours: {ours_train}")
        pipe = load_pipeline(ours_dir, device=args.device)
        s = ours_cfg.sampling
        t0 = time.time()
        ours_images = generate_images(
            pipe,
            class_ids,
            scheduler=s.scheduler,
            num_inference_steps=s.num_inference_steps,
            guidance_scale=s.guidance_scale,
            seed=args.seed,
            log=log,
        )
        ours_sampling = {"scheduler": s.scheduler, "steps": s.num_inference_steps, "guidance_scale": s.guidance_scale,
                         "seconds": round(time.time() - t0, 1)}  # fmt: skip
        save_grid(ours_images, class_ids, classes, workdir / "ours_samples.png")
        ours = metrics_of("ours", ours_images, class_ids, real, extractor, clf, args.seed)

        # --- (a) the original recipe
        log(f"original: training the seed UNet (label mode {args.original_label_mode}) for {args.minutes} min")
        unet_o, orig_train = train_original(cache, args.minutes, args.original_label_mode, args.seed, args.device)
        t0 = time.time()
        orig_images = sample_original(unet_o, pipe.vae, cache.scaling_factor, class_ids, args.original_label_mode,
                                      args.original_sample_steps, args.seed, 50, args.device)  # fmt: skip
        orig_sampling = {"scheduler": "ddpm", "steps": args.original_sample_steps, "guidance_scale": None,
                         "seconds": round(time.time() - t0, 1)}  # fmt: skip
        save_grid(orig_images, class_ids, classes, workdir / "original_samples.png")
        orig = metrics_of("original", orig_images, class_ids, real, extractor, clf, args.seed)
    except UserError as e:
        print(f"bench_quality: error: {e}", file=sys.stderr)
        return 2

    def ratio(a: float, b: float) -> float:
        return a / b if b and math.isfinite(a) and math.isfinite(b) and b > 0 else float("nan")

    ratios = {
        "kid_original_over_ours": ratio(orig["kid"], ours["kid"]),
        "fid_original_over_ours": ratio(orig["fid"], ours["fid"]),
        "class_accuracy_ours_over_original": ratio(ours["class_accuracy"], orig["class_accuracy"]),
    }
    table = [
        "| recipe | KID | FID | class accuracy | train steps | train wall s | train CPU s | sampling |",
        "|---|---|---|---|---|---|---|---|",
        f"| original ({args.original_label_mode}) | {orig['kid']:.4f} ± {orig['kid_std']:.4f} | {orig['fid']:.1f} | "
        f"{orig['class_accuracy']:.3f} | {orig_train['steps']} | {orig_train['wall_seconds']} | "
        f"{orig_train['cpu_seconds']} | DDPM {args.original_sample_steps}, {orig_sampling['seconds']} s |",
        f"| ours ({Path(args.config).name}) | {ours['kid']:.4f} ± {ours['kid_std']:.4f} | {ours['fid']:.1f} | "
        f"{ours['class_accuracy']:.3f} | {ours_train['steps']} | {ours_train['wall_seconds']} | "
        f"{ours_train['cpu_seconds']} | {s.scheduler} {s.num_inference_steps}, CFG {s.guidance_scale}, "
        f"{ours_sampling['seconds']} s |",
        "",
        f"Ratios: KID original/ours {ratios['kid_original_over_ours']:.2f}x, FID original/ours "
        f"{ratios['fid_original_over_ours']:.2f}x, class accuracy ours/original "
        f"{ratios['class_accuracy_ours_over_original']:.2f}x (> 1: ours better).",
        f"{args.num_samples} generated images per recipe against {len(real.images)} real images of {args.data} at "
        f"{args.image_size}x{args.image_size}; classifier held-out accuracy {clf.holdout_accuracy:.3f} "
        f"(chance {1 / len(classes):.3f}); features: {extractor.describe()['extractor']}.",
    ]
    text = "\n".join(table)
    print(text)
    result = {
        "settings": vars(args),
        "autoencoder": vae_source,
        "original": {**orig, "training": orig_train, "sampling": orig_sampling},
        "ours": {**ours, "training": ours_train, "sampling": ours_sampling, "run": str(ours_dir)},
        "ratios": ratios,
        "classifier": clf.summary(),
        "features": extractor.describe(),
    }
    atomic_write_json(workdir / "bench_quality.json", result)
    atomic_write_text(workdir / "bench_quality.md", "# Quality benchmark\n\n" + text + "\n")
    log(f"wrote {workdir / 'bench_quality.json'}, {workdir / 'bench_quality.md'} and the sample grids")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
