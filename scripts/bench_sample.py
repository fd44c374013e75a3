"""Sampling speed: the original project's way against ours, with the same model, in the same process.

    python scripts/bench_sample.py                       # seed-preset UNet on 16x16x4 latents, random weights
    python scripts/bench_sample.py --threads 1 --vae sd  # the original's SD-VAE architecture (128x128 images)
    python scripts/bench_sample.py --run runs/faces      # a trained run or pipeline folder

Original: ``DDPMScheduler`` with its 1000 steps, one image at a time, no guidance, and one separate VAE decode for
each of the 12 snapshot timesteps (999, 700, ..., 0; the last one is the final image).
Ours: the pipeline (:mod:`ldm.diffusion.pipeline`) with DPM-Solver++(2M) at 25 steps and classifier-free guidance
(both branches in one UNet batch), 8 images per call, snapshots of the first image at the same 12 timesteps (mapped
to the nearest of its steps) decoded in one batch at the end.

Timing needs no trained weights (the work per step does not depend on them), so without ``--run`` the models are
randomly initialised: the ``seed`` UNet preset (the original's exact architecture) on 16x16x4 latents and, with
``--vae project`` (default), an AutoencoderKL of the project's default ``train-vae`` architecture (64x64 images), or
with ``--vae sd`` one of SD-VAE's architecture (the original's ``stabilityai/sd-vae-ft-ema``, 128x128 images).
Seconds are wall-clock on this machine; on a shared CPU they are noisy. The numbers go to ``--json`` if given and,
with the command line, CPU, versions and commit, into a record in ``docs/benchmarks/`` (``scripts/bench_record.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "scripts"))  # bench_record


def build_models(args: argparse.Namespace):
    """(pipeline, description) for the benchmark."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler

    if args.run:
        from ldm.diffusion.pipeline import load_pipeline

        pipe = load_pipeline(args.run, device="cpu")
        return pipe, f"{args.run}: {len(pipe.class_names)} classes"
    from ldm.config import AutoencoderConfig, DiffusionConfig, UNetConfig
    from ldm.diffusion.objective import make_train_scheduler
    from ldm.diffusion.pipeline import build_pipeline
    from ldm.models.unet import build_unet

    torch.manual_seed(0)
    unet = build_unet(UNetConfig(preset="seed"), sample_size=16, in_channels=4, num_classes=5).eval()
    if args.vae == "sd":  # stabilityai/sd-vae-ft-ema's architecture: 4 levels, down factor 8
        kw = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, levels=4)
    else:  # ldm train-vae defaults: down factor 4
        ac = AutoencoderConfig()
        kw = dict(
            block_out_channels=ac.block_out_channels,
            layers_per_block=ac.layers_per_block,
            norm_num_groups=ac.norm_num_groups,
            levels=3,
        )
    levels = kw.pop("levels")
    vae = AutoencoderKL(
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        **kw,
    ).eval()
    try:
        train_cfg = make_train_scheduler(DiffusionConfig()).config
    except Exception:  # noqa: BLE001 - the objective module is another engineer's; fall back to its contract
        train_cfg = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").config
    n_params = sum(p.numel() for p in unet.parameters()) / 1e6
    side = 16 * 2 ** (levels - 1)
    desc = f"random weights: seed-preset UNet ({n_params:.1f} M params) on 16x16x4 latents, {args.vae} VAE -> {side}px"
    return build_pipeline(unet, vae, train_cfg, [str(k) for k in range(5)], 0.18215, scheduler="dpm++"), desc


def time_original(pipe, n_images: int, snapshot_timesteps) -> float:
    """Seconds per image the original way: 1000 DDPM steps, batch 1, no guidance, one decode per snapshot."""
    import torch
    from diffusers import DDPMScheduler

    unet, vae, scaling = pipe.unet, pipe.vae, float(pipe.config.scaling_factor)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(sched.config.num_train_timesteps)
    wanted = {int(t) for t in snapshot_timesteps}
    shape = (1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for i in range(n_images):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(shape, generator=g)
            label = torch.tensor([i % (unet.config.num_class_embeds - 1)])
            for t in sched.timesteps:
                eps = unet(x, t, class_labels=label).sample
                x = sched.step(eps, t, x, generator=g).prev_sample
                if int(t) in wanted:
                    _ = vae.decode(x / scaling).sample  # the original decoded each snapshot on its own
    return (time.perf_counter() - start) / n_images, (time.process_time() - cpu) / n_images


def time_ours(pipe, n_images: int, steps: int, guidance: float, snapshot_timesteps):
    """Seconds per image our way: DPM-Solver++, CFG batched, n_images per call, snapshots decoded in one batch."""
    start, cpu = time.perf_counter(), time.process_time()
    res = pipe(
        [0] * n_images,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seeds=list(range(n_images)),
        scheduler="dpm++",
        snapshot_timesteps=snapshot_timesteps,
        snapshot_image_indices=[0],
    )
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert res.snapshots is not None and len(res.images) == n_images
    return wall / n_images, cpu / n_images, len(res.snapshots.timesteps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="trained run or pipeline folder (default: random-weight seed-preset models)")
    p.add_argument("--vae", choices=("project", "sd"), default="project", help="VAE architecture without --run")
    p.add_argument("--original-images", type=int, default=1, help="images timed the original way (each ~1000 steps)")
    p.add_argument("--images", type=int, default=8, help="images per call our way")
    p.add_argument("--steps", type=int, default=25, help="our DPM-Solver++ steps")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="our classifier-free guidance scale")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.add_argument("--record-dir", default=str(ROOT / "docs" / "benchmarks"),
                   help="where the run's record goes (scripts/bench_record.py; default docs/benchmarks/)")  # fmt: skip
    args = p.parse_args(argv)

    import torch

    from ldm.config import SamplingConfig

    DEFAULT_SNAPSHOT_TIMESTEPS = SamplingConfig().snapshot_timesteps  # the original project's figure columns
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe, desc = build_models(args)
    unet, vae = pipe.unet, pipe.vae
    print(f"model: {desc}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device cpu, float32")
    with torch.no_grad():  # warm-up: first calls allocate and pick kernels
        x = torch.zeros(2 * args.images, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
        unet(x[:1], 500, class_labels=torch.tensor([0]))
        unet(x, 500, class_labels=torch.zeros(len(x), dtype=torch.long))
        vae.decode(x[:1])
    ours, ours_cpu, n_snap = time_ours(pipe, args.images, args.steps, args.guidance_scale, DEFAULT_SNAPSHOT_TIMESTEPS)
    print(f"ours:     {ours:8.2f} s/image wall, {ours_cpu:8.2f} s/image CPU  (DPM-Solver++ {args.steps} steps, "
          f"guidance {args.guidance_scale:g}, batch {args.images}, "
          f"{n_snap} snapshots of 1 image, 1 decode batch)")  # fmt: skip
    orig, orig_cpu = time_original(pipe, args.original_images, DEFAULT_SNAPSHOT_TIMESTEPS)
    print(f"original: {orig:8.2f} s/image wall, {orig_cpu:8.2f} s/image CPU  (DDPM 1000 steps, batch 1, no guidance, "
          f"{len(DEFAULT_SNAPSHOT_TIMESTEPS)} separate snapshot decodes)")  # fmt: skip
    # CPU time is the steadier number on a shared machine (wall time includes waiting for a core).
    print(f"speed-up: {orig / ours:.1f}x wall clock, {orig_cpu / ours_cpu:.1f}x CPU time")
    summary = {"model": desc, "threads": torch.get_num_threads(), "original_s_per_image": orig,
               "ours_s_per_image": ours, "speedup": orig / ours, "original_cpu_s_per_image": orig_cpu,
               "ours_cpu_s_per_image": ours_cpu, "speedup_cpu": orig_cpu / ours_cpu, "args": vars(args)}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    from bench_record import write_record

    print(f"record: {write_record('bench_sample', summary, args.record_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
