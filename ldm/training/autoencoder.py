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
from ldm.models.autoencoder import PatchDiscriminator, build_autoencoder_kl, decode, encode

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


def recon_grid(originals: torch.Tensor, recons: torch.Tensor, per_row: int = 8, pad: int = 2) -> Any:
    """A PIL image: originals in the top row(s), their reconstructions in as many rows below, a grey gap between.

    ``originals``, ``recons``: ``(B, C, H, W)`` in [-1, 1], C = 1 or 3.
    """
    import numpy as np
    import torch
    from PIL import Image

    b, c, h, w = originals.shape
    rows = math.ceil(b / per_row)
    cols = min(b, per_row)
    canvas = torch.full((3, 2 * rows * (h + pad) + pad + pad, cols * (w + pad) + pad), 0.5)
    for block, imgs in enumerate((originals, recons)):
        imgs = (
            ((imgs.detach().float().cpu().clamp(-1, 1) + 1) / 2).expand(-1, 3, -1, -1)
            if c == 1
            else ((imgs.detach().float().cpu().clamp(-1, 1) + 1) / 2)
        )
        for i in range(b):
            r, col = divmod(i, per_row)
            y = pad + (block * rows + r) * (h + pad) + block * pad  # an extra gap between the two blocks
            x = pad + col * (w + pad)
            canvas[:, y : y + h, x : x + w] = imgs[i]
    arr = (canvas.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


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
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from ldm.config import save_config
    from ldm.device import autocast_context, default_device, resolve_mixed_precision
    from ldm.evaluation.metrics import psnr as psnr_fn
    from ldm.evaluation.metrics import ssim as ssim_fn
    from ldm.training.optim import lr_factor, optimizer_kwargs
    from ldm.utils import atomic_dir, atomic_write_json, seed_everything

    ac, dc = cfg.autoencoder, cfg.data
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
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
    ema = ema_model = None
    if ac.ema_decay > 0:
        # EMA warm-up (decay (1 + t) / (10 + t), capped at ema_decay) so that short runs are not dominated by the init
        ema = EMAModel(model.parameters(), decay=ac.ema_decay, use_ema_warmup=False, foreach=True)
        ema_model = copy.deepcopy(model).eval().requires_grad_(False)  # the EMA weights are copied in to evaluate
    opt = torch.optim.AdamW(
        model.parameters(), lr=ac.learning_rate, betas=(0.9, 0.99), weight_decay=0.0, **optimizer_kwargs(device)
    )
    precision = resolve_mixed_precision(ac.mixed_precision, str(device), "autoencoder.mixed_precision", "native")

    def averaged() -> Any:
        """The EMA weights in their own model (the raw model without EMA)."""
        if ema is None:
            return model
        ema.copy_to(ema_model.parameters())
        return ema_model

    disc = disc_opt = None
    if ac.disc_weight > 0:
        disc = PatchDiscriminator.build(dc.channels).to(device).to(memory_format=memory_format).train()
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=ac.learning_rate, betas=(0.5, 0.9), weight_decay=0.0)
    last_layer = model.decoder.conv_out.weight

    # the images shown in every grid: spread over the held-out set (so over its classes), else over the training set
    show_from = hold_x if len(hold_x) else train_x
    show = show_from[torch.linspace(0, len(show_from) - 1, min(8, len(show_from))).long()]
    (out / "recon").mkdir(exist_ok=True)
    metrics_f = open(out / "metrics.jsonl", "a")

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
        m = averaged()
        m.eval()
        rec = decode(m, encode(m, show.to(device))).cpu()
        path = out / "recon" / f"step-{step:06d}.png"
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
            lr = ac.learning_rate * lr_factor(
                step, ac.warmup_steps, horizon=ac.max_steps, time_fraction=frac, decay_during_warmup=True
            )
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
            with autocast_context(precision, str(device)):
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
                ema.step(model.parameters())
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
                log({"step": step, "seconds": round(elapsed, 2), "holdout": evaluate(averaged(), hold_x)})
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

    final = averaged()
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
    with atomic_dir(out / "vae") as tmp:
        final.save_pretrained(tmp, safe_serialization=True)
    result.update(
        scaling_factor=scaling,
        latent_std=std,
        latent_shape=list(z.shape[1:]),
        classes=scan.classes,
        recon_grid=str(grid_path.relative_to(out)),
        vae_dir="vae",
    )
    log({"step": step, "seconds": round(train_seconds, 2), "final": True, "holdout": held})
    metrics_f.close()
    atomic_write_json(out / "eval.json", result)
    return result
