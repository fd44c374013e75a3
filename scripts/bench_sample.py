"""Sampling: DDPM over all 1000 steps (the original project's sampler) against ours at its default steps, the same
work per image otherwise, in the same run; with ``--real``, also the quality each reaches on the same trained model.

    python scripts/bench_sample.py                        # seed-preset UNet on 16x16x4 latents, random weights
    python scripts/bench_sample.py --vae sd               # with the original's SD-VAE architecture (128x128 images)
    python scripts/bench_sample.py --run runs/faces --real ../shared/datasets/att-faces-20   # speed and quality

Both sides go through the same pipeline call (:mod:`ldm.diffusion.pipeline`): the same batch (``--images``), the
same classifier-free guidance (``--guidance-scale``, default the run's), the same snapshot policy (the first image at
the 12 timesteps of the original's figure, decoded in one batch at the end). Only the sampler and its step count
differ: ``ddpm`` at 1000 steps against ``--scheduler`` at ``--steps`` (default the run's sampling settings,
DPM-Solver++ 25). Timing repeats are interleaved (DDPM, ours, DDPM, ours, ...) after a warm-up, so a load change on
a shared machine hits both; the medians and their ratio are reported, wall clock and CPU time.

With ``--run`` and ``--real``, both samplers then generate ``--num-samples`` images of the run's model (image i:
class ``i % K``, seed i, the same for both) and :func:`ldm.evaluation.report.evaluate_run` measures KID, FID and class
accuracy of each against the real images: the speed-up is only worth what the quality at the fewer steps keeps.

Timing needs no trained weights (the work per step does not depend on them), so without ``--run`` the models are
randomly initialised: the ``seed`` UNet preset (the original's exact architecture) on 16x16x4 latents and, with
``--vae project`` (default), an AutoencoderKL of the project's default ``train-vae`` architecture (64x64 images), or
with ``--vae sd`` one of SD-VAE's architecture (the original's ``stabilityai/sd-vae-ft-ema``, 128x128 images).
The numbers go to ``--json`` if given and, with the command line, CPU, versions and commit, into a record in
``docs/benchmarks/`` (``scripts/bench_record.py``).
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
        from ldm.run_folder import RunFolder

        pipe = load_pipeline(RunFolder.find_pipeline(Path(args.run)), device="cpu")
        return pipe, f"{args.run}: {len(pipe.class_names)} classes"
    from ldm.config import AutoencoderConfig, DiffusionConfig, UNetConfig
    from ldm.diffusion.objective import make_train_scheduler
    from ldm.diffusion.pipeline import build_pipeline
    from ldm.models.unet import build_unet

    torch.manual_seed(0)
    unet = build_unet(UNetConfig(preset=args.preset), sample_size=16, in_channels=4, num_classes=5).eval()
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
    desc = (
        f"random weights: {args.preset}-preset UNet ({n_params:.1f} M params) on 16x16x4 latents, "
        f"{args.vae} VAE -> {side}px"
    )
    return build_pipeline(unet, vae, train_cfg, [str(k) for k in range(5)], 0.18215, scheduler="dpm++"), desc


def time_call(pipe, args: argparse.Namespace, scheduler: str, steps: int, snapshot_timesteps) -> tuple[float, float]:
    """(wall, CPU) seconds per image of one pipeline call: ``args.images`` images, snapshots of the first one."""
    start, cpu = time.perf_counter(), time.process_time()
    res = pipe(
        [k % len(pipe.class_names) for k in range(args.images)],
        num_inference_steps=steps,
        guidance_scale=args.guidance_scale,
        seeds=list(range(args.images)),
        scheduler=scheduler,
        snapshot_timesteps=snapshot_timesteps,
        snapshot_image_indices=[0],
        output_type="pt",
    )
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert res.snapshots is not None and len(res.images) == args.images
    return wall / args.images, cpu / args.images


def quality(args: argparse.Namespace, scheduler: str, steps: int) -> dict:
    """KID, FID and class accuracy of ``--num-samples`` images of the run's model with this sampler."""
    from ldm.evaluation.report import evaluate_run

    def log(msg: str) -> None:
        print(f"  [{scheduler} {steps}] {msg}", flush=True)

    r = evaluate_run(args.run, args.real, num_samples=args.num_samples, scheduler=scheduler, num_inference_steps=steps,
                     guidance_scale=args.guidance_scale, seed=0, device="cpu", write=False, log=log)  # fmt: skip
    return {
        "kid": r["kid"],
        "kid_std": r["kid_std"],
        "fid": r["fid"],
        "class_accuracy": r["class_accuracy"]["overall"],
        "generation_seconds": r["seconds"]["generation"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="trained run or pipeline folder (default: random-weight seed-preset models)")
    p.add_argument(
        "--real", help="with --run: the run's class-folder dataset, to measure the quality of both samplers"
    )
    p.add_argument("--num-samples", type=int, default=200, help="images per sampler for the quality (default 200)")
    p.add_argument("--vae", choices=("project", "sd"), default="project", help="VAE architecture without --run")
    p.add_argument("--preset", default="seed", help="UNet preset without --run (default: seed, the original's)")
    p.add_argument("--images", type=int, default=8, help="images per call, both samplers (default 8)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per sampler, interleaved (default 3)")
    p.add_argument("--scheduler", default=None, help="our sampler (default: the run's, else dpm++)")
    p.add_argument("--steps", type=int, default=None, help="our steps (default: the run's, else 25)")
    p.add_argument("--guidance-scale", type=float, default=None, help="guidance of both (default: the run's, else 3)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.add_argument("--record-dir", default=str(ROOT / "docs" / "benchmarks"),
                   help="where the run's record goes (scripts/bench_record.py; default docs/benchmarks/)")  # fmt: skip
    args = p.parse_args(argv)
    if args.real and not args.run:
        p.error("--real needs --run (the quality is measured on a trained model)")
    if args.real and not Path(args.real).is_dir():
        p.error(f"--real {args.real}: not a folder")
    if args.run and not Path(args.run).exists():
        p.error(f"--run {args.run}: not found")

    import statistics

    import torch

    from ldm.config import SamplingConfig

    sampling = SamplingConfig()
    if args.run:
        from ldm.run_folder import RunFolder

        if RunFolder(Path(args.run)).config_path.is_file():  # a run folder; a bare pipeline keeps the defaults
            sampling = RunFolder(Path(args.run)).read_config().sampling
    args.scheduler = args.scheduler or sampling.scheduler
    args.steps = args.steps or sampling.num_inference_steps
    if args.guidance_scale is None:
        args.guidance_scale = float(sampling.guidance_scale)
    snapshot_timesteps = SamplingConfig().snapshot_timesteps  # the original project's figure columns
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe, desc = build_models(args)
    print(f"model: {desc}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device cpu, float32")
    sides = {"ddpm": ("ddpm", 1000), "ours": (args.scheduler, args.steps)}
    with torch.no_grad():
        for sched, _ in sides.values():  # warm-up: first calls allocate and pick kernels
            pipe([0] * args.images, num_inference_steps=2, guidance_scale=args.guidance_scale, scheduler=sched,
                 output_type="pt")  # fmt: skip
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    for rep in range(args.repeats):
        for side, (sched, steps) in sides.items():
            times[side].append(time_call(pipe, args, sched, steps, snapshot_timesteps))
            print(f"repeat {rep + 1}: {side:4s} ({sched} {steps}) {times[side][-1][0]:.3f} s/image", flush=True)
    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
    n_snap = len(snapshot_timesteps)
    work = f"batch {args.images}, guidance {args.guidance_scale:g}, snapshots of 1 image at {n_snap} timesteps"
    print(f"DDPM 1000: {wall['ddpm']:8.3f} s/image wall, {cpu['ddpm']:8.3f} s/image CPU ({work})")
    print(
        f"ours:      {wall['ours']:8.3f} s/image wall, {cpu['ours']:8.3f} s/image CPU ({args.scheduler} {args.steps})"
    )
    # CPU time is the steadier number on a shared machine (wall time includes waiting for a core).
    print(f"speed-up: {wall['ddpm'] / wall['ours']:.1f}x wall clock, {cpu['ddpm'] / cpu['ours']:.1f}x CPU time")
    summary = {
        "model": desc,
        "threads": torch.get_num_threads(),
        "work": work,
        "ours_sampler": f"{args.scheduler} {args.steps}",
        "original_s_per_image": wall["ddpm"],
        "ours_s_per_image": wall["ours"],
        "speedup": wall["ddpm"] / wall["ours"],
        "original_cpu_s_per_image": cpu["ddpm"],
        "ours_cpu_s_per_image": cpu["ours"],
        "speedup_cpu": cpu["ddpm"] / cpu["ours"],
        "repeats": {k: [[round(w, 4), round(c, 4)] for w, c in v] for k, v in times.items()},
        "args": vars(args),
    }
    if args.real:
        summary["quality"] = {side: quality(args, sched, steps) for side, (sched, steps) in sides.items()}
        for side, q in summary["quality"].items():
            print(f"quality {side}: KID {q['kid']:.4f} ± {q['kid_std']:.4f}, FID {q['fid']:.1f}, "
                  f"class accuracy {q['class_accuracy']:.3f} ({args.num_samples} images)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    from bench_record import write_record

    print(f"record: {write_record('bench_sample', summary, args.record_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
