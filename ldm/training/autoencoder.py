"""Stage 1 of latent diffusion: train a diffusers ``AutoencoderKL`` from scratch on a class-folder dataset.

ldm train-vae --data data/faces --out runs/faces-vae --config configs/faces.yaml
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm.errors import UserError
from ldm.figures import recon_grid
from ldm.models.autoencoder import PatchDiscriminator, build_autoencoder_kl, decode, encode
from ldm.run_folder import RunFolder

if TYPE_CHECKING:
    import torch

    from ldm.config import Config


def _load_images(data_dir: str | Path, image_size: int, channels: int, seed: int, holdout_fraction: float):
    """The whole dataset in memory: (train (N, C, S, S), holdout (M, C, S, S)) float32 in [-1, 1], and the scan."""
    import torch

    from ldm.data.folders import holdout_split, load_image, scan_image_folder

    scan = scan_image_folder(data_dir)
    train_idx, hold_idx = holdout_split(scan.samples, holdout_fraction, seed)
    images = torch.stack([load_image(p, image_size, channels) for p, _ in scan.samples])
    return images[train_idx], images[hold_idx], scan


def _cosine_lr(peak: float, step: int, warmup: int, frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``peak`` to 0 as ``frac`` (budget share) -> 1."""
    w = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return peak * w * 0.5 * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))


def _autocast_dtype(setting: str, device: torch.device) -> Any:
    import torch

    if setting == "fp32":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        return torch.float16
    # auto: bf16 where it has been measured faster (CUDA with bf16; CPUs with native bf16 instructions, where
    # autocast trained the default autoencoder ~1.3-1.7x faster than float32); else float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return None


def _cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 arithmetic (x86 AVX512-BF16 or AMX-BF16); Linux only, else False."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def train_vae(
    cfg: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train a diffusers ``AutoencoderKL`` from scratch on a class-folder dataset (labels are ignored).

    Writes into ``out_dir``: ``config.yaml`` (first, before any work), ``recon/step-XXXXXX.png`` (originals above
    their reconstructions, every ``autoencoder.sample_every`` steps and at the end), ``metrics.jsonl`` (one JSON
    line per ``log_every`` steps, plus held-out PSNR/SSIM lines at each grid), ``vae/`` (``save_pretrained`` of the
    EMA weights with ``scaling_factor`` = 1 / std of the training images' latents) and ``eval.json`` (held-out
    PSNR/SSIM). Images never seen in training: ``data.holdout_fraction`` of each class, split with
    ``autoencoder.seed``. The run ends after ``max_steps``, after ``max_minutes`` of training, or when
    ``should_stop()`` returns True (checked after every step); it saves in every case. Returns the summary dict
    that is also ``eval.json``.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from ldm.evaluation.metrics import psnr as psnr_fn
    from ldm.evaluation.metrics import ssim as ssim_fn
    from ldm.utils import atomic_dir, atomic_write_json, default_device, seed_everything

    ac, dc = cfg.autoencoder, cfg.data
    out = Path(out_dir)
    run = RunFolder(out)
    out.mkdir(parents=True, exist_ok=True)
    run.write_config(cfg)
    if ac.batch_size < 1 or ac.max_steps < 1:
        raise UserError("autoencoder.batch_size and autoencoder.max_steps must be at least 1")
    if not 0.0 <= ac.ema_decay < 1.0:
        raise UserError(f"autoencoder.ema_decay must be in [0, 1), got {ac.ema_decay}")

    crop = ac.crop_size
    if crop and (crop % ac.down_factor or not ac.down_factor <= crop <= dc.image_size):
        raise UserError(
            f"autoencoder.crop_size={crop}: accepted are 0 (whole images) or a multiple of down_factor "
            f"({ac.down_factor}) between {ac.down_factor} and data.image_size ({dc.image_size})"
        )
    crop = 0 if crop == dc.image_size else crop
    crop_cells = (dc.image_size - crop) // ac.down_factor + 1  # window positions per axis, on the latent grid
    seed_everything(ac.seed)
    device = torch.device(ac.device if ac.device != "auto" else default_device())
    train_x, hold_x, scan = _load_images(data_dir, dc.image_size, dc.channels, ac.seed, dc.holdout_fraction)
    n_train = train_x.shape[0]
    if n_train == 0:
        raise UserError(f"{data_dir}: no training images left after the held-out split")
    model = build_autoencoder_kl(ac, dc.channels, dc.image_size).to(device)
    with torch.no_grad():
        # the posterior's log-variance is the second half of quant_conv's output. A random init gives it ~0, i.e.
        # unit-variance noise on latents of much smaller scale, and the decoder learns little until the encoder has
        # pushed it down; starting low (the KL term may raise it again) makes the first minutes count
        model.quant_conv.bias[ac.latent_channels :].fill_(ac.logvar_init)
    memory_format = torch.channels_last if ac.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False) if ac.ema_decay > 0 else None
    from ldm.diffusion.objective import optimizer_kwargs

    # fused AdamW: one kernel for all parameters (measured ~15 ms of a ~250 ms step with the per-tensor loop)
    opt = torch.optim.AdamW(
        model.parameters(), lr=ac.learning_rate, betas=(0.9, 0.99), weight_decay=0.0, **optimizer_kwargs(device)
    )
    ema_params = list(ema.parameters()) if ema is not None else []
    model_params = list(model.parameters())
    amp = _autocast_dtype(ac.mixed_precision, device)

    disc = disc_opt = None
    if ac.disc_weight > 0:
        disc = PatchDiscriminator.build(dc.channels).to(device).to(memory_format=memory_format).train()
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=ac.learning_rate, betas=(0.5, 0.9), weight_decay=0.0)
    last_layer = model.decoder.conv_out.weight

    # the images shown in every grid: spread over the held-out set (so over its classes), else over the training set
    show_from = hold_x if len(hold_x) else train_x
    show = show_from[torch.linspace(0, len(show_from) - 1, min(8, len(show_from))).long()]
    run.recon_dir.mkdir(exist_ok=True)
    metrics_f = open(run.metrics_path, "a")

    def log(rec: dict) -> None:
        metrics_f.write(json.dumps(rec) + "\n")
        metrics_f.flush()

    def evaluate(m: Any, x: torch.Tensor) -> dict[str, float]:
        if len(x) == 0:
            return {"psnr": float("nan"), "ssim": float("nan")}
        m.eval()
        y = decode(m, encode(m, x.to(device)))
        return {"psnr": float(psnr_fn(y.cpu(), x).mean()), "ssim": float(ssim_fn(y.cpu(), x).mean())}

    def grid(step: int) -> Path:
        m = ema if ema is not None else model
        m.eval()
        rec = decode(m, encode(m, show.to(device))).cpu()
        path = run.recon_grid_path(step)
        recon_grid(show, rec, per_row=8).save(path)
        return path

    gen = torch.Generator().manual_seed(ac.seed)
    perm, pos = torch.randperm(n_train, generator=gen), 0
    budget = ac.max_minutes * 60.0
    t0 = time.perf_counter()
    step, stopped_early = 0, False
    bar = tqdm(
        total=100.0,
        desc="train-vae",
        unit="%",
        disable=not progress,
        dynamic_ncols=True,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
    )
    try:
        while True:
            elapsed = time.perf_counter() - t0
            frac = max(step / ac.max_steps, elapsed / budget if budget > 0 else 0.0)
            if frac >= 1.0:
                break
            if should_stop is not None and should_stop():
                stopped_early = True
                break
            lr = _cosine_lr(ac.learning_rate, step, ac.warmup_steps, frac)
            for g in opt.param_groups:
                g["lr"] = lr

            # a batch: walk through random permutations of the in-memory training set (every image once per epoch)
            if pos + ac.batch_size > n_train:
                perm, pos = torch.randperm(n_train, generator=gen), 0
            idx = perm[pos : pos + ac.batch_size]
            pos += ac.batch_size
            x = train_x[idx]
            if dc.hflip:
                flip = torch.rand(len(x), generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            if crop:
                # one random window per image, on the latent grid (offsets are multiples of the down factor)
                offs = torch.randint(0, crop_cells, (len(x), 2), generator=gen) * ac.down_factor
                x = torch.stack([img[:, i : i + crop, j : j + crop] for img, (i, j) in zip(x, offs.tolist())])
            x = x.to(device).contiguous(memory_format=memory_format)

            model.train()
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                posterior = model.encode(x).latent_dist
                y = model.decode(posterior.sample()).sample
            y = y.float()
            rec_loss = (y - x).abs().mean() if ac.recon_loss == "l1" else (y - x).pow(2).mean()
            # LDM weighting: KL summed over the latent against reconstruction summed over pixels; both divided by
            # the pixel count here, so kl_weight means what it means in the paper's configs
            kl = posterior.kl().float().mean() / x[0].numel()
            loss = rec_loss + ac.kl_weight * kl
            rec: dict[str, Any] = {}
            use_disc = disc is not None and step >= ac.disc_start
            if use_disc:
                disc.requires_grad_(False)
                g_loss = -disc(y).mean()
                if ac.disc_adaptive:
                    # VQGAN eq. 7: balance the two gradients at the decoder's last layer
                    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
                    g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
                    d_weight = (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, 1e4).detach() * ac.disc_weight
                else:
                    d_weight = torch.tensor(ac.disc_weight)
                loss = loss + d_weight * g_loss
                rec.update(g_loss=float(g_loss.detach()), d_weight=float(d_weight))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if use_disc:
                disc.requires_grad_(True)
                # hinge loss (Lim & Ye 2017), as in the LDM / VQGAN discriminators
                d_loss = 0.5 * (F.relu(1 - disc(x)).mean() + F.relu(1 + disc(y.detach())).mean())
                disc_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                for g in disc_opt.param_groups:
                    g["lr"] = lr
                disc_opt.step()
                rec["d_loss"] = float(d_loss.detach())
            if ema is not None:
                # EMA warm-up (decay grows with the step) so that short runs are not dominated by the random init
                d = min(ac.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(ema_params, model_params, 1 - d)
            step += 1

            elapsed = time.perf_counter() - t0
            if step % ac.log_every == 0 or step == 1:
                log(
                    {
                        "step": step,
                        "seconds": round(elapsed, 2),
                        "lr": lr,
                        "loss": float(loss.detach()),
                        "rec_loss": float(rec_loss.detach()),
                        "kl": float(kl.detach()),
                        **rec,
                    }
                )
            if ac.sample_every > 0 and step % ac.sample_every == 0:
                grid(step)
                m = ema if ema is not None else model
                log({"step": step, "seconds": round(elapsed, 2), "holdout": evaluate(m, hold_x)})
            if progress:
                bar.n = 100.0 * min(1.0, max(step / ac.max_steps, elapsed / budget if budget > 0 else 0.0))
                bar.set_postfix_str(
                    f"step {step}, {step / max(elapsed, 1e-9):.2f} it/s, loss {float(rec_loss.detach()):.4f}"
                )
        train_seconds = time.perf_counter() - t0
    except BaseException:
        metrics_f.close()
        raise
    finally:
        bar.close()

    final = ema if ema is not None else model
    final.eval()
    grid_path = grid(step)
    result: dict[str, Any] = {"steps": step, "train_seconds": round(train_seconds, 1), "stopped_early": stopped_early}
    result["steps_per_second"] = round(step / max(train_seconds, 1e-9), 3)
    held = evaluate(final, hold_x)
    result.update(psnr=held["psnr"], ssim=held["ssim"], num_holdout=int(len(hold_x)), num_train=n_train)
    if ema is not None:
        raw = evaluate(model, hold_x)
        result.update(psnr_raw=raw["psnr"], ssim_raw=raw["ssim"])

    # LDM sec. 4.3.2 / appendix G: rescale latents to unit variance; measured on the training images' posterior means
    # (what `ldm prepare` caches), stored in the config so that scaling_factor="config" picks it up
    z = encode(final, train_x.to(device))
    std = float(z.double().std())
    scaling = 1.0 / std if std > 0 else 1.0
    final = final.to(memory_format=torch.contiguous_format).float().cpu()
    final.register_to_config(scaling_factor=scaling)
    with atomic_dir(run.vae_dir) as tmp:
        final.save_pretrained(tmp, safe_serialization=True)
    result.update(
        scaling_factor=scaling,
        latent_std=std,
        latent_shape=list(z.shape[1:]),
        classes=scan.classes,
        recon_grid=str(grid_path.relative_to(out)),
        vae_dir=run.vae_dir.name,
    )
    log({"step": step, "seconds": round(train_seconds, 2), "final": True, "holdout": held})
    metrics_f.close()
    atomic_write_json(run.eval_path, result)
    return result
