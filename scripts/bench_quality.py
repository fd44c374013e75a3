"""Quality benchmark: the original project's recipe as it ran against our default face recipe, same data,
autoencoder and wall-clock budget.

    python scripts/bench_quality.py          # att-faces-20 at 64x64, 15 minutes of diffusion training per recipe
    python scripts/bench_quality.py --minutes 0.2 --num-samples 10 --vae-minutes 0.3 --record-dir /tmp  # smoke run

The rows (``--recipes``, all three by default) train on the same latent cache (one autoencoder, trained here or
given with ``--vae``) and are sampled and measured in the same run, with the same Inception features of the real
images and the same class classifier:

``original``, "the original as it ran (L1)": the original project's code, line by line. The ``seed`` preset's
    UNet2DModel (its exact blocks) with ``class_embed_type="timestep"``: t goes to the time embedding, the label as
    ``class_labels`` through the same sinusoidal projection into its own embedding. ``DDPMScheduler(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02)`` (linear betas). A step draws t uniformly in
    [0, 1000), noises the latents with ``add_noise``, calls ``unet(noisy, t, class_labels).sample`` and compares it
    with the noise through ``nn.MSELoss() if loss_fn == "MSELoss" else nn.L1Loss()``, where its app passed the radio
    value "MSE": L1. AdamW at a constant 1e-3, batch 20, float32, no EMA. Sampling: no guidance,
    ``unet(x, t, labels).sample`` then ``scheduler.step`` over all 1000 timesteps.
``original-mse``, "original, MSE as its UI meant": the same with ``nn.MSELoss``.
``ours``: ``configs/faces.yaml`` through :class:`ldm.training.trainer.Trainer` (class embedding with a null class,
    EMA, the config's loss, schedule and sampler, classifier-free guidance).
``ours-NAME`` (``--variant 'NAME key=value ...'``): our recipe with those overrides of its unet, diffusion, training
    or sampling sections: a lever measured against ``ours`` in the same run. A variant that overrides the
    autoencoder section gets its own autoencoder (trained here for ``--vae-minutes`` like the shared one), latent
    cache and floor row (``reconstructions-NAME``). ``--guidance-scales`` adds rows of
    ``ours``'s model sampled at other guidance scales (no training).
``reconstructions``: the shared autoencoder's reconstructions of the real images, measured like a recipe: the floor
    no recipe on this autoencoder can go below, whatever its diffusion model.

Side by side: recipes train in waves of ``--parallel`` (default: one per core; ``ours`` and the original as it ran
come first, so they share a wave), one process each with ``--threads`` intra-op threads (default 1), released
together by a barrier once each has built its model, each for ``--minutes`` of wall clock. A load change on a shared
machine then hits the recipes of a wave alike, which training one after the other cannot promise, and with one
thread each no recipe's OpenMP threads wait at a barrier for a core another recipe holds. Each recipe's steps, wall
and CPU seconds, start/end times, wave and precision are recorded. The shared stages before (autoencoder, latents,
real features) and the sampling and metrics after, one recipe after the other, use ``--shared-threads`` (default:
all cores). The original rows sample ``--original-num-samples`` images (DDPM over 1000 steps is slow).

Prints KID, FID and class accuracy as a table with ratios against the original as it ran (original / row: > 1 means
the row is better for KID and FID; row / original for accuracy); writes ``<workdir>/bench_quality.json`` and ``.md``,
a sample grid per recipe (``<workdir>/<recipe>_samples.png``) and the run's record (``scripts/bench_record.py``) into
``--record-dir`` (default ``docs/benchmarks/``), from which ``scripts/bench_tables.py`` builds docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "att-faces-20"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench_record.py

# The original's settings, as in its code.
ORIGINAL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02)  # linear betas
ORIGINAL_BATCH_SIZE = 20
ORIGINAL_LEARNING_RATE = 1e-3  # AdamW (its "Adam" choice), constant
# Rows of the original: label, and the value its loss line compared against "MSELoss".
ORIGINAL_ROWS = {
    "original": ("original as it ran (L1)", "MSE"),  # the app radio's default, so every run used L1
    "original-mse": ("original, MSE as its UI meant", "MSELoss"),
}
RECIPES = (*ORIGINAL_ROWS, "ours")
BASELINE = "original"


def is_ours(recipe: str) -> bool:
    """``ours`` or one of its ``--variant`` rows (``ours-NAME``)."""
    return recipe == "ours" or recipe.startswith("ours-")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def original_loss(loss_fn: str) -> torch.nn.Module:
    """The original's loss line, verbatim. Its app's radio offered "MSE" / "MAE", never "MSELoss": always L1."""
    return torch.nn.MSELoss() if loss_fn == "MSELoss" else torch.nn.L1Loss()


def build_original_unet(latent_shape: tuple[int, int, int]) -> Any:
    """The original's UNet2DModel: the ``seed`` preset's blocks with ``class_embed_type="timestep"``. Sample size and
    channels follow the latents (``(c, h, w)``; the original's autoencoder gave 4 x 32 x 32)."""
    from diffusers import UNet2DModel

    from ldm.models.unet import PRESETS

    c, h, _ = latent_shape
    return UNet2DModel(**PRESETS["seed"], sample_size=h, in_channels=c, out_channels=c, class_embed_type="timestep")


def train_original(
    cache: Any, minutes: float, loss_fn: str, seed: int, device: str, barrier: Any = None
) -> tuple[torch.nn.Module, dict]:
    """The original's training loop for ``minutes`` of wall clock (after ``barrier``, if given): float32, batch 20
    of shuffled latents, AdamW at 1e-3, the loss of :func:`original_loss`."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    unet = build_original_unet(tuple(cache.latent_shape)).to(device).train()
    ddpm_scheduler = DDPMScheduler(**ORIGINAL_SCHEDULER)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=ORIGINAL_LEARNING_RATE)
    criterion = original_loss(loss_fn)
    x_all, y_all = cache.latents.to(device), cache.labels.to(device)
    gen = torch.Generator().manual_seed(seed)
    steps, losses, logged = 0, [], 0.0
    if barrier is not None:
        barrier.wait()
    t0, c0, started = time.time(), time.process_time(), time.time()
    while time.time() - t0 < 60 * minutes:
        perm = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(perm), ORIGINAL_BATCH_SIZE):
            idx = perm[i : i + ORIGINAL_BATCH_SIZE].to(device)
            latent_images, labels = x_all[idx], y_all[idx]
            n = latent_images.shape[0]
            timesteps = torch.randint(0, ddpm_scheduler.config.num_train_timesteps, (n,), generator=gen).to(device)
            noise = torch.randn(latent_images.shape, generator=gen).to(device)
            noisy_images = ddpm_scheduler.add_noise(latent_images, noise, timesteps)
            pred_noise = unet(noisy_images, timesteps, labels).sample
            loss = criterion(pred_noise, noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            losses.append(loss.item())
            if time.time() - t0 >= 60 * minutes:
                break
        if time.time() - logged >= 60:
            logged = time.time()
            log(f"original ({type(criterion).__name__}): step {steps}, loss {np.mean(losses[-20:]):.4f}, "
                f"{time.time() - t0:.0f} s")  # fmt: skip
    stats = {
        "steps": steps,
        "images_seen": steps * ORIGINAL_BATCH_SIZE,
        "loss": type(criterion).__name__,
        "final_loss_mean20": float(np.mean(losses[-20:])) if losses else None,
        "wall_seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
        "started": started,
        "ended": time.time(),
    }
    return unet.eval(), stats


@torch.no_grad()
def sample_original(unet, vae, scaling_factor: float, class_ids: list[int], steps: int, seed: int,
                    batch_size: int, device: str, name: str = "original") -> torch.Tensor:  # fmt: skip
    """The original's sampling: DDPM over ``steps`` (all 1000) timesteps, no guidance, ``unet(x, t, labels)``.
    Images (N, C, H, W) in [-1, 1]."""
    from diffusers import DDPMScheduler

    from ldm.diffusion.pipeline import decode_latents

    ddpm_scheduler = DDPMScheduler(**ORIGINAL_SCHEDULER)
    ddpm_scheduler.set_timesteps(steps)
    c, h, w = unet.config.in_channels, unet.config.sample_size, unet.config.sample_size
    out = []
    for i in range(0, len(class_ids), batch_size):
        ids = class_ids[i : i + batch_size]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(ids))]
        x = torch.stack([torch.randn(c, h, w, generator=g) for g in gens]).to(device)
        labels = torch.tensor(ids, device=device)
        t_start = time.time()
        for t in ddpm_scheduler.timesteps:
            noise = unet(x, t, labels).sample
            x = ddpm_scheduler.step(noise, t, x, generator=gens[0]).prev_sample
        out.append(decode_latents(vae, x, scaling_factor))
        log(f"{name}: sampled {i + len(ids)}/{len(class_ids)} ({time.time() - t_start:.0f} s for this batch)")
    return torch.cat(out)


# Sections a variant may override: everything after the shared latent cache.
VARIANT_SECTIONS = ("unet", "diffusion", "training", "sampling", "autoencoder")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"NAME key=value ..."`` -> (``"ours-NAME"``, overrides of our config); the overrides must stay in
    :data:`VARIANT_SECTIONS` (the data are shared by every row)."""
    name, *overrides = text.split()
    if not name or "=" in name or not overrides:
        raise argparse.ArgumentTypeError(
            f"--variant {text!r}: expected a name then key=value overrides, e.g. 'ema995 training.ema_decay=0.995'"
        )
    for o in overrides:
        if o.split("=", 1)[0].split(".")[0] not in VARIANT_SECTIONS or "=" not in o:
            raise argparse.ArgumentTypeError(
                f"--variant {name}: override {o!r} must be section.key=value with section one of "
                f"{', '.join(VARIANT_SECTIONS)} (the data are shared by all rows)"
            )
    return f"ours-{name}", overrides


def autoencoder_overrides(overrides: list[str]) -> list[str]:
    """The overrides of a variant that change its autoencoder (and so its latent cache)."""
    return [o for o in overrides if o.startswith("autoencoder.")]


def ours_config(args: argparse.Namespace, overrides: list[str] = ()) -> Any:
    """Our recipe (``--config``, then a variant's ``overrides``) at the benchmark's image size, budget and seed;
    grids and checkpoints only at the end, like the original's loop."""
    from ldm.config import load_config

    return load_config(
        args.config,
        [
            f"data.image_size={args.image_size}",
            *overrides,
            f"training.max_minutes={args.minutes}",
            "training.max_steps=0",
            "training.epochs=0",
            "training.sample_every=0",
            "training.checkpoint_every=0",
            f"training.seed={args.seed}",
        ],
    )


def train_recipe(recipe: str, args: argparse.Namespace, out: Path, barrier: Any) -> None:
    """One recipe's training, in its own process with ``--threads`` threads, started by ``barrier`` together with
    the others. Writes ``out/train.json`` and the model: ``out/unet`` for an original row, a run folder for ours."""
    from ldm.data.latents import load_latent_cache
    from ldm.errors import UserError
    from ldm.training.trainer import Trainer
    from ldm.utils import atomic_write_json

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    latents = args.latents_dirs.get(recipe, Path(args.workdir) / "latents")
    try:
        if is_ours(recipe):
            last_log: dict = {}  # the metrics record of the last step: its "elapsed" is the loop's time
            trainer = Trainer(ours_config(args, args.variants.get(recipe, [])), latents, out, progress=False,
                              device=args.device, on_log=last_log.update)  # fmt: skip
            trainer.setup()
            barrier.wait()
            started, c0 = time.time(), time.process_time()
            res = trainer.run()
            loop_seconds = last_log.get("elapsed", res.elapsed_seconds)
            stats = {
                "steps": res.step,
                "wall_seconds": round(loop_seconds, 1),  # the training loop, as the original's
                "wall_seconds_with_export": round(time.time() - started, 1),  # + final grid, checkpoint, export
                "cpu_seconds": round(time.process_time() - c0, 1),  # with the export
                "started": started,
                "ended": started + loop_seconds,
                "mixed_precision": trainer.mixed_precision,
            }
        else:
            cache = load_latent_cache(latents)
            loss_fn = ORIGINAL_ROWS[recipe][1]
            unet, stats = train_original(cache, args.minutes, loss_fn, args.seed, args.device, barrier)
            unet.save_pretrained(out / "unet")
    except UserError as e:
        print(f"bench_quality: {recipe}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    stats["threads"] = torch.get_num_threads()
    atomic_write_json(out / "train.json", stats)
    log(f"{recipe}: trained {stats}")


def train_side_by_side(recipes: list[str], args: argparse.Namespace, dirs: dict[str, Path]) -> dict[str, dict]:
    """Train ``recipes`` in waves of ``--parallel``, the recipes of a wave at the same time, one process each (see
    the module docstring); their ``train.json``, each with its wave number."""
    import multiprocessing as mp

    from ldm.errors import UserError

    ctx = mp.get_context("spawn")
    waves = [recipes[i : i + args.parallel] for i in range(0, len(recipes), args.parallel)]
    for w, wave in enumerate(waves):
        if len(waves) > 1:
            log(f"wave {w + 1}/{len(waves)}: {', '.join(wave)}")
        barrier = ctx.Barrier(len(wave))
        procs = {r: ctx.Process(target=train_recipe, args=(r, args, dirs[r], barrier), name=r) for r in wave}
        for proc in procs.values():
            proc.start()
        while any(proc.is_alive() for proc in procs.values()):
            if any(proc.exitcode not in (None, 0) for proc in procs.values()):
                barrier.abort()  # the others may be waiting for the one that failed
                for proc in procs.values():
                    proc.terminate()
                break
            time.sleep(1)
        for proc in procs.values():
            proc.join()
        failed = [r for r, proc in procs.items() if proc.exitcode != 0]
        if failed:
            raise UserError(f"training of {', '.join(failed)} failed (its error is above)")
    trained = {r: json.loads((dirs[r] / "train.json").read_text()) for r in recipes}
    for w, wave in enumerate(waves):
        for r in wave:
            trained[r]["wave"] = w + 1
    return trained


def prepare_autoencoder(args, cfg, workdir: Path, name: str = "vae") -> str:
    """``--vae`` or an autoencoder trained here on the data into ``workdir/name`` (reused on a second run)."""
    if args.vae and name == "vae":
        return args.vae
    from ldm.config import from_dict, load_config, to_dict
    from ldm.errors import UserError
    from ldm.training.autoencoder import train_vae

    vae_run = workdir / name
    d = to_dict(cfg)
    d["autoencoder"]["max_minutes"] = args.vae_minutes
    if (vae_run / "vae" / "config.json").is_file():
        recorded = to_dict(load_config(vae_run / "config.yaml"))["autoencoder"]
        if recorded != d["autoencoder"]:
            changed = sorted(k for k in d["autoencoder"] if recorded.get(k) != d["autoencoder"][k])
            raise UserError(f"{vae_run} was trained with another autoencoder recipe ({', '.join(changed)} differ); "
                            "delete it or give another --workdir")  # fmt: skip
        log(f"autoencoder: reusing {vae_run}")
        return str(vae_run)
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
    p.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES),
                   help="rows to train and measure (default: all); ratios need 'original'")  # fmt: skip
    p.add_argument("--vae", default=None, help="autoencoder to use (default: train one, --vae-minutes)")
    p.add_argument("--vae-minutes", type=float, default=5.0, help="autoencoder training budget (default 5)")
    p.add_argument("--num-samples", type=int, default=200, help="generated images per recipe (default 200)")
    p.add_argument("--original-sample-steps", type=int, default=1000, help="DDPM steps of the original (1000)")
    p.add_argument("--workdir", default="runs/bench-quality", help="where everything is written")
    p.add_argument("--record-dir", default=str(ROOT / "docs" / "benchmarks"),
                   help="where the run's record goes (default: docs/benchmarks/)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="device (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data order and samples")
    p.add_argument("--cache-dir", default=None, help="classifier / real-feature cache (default ./.ldm-cache)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads of each recipe's training process (default 1; 0: torch's default); on a "
        "shared CPU one thread can be several times faster than oversubscribed cores",
    )
    p.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="'NAME KEY=VALUE ...'",
                   help="one more row: our recipe with these config overrides (unet, diffusion, training, sampling),\n"
                   "e.g. --variant 'ema995 training.ema_decay=0.995'; repeatable")  # fmt: skip
    p.add_argument("--guidance-scales", type=float, nargs="+", default=[],
                   help="extra rows: our main recipe's model sampled at these guidance scales too")  # fmt: skip
    p.add_argument(
        "--parallel",
        type=int,
        default=max(1, (os.cpu_count() or 1)),
        help="recipes trained at the same time, one process each (default: the CPU count, %(default)s)",
    )
    p.add_argument(
        "--original-num-samples",
        type=int,
        default=0,
        help="generated images of the original rows (default: --num-samples; DDPM 1000 is slow)",
    )
    p.add_argument(
        "--shared-threads",
        type=int,
        default=0,
        help="torch threads of the stages every row shares (autoencoder, latent cache, features) and of the sampling"
        " and metrics after training (default: the CPU count)",
    )
    p.add_argument("--trained", default="", metavar="STAMP",
                   help="sample and measure the models an earlier run of the same command trained into\n"
                   "<workdir>/<recipe>-STAMP (e.g. after its sampling failed) instead of training again")  # fmt: skip
    args = p.parse_args(argv)  # fmt: skip
    args.variants = dict(args.variant)
    if len(args.variants) != len(args.variant):
        p.error("two --variant rows have the same name")
    # the stages shared by every row (autoencoder, latents, features) and the sampling after training use all cores
    torch.set_num_threads(args.shared_threads or os.cpu_count() or 1)
    # ours first: with --parallel 2, ours and the original as it ran train in the same wave
    recipes = [r for r in ("ours", *ORIGINAL_ROWS) if r in args.recipes] + list(args.variants)

    from bench_record import write_record

    from ldm.config import load_config
    from ldm.data.folders import scan_image_folder
    from ldm.data.latents import load_latent_cache, prepare_latents
    from ldm.diffusion.pipeline import load_pipeline
    from ldm.errors import UserError
    from ldm.evaluation.classifier import load_or_train_classifier, match_channels
    from ldm.evaluation.inception import load_inception
    from ldm.evaluation.report import generate_images, load_real_set
    from ldm.models.autoencoder import decode, encode, load_autoencoder
    from ldm.utils import atomic_write_json, atomic_write_text

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not Path(args.config).is_file():
        raise SystemExit(f"our recipe's config {args.config} not found (give --config)")
    rows: dict[str, dict] = {}
    try:
        extractor = load_inception(args.device)
        cfg = load_config(args.config, [f"data.image_size={args.image_size}"])
        scan = scan_image_folder(args.data)
        classes = scan.classes

        def autoencoder_and_latents(name: str, ae_cfg: Any) -> tuple[str, Any, Any]:
            """Autoencoder ``workdir/vae{name}`` and its latent cache ``workdir/latents{name}``: (source, manifest,
            cache). The cache is encoded again each run (seconds), so a changed recipe never meets a stale one."""
            source = prepare_autoencoder(args, ae_cfg, workdir, f"vae{name}")
            manifest = prepare_latents(args.data, source, workdir / f"latents{name}", ae_cfg, device=args.device,
                                       progress=False, overwrite=True)  # fmt: skip
            cache = load_latent_cache(workdir / f"latents{name}")
            log(f"latents{name}: {manifest.num_images} x {tuple(cache.latent_shape)}, "
                f"scaling {cache.scaling_factor:.4f}")  # fmt: skip
            return source, manifest, cache

        def floor_row(name: str, source: str, label: str) -> None:
            """The floor: an autoencoder's reconstructions of the real images, measured like a recipe."""
            ae = load_autoencoder(source, device=args.device)
            recon = decode(ae, encode(ae, match_channels(real.images, ae.in_channels), 16), 16)
            metrics = metrics_of(name, recon, real.labels.tolist(), real, extractor, clf, args.seed)
            rows[name] = {"label": label, "autoencoder": source, **metrics}

        # --- shared: autoencoder, latent cache, real features, classifier
        vae_source, manifest, cache = autoencoder_and_latents("", cfg)
        channels = int(manifest.channels)
        real = load_real_set(scan, args.image_size, channels, extractor, args.cache_dir, log)
        clf = load_or_train_classifier(scan, image_size=args.image_size, channels=channels, cache_dir=args.cache_dir,
                                       device=args.device, log=log)  # fmt: skip
        class_ids = [i % len(classes) for i in range(args.num_samples)]
        floor_row("reconstructions", vae_source, "autoencoder reconstructions of the real images (the floor)")
        vae = load_autoencoder(vae_source, device=args.device)  # the original rows decode with it

        # --- variants with an autoencoder of their own: its latents, its floor
        args.latents_dirs = {}
        for r in recipes:
            ae_overrides = autoencoder_overrides(args.variants.get(r, []))
            if ae_overrides:
                if args.vae:
                    raise UserError(f"--variant {r}: changes the autoencoder, which --vae fixes")
                name = r.removeprefix("ours")  # "-NAME"
                ae_cfg = load_config(args.config, [f"data.image_size={args.image_size}", *ae_overrides])
                source, _, _ = autoencoder_and_latents(name, ae_cfg)
                args.latents_dirs[r] = workdir / f"latents{name}"
                label = "reconstructions of the variant's autoencoder (" + ", ".join(ae_overrides) + ")"
                floor_row(f"reconstructions{name}", source, label)

        # --- training, side by side (or the models of an earlier run of the same command, --trained STAMP)
        stamp = args.trained or time.strftime("%Y%m%d-%H%M%S")
        dirs = {r: workdir / f"{r}-{stamp}" for r in recipes}
        if args.trained:
            missing = [str(d) for d in dirs.values() if not (d / "train.json").is_file()]
            if missing:
                raise UserError(f"--trained {stamp}: no trained model in {', '.join(missing)}")
            trained = {r: json.loads((dirs[r] / "train.json").read_text()) for r in recipes}
            log(f"reusing the models trained at {stamp}")
        else:
            log(f"training {', '.join(recipes)} for {args.minutes} min each, {args.threads} thread(s) each, "
                f"{args.parallel} at a time")  # fmt: skip
            trained = train_side_by_side(recipes, args, dirs)

        # --- sampling and metrics, one recipe after the other
        for r in recipes:
            if is_ours(r):
                pipe = load_pipeline(dirs[r], device=args.device)
                s = ours_config(args, args.variants.get(r, [])).sampling
                extra = args.guidance_scales if r == "ours" else []
                scales = [s.guidance_scale] + [g for g in extra if g != s.guidance_scale]
                for g in scales:
                    name = r if g == s.guidance_scale else f"{r}-guidance-{g:g}"
                    t0 = time.time()
                    images = generate_images(pipe, class_ids, scheduler=s.scheduler,
                                             num_inference_steps=s.num_inference_steps, guidance_scale=g,
                                             seed=args.seed, log=log)  # fmt: skip
                    sampling = {"scheduler": s.scheduler, "steps": s.num_inference_steps, "guidance_scale": g,
                                "seconds": round(time.time() - t0, 1), "num_samples": len(class_ids)}  # fmt: skip
                    label = f"ours ({Path(args.config).name}" + "".join(f", {o}" for o in args.variants.get(r, []))
                    label += ")" if name == r else f"), guidance {g:g}"
                    save_grid(images, class_ids, classes, workdir / f"{name.replace('-', '_')}_samples.png")
                    metrics = metrics_of(name, images, class_ids, real, extractor, clf, args.seed)
                    rows[name] = {"label": label, **metrics, "training": trained[r], "sampling": sampling,
                                  "run": str(dirs[r])}  # fmt: skip
            else:
                from diffusers import UNet2DModel

                t0 = time.time()
                unet = UNet2DModel.from_pretrained(dirs[r] / "unet").to(args.device).eval()
                ids = class_ids[: args.original_num_samples or len(class_ids)]
                images = sample_original(unet, vae.model, cache.scaling_factor, ids, args.original_sample_steps,
                                         args.seed, 50, args.device, r)  # fmt: skip
                sampling = {"scheduler": "ddpm", "steps": args.original_sample_steps, "guidance_scale": None,
                            "seconds": round(time.time() - t0, 1), "num_samples": len(ids)}  # fmt: skip
                save_grid(images, ids, classes, workdir / f"{r.replace('-', '_')}_samples.png")
                metrics = metrics_of(r, images, ids, real, extractor, clf, args.seed)
                rows[r] = {"label": ORIGINAL_ROWS[r][0], **metrics, "training": trained[r], "sampling": sampling,
                           "run": str(dirs[r])}  # fmt: skip
    except UserError as e:
        print(f"bench_quality: error: {e}", file=sys.stderr)
        return 2

    def ratio(a: float, b: float) -> float:
        return a / b if b and math.isfinite(a) and math.isfinite(b) and b > 0 else float("nan")

    ratios = {}
    if BASELINE in rows:
        base = rows[BASELINE]
        ratios = {
            r: {
                "kid_original_over_row": ratio(base["kid"], row["kid"]),
                "fid_original_over_row": ratio(base["fid"], row["fid"]),
                "class_accuracy_row_over_original": ratio(row["class_accuracy"], base["class_accuracy"]),
            }
            for r, row in rows.items()
            if r != BASELINE and not r.startswith("reconstructions")
        }

    def sampling_text(s: dict | None) -> str:
        if not s:
            return ""
        cfg_text = f", CFG {s['guidance_scale']:g}" if s["guidance_scale"] else ", no guidance"
        return f"{s['scheduler']} {s['steps']}{cfg_text}, {s['num_samples']} images, {s['seconds']} s"

    def training_cells(t: dict | None) -> str:
        return f"{t['steps']} | {t['wall_seconds']} | {t['cpu_seconds']}" if t else "| |"

    table = [
        "| recipe | KID | FID | class accuracy | train steps | train wall s | train CPU s | sampling |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {row['label']} | {row['kid']:.4f} ± {row['kid_std']:.4f} | {row['fid']:.1f} | "
            f"{row['class_accuracy']:.3f} | {training_cells(row.get('training'))} | "
            f"{sampling_text(row.get('sampling'))} |"
            for row in rows.values()
        ),
        "",
        *(
            f"{rows[r]['label']}: KID original/row {q['kid_original_over_row']:.2f}x, FID original/row "
            f"{q['fid_original_over_row']:.2f}x, class accuracy row/original "
            f"{q['class_accuracy_row_over_original']:.2f}x (> 1: the row is better than the original as it ran)."
            for r, q in ratios.items()
        ),
        f"Trained {args.parallel} at a time, {args.minutes} min each, {args.threads} thread(s) each. Generated images "
        f"against {len(real.images)} real images of {args.data} at {args.image_size}x"
        f"{args.image_size}; classifier held-out accuracy {clf.holdout_accuracy:.3f} (chance {1 / len(classes):.3f}); "
        f"features: {extractor.describe()['extractor']}.",
    ]
    text = "\n".join(table)
    print(text)
    result = {
        "settings": {**vars(args), "latents_dirs": {r: str(d) for r, d in args.latents_dirs.items()}},
        "autoencoder": vae_source,
        "rows": rows,
        "ratios": ratios,
        "num_real": len(real.images),
        "classifier": clf.summary(),
        "features": extractor.describe(),
    }
    atomic_write_json(workdir / "bench_quality.json", result)
    atomic_write_text(workdir / "bench_quality.md", "# Quality benchmark\n\n" + text + "\n")
    record = write_record("bench_quality", result, args.record_dir)
    log(f"wrote {workdir / 'bench_quality.json'}, {workdir / 'bench_quality.md'}, the sample grids and {record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
