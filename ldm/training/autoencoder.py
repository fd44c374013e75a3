"""Stage 1 of latent diffusion: train a diffusers ``AutoencoderKL`` from scratch on a class-folder dataset.

    ldm train-vae --data data/faces --out runs/faces-vae --config configs/faces.yaml
    ldm train-vae --out runs/faces-vae --resume latest --max-minutes 10

The same skeleton as the diffusion trainer (:class:`ldm.training.loop.TrainingLoop`): accelerate, diffusers'
``EMAModel``, the learning rate of :func:`ldm.training.optim.lr_factor`, the precision rule of :mod:`ldm.device`,
atomic checkpoints with exact resume, safe stop, ``status.json`` and ``metrics.jsonl``. Its end products:
``vae/`` (the EMA weights with their ``scaling_factor``), ``recon/step-XXXXXX.png`` and ``eval.json``.

The recipe follows Rombach et al. 2022 (latent diffusion, sec. 3 and appendix G): a KL-regularised autoencoder
with a pixel reconstruction loss and a very small KL weight (the latent stays nearly deterministic), and an
optional patch discriminator (Isola et al. 2017, PatchGAN) with a hinge loss and the adaptive weight of Esser et
al. 2021 (VQGAN, eq. 7). For small datasets on a CPU the whole dataset sits in memory as one tensor.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ldm.errors import UserError
from ldm.figures import recon_grid
from ldm.models.autoencoder import PatchDiscriminator, build_autoencoder_kl, decode, encode
from ldm.run_folder import RunFolder
from ldm.training.loop import BatchStream, TrainingLoop, make_ema

if TYPE_CHECKING:
    from ldm.config import Config


def _load_images(data_dir: str | Path, image_size: int, channels: int, seed: int, holdout_fraction: float):
    """The whole dataset in memory: (train (N, C, S, S), holdout (M, C, S, S)) float32 in [-1, 1], and the scan."""
    import torch

    from ldm.data.folders import holdout_split, load_image, scan_image_folder

    scan = scan_image_folder(data_dir)
    train_idx, hold_idx = holdout_split(scan.samples, holdout_fraction, seed)
    images = torch.stack([load_image(p, image_size, channels) for p, _ in scan.samples])
    return images[train_idx], images[hold_idx], scan


def colour_balance_matrix(images: torch.Tensor, power: float) -> torch.Tensor:
    """The (C, C) colour transform of ``autoencoder.colour_balance``: ``V diag((w_max / w) ** power) V^T`` from the
    eigen-decomposition ``V diag(w) V^T`` of the images' channel covariance (``images``: (N, C, H, W)).

    Symmetric, so a colour's own axis is kept; ``power`` 0.5 whitens, 0 is the identity."""
    pixels = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    w, v = torch.linalg.eigh(torch.cov(pixels))
    w = w.clamp_min(w.max() * 1e-4)  # a colour direction with no variance (grey in RGB) is not blown up
    return (v @ torch.diag((w.max() / w) ** power) @ v.T).float()


def in_colour_space(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Images ``x`` (N, C, H, W) with every pixel's channels multiplied by ``matrix`` (C, C)."""
    return torch.einsum("ij,njhw->nihw", matrix.to(x.device, x.dtype), x)


def fold_colour_space(model: Any, matrix: torch.Tensor) -> Any:
    """A copy of ``model`` (trained on images in the colour space ``matrix`` maps RGB to) that takes and returns RGB:
    ``matrix`` folded into the first convolution's weights, its inverse into the last one's (both are linear in the
    channels, so the copy computes exactly what the model did on transformed images)."""
    folded = copy.deepcopy(model)
    inverse = torch.linalg.inv(matrix.double()).float()
    with torch.no_grad():
        conv_in, conv_out = folded.encoder.conv_in, folded.decoder.conv_out
        m, inv = matrix.to(conv_in.weight), inverse.to(conv_out.weight)
        conv_in.weight.copy_(torch.einsum("oikl,ij->ojkl", conv_in.weight, m))
        conv_out.weight.copy_(torch.einsum("ij,jokl->iokl", inv, conv_out.weight))
        conv_out.bias.copy_(inv @ conv_out.bias)
    return folded


def check_autoencoder_config(cfg: Config) -> None:
    """Raise UserError for autoencoder settings that cannot train (naming the key and what is accepted)."""
    ac, dc = cfg.autoencoder, cfg.data
    if ac.batch_size < 1 or ac.max_steps < 1:
        raise UserError("autoencoder.batch_size and autoencoder.max_steps must be at least 1")
    if not 0.0 <= ac.ema_decay < 1.0:
        raise UserError(f"autoencoder.ema_decay must be in [0, 1), got {ac.ema_decay}")
    if not 0.0 <= ac.colour_balance <= 1.0:  # also refuses nan
        raise UserError(
            f"autoencoder.colour_balance must be in [0, 1] (0: plain RGB, 0.5: whitened), got {ac.colour_balance}"
        )
    crop = ac.crop_size
    if crop and (crop % ac.down_factor or not ac.down_factor <= crop <= dc.image_size):
        raise UserError(
            f"autoencoder.crop_size={crop}: accepted are 0 (whole images) or a multiple of down_factor "
            f"({ac.down_factor}) between {ac.down_factor} and data.image_size ({dc.image_size})"
        )


class AutoencoderTrainer(TrainingLoop):
    """One ``train-vae`` run; :func:`train_vae` is the usual entry point (arguments as its)."""

    kind = "autoencoder"
    section = "autoencoder"
    weights = "autoencoder"
    cpu_bf16 = "native"  # measured: the autoencoder gains from bf16 autocast only with native bf16 arithmetic
    label = "train-vae"
    divergence_hint = "Try a lower autoencoder.learning_rate or autoencoder.mixed_precision=no, then"

    def check_config(self) -> None:
        self.ac, self.dc = self.cfg.autoencoder, self.cfg.data
        check_autoencoder_config(self.cfg)

    def load_source(self, data_dir: Path) -> None:
        if self.world > 1:
            raise UserError("train-vae trains in one process; start it without `accelerate launch` / torchrun")
        self.data_dir = data_dir
        self.max_steps, self.max_minutes = self.ac.max_steps, self.ac.max_minutes
        # with a time budget (the usual case) the step count at the end is unknown: the bar counts steps and time left
        self.horizon = self.ac.max_steps if self.ac.max_minutes <= 0 else None
        crop = self.ac.crop_size
        self.crop = 0 if crop == self.dc.image_size else crop
        self.crop_cells = (self.dc.image_size - self.crop) // self.ac.down_factor + 1  # window positions per axis

    # -- setup ------------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        from ldm.training.optim import optimizer_kwargs
        from ldm.utils import seed_everything

        ac, dc = self.ac, self.dc
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            # Recorded before any work, so a run folder always says how it was made and from what.
            self.run_folder.write_config(self.cfg)
            self.run_folder.recon_dir.mkdir(exist_ok=True)
        seed_everything(ac.seed)
        self.train_x, self.hold_x, self.scan = _load_images(
            self.data_dir, dc.image_size, dc.channels, ac.seed, dc.holdout_fraction
        )
        if len(self.train_x) == 0:
            raise UserError(f"{self.data_dir}: no training images left after the held-out split")
        if self.main and self.scan.skipped:  # said here as `ldm data inspect` and `ldm prepare` say it
            root, skipped = self.scan.root, self.scan.skipped
            lines = [f"  {p.relative_to(root) if p.is_relative_to(root) else p}: {why}" for p, why in skipped[:10]]
            more = []
            if len(skipped) > 10:
                more = [f"  ... and {len(skipped) - 10} more (ldm data inspect {root} lists them)"]
            self.log("\n".join([f"skipped {len(skipped)} files of {root}:", *lines, *more]))
        # the colour space of training (None: plain RGB); computed from the training images, so a resumed run
        # (same data, same split) gets the same one
        self.colour = None
        if dc.channels == 3 and ac.colour_balance > 0:
            self.colour = colour_balance_matrix(self.train_x, ac.colour_balance)
        model = build_autoencoder_kl(ac, dc.channels, dc.image_size).to(self.device)
        with torch.no_grad():
            # the posterior's log-variance is the second half of quant_conv's output. A random init gives it ~0, i.e.
            # unit-variance noise on latents of much smaller scale, and the decoder learns little until the encoder
            # has pushed it down; starting low (the KL term may raise it again) makes the first minutes count
            model.quant_conv.bias[ac.latent_channels :].fill_(ac.logvar_init)
        self.memory_format = torch.channels_last if ac.channels_last else torch.contiguous_format
        model = model.to(memory_format=self.memory_format).train()
        side = self.crop or dc.image_size
        probe_x = self.train_x[torch.arange(ac.batch_size) % len(self.train_x), :, :side, :side]
        probe_x = probe_x.to(self.device).contiguous(memory_format=self.memory_format)
        self.settle_precision(model, lambda: torch.nn.functional.mse_loss(model(probe_x).sample.float(), probe_x))
        if self.main:
            self.record_inputs()
        # EMA warm-up (decay (1 + t) / (10 + t), capped at ema_decay) so that short runs are not dominated by the init
        self.ema = make_ema(model, ac.ema_decay, warmup=False) if ac.ema_decay > 0 else None
        self.ema_model = copy.deepcopy(model).eval().requires_grad_(False) if self.ema is not None else None
        fused = optimizer_kwargs(self.device)
        opt = torch.optim.AdamW(model.parameters(), lr=ac.learning_rate, betas=(0.9, 0.99), weight_decay=0.0, **fused)
        disc = disc_opt = None
        if ac.disc_weight > 0:
            disc = PatchDiscriminator.build(dc.channels).to(self.device).to(memory_format=self.memory_format).train()
            disc_opt = torch.optim.AdamW(disc.parameters(), lr=ac.learning_rate, betas=(0.5, 0.9), weight_decay=0.0)
        # the images shown in every grid: spread over the held-out set (so over its classes), else the training set
        show_from = self.hold_x if len(self.hold_x) else self.train_x
        self.show = show_from[torch.linspace(0, len(show_from) - 1, min(8, len(show_from))).long()]
        self.generator = torch.Generator().manual_seed(ac.seed)  # flips and crops
        self.stream = BatchStream(len(self.train_x), ac.seed)
        if self.resume_from is not None:
            self._load_checkpoint(model, opt, disc, disc_opt)
        # The discriminator stays outside accelerate: it runs in float32, outside autocast, with its own backward.
        self.model, self.optimizer = self.acc.prepare(model, opt)
        self.disc, self.disc_opt = disc, disc_opt
        self.raw_model = self.acc.unwrap_model(self.model)
        if self.resume_from is not None:
            self.restore_rng(lambda: self.generator.manual_seed(ac.seed + 104_729 * self.step_count))
        self.t0 = time.monotonic()

    def training_source(self) -> dict[str, Any]:
        return {
            "data": {
                "path": str(self.data_dir.resolve()),
                "classes": self.scan.classes,
                "num_train": len(self.train_x),
                "num_holdout": len(self.hold_x),
            }
        }

    def _load_checkpoint(self, model: Any, opt: Any, disc: Any, disc_opt: Any) -> None:

        ckpt = self.resume_from
        state = self.read_checkpoint_state()
        self.load_weights(model)
        self.load_optimizer(opt)
        if disc is not None and (ckpt / "discriminator.pt").is_file():
            d = torch.load(ckpt / "discriminator.pt", map_location="cpu", weights_only=False)
            disc.load_state_dict(d["model"])
            disc_opt.load_state_dict(d["optimizer"])
        self.stream.load_state_dict(state["data"])

    def save_state(self, folder: Path) -> dict[str, Any]:
        if self.disc is not None:
            disc = {"model": self.disc.state_dict(), "optimizer": self.disc_opt.state_dict()}
            torch.save(disc, folder / "discriminator.pt")
        return {"data": self.stream.state_dict(), "data_dir": str(self.data_dir.resolve())}

    # -- one optimiser step -------------------------------------------------------------------------------------------

    def _batch(self) -> torch.Tensor:
        """The next training images, flipped and cropped as configured, on the device."""
        ac, dc = self.ac, self.dc
        x = self.train_x[self.stream.next(ac.batch_size)]
        if dc.hflip:
            flip = torch.rand(len(x), generator=self.generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.crop:
            # one random window per image, on the latent grid (offsets are multiples of the down factor)
            offs = torch.randint(0, self.crop_cells, (len(x), 2), generator=self.generator) * ac.down_factor
            c = self.crop
            x = torch.stack([img[:, i : i + c, j : j + c] for img, (i, j) in zip(x, offs.tolist())])
        return x.to(self.device).contiguous(memory_format=self.memory_format)

    def step(self) -> dict[str, Any]:
        """One optimiser step of the autoencoder (and of the discriminator when it is on); returns the metrics record
        of the step (``step, seconds, lr, loss, rec_loss, kl`` and the GAN terms)."""
        ac, tf = self.ac, self._time_fraction()
        lr = ac.learning_rate * self.lr_multiplier(
            ac.warmup_steps, "cosine", ac.max_steps, tf, decay_during_warmup=True
        )
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x = self._batch()
        if self.colour is not None:
            x = in_colour_space(x, self.colour)  # input and target: the loss is measured in that space too
        model = self.raw_model  # encode/decode are not forward(): called on the module itself
        model.train()
        with self.acc.autocast():
            posterior = model.encode(x).latent_dist
            y = model.decode(posterior.sample()).sample
        y = y.float()
        rec_loss = (y - x).abs().mean() if ac.recon_loss == "l1" else (y - x).pow(2).mean()
        # LDM weighting: KL summed over the latent against reconstruction summed over pixels; both divided by
        # the pixel count here, so kl_weight means what it means in the paper's configs
        kl = posterior.kl().float().mean() / x[0].numel()
        loss = rec_loss + ac.kl_weight * kl
        use_disc = self.disc is not None and self.step_count >= ac.disc_start
        gan: dict[str, Any] = {}
        if use_disc:
            adversarial, gan = self._adversarial_loss(y, rec_loss)
            loss = loss + adversarial
        self.optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            return {"step": self.step_count + 1, "loss": float(loss.detach())}  # the loop stops, nothing stepped
        self.acc.backward(loss)
        self.optimizer.step()
        if use_disc:
            gan["d_loss"] = self._discriminator_step(x, y.detach(), lr)
        if self.ema is not None:
            self.ema.step(self.raw_model.parameters())
        self.step_count += 1
        return {
            "step": self.step_count,
            "seconds": round(self._elapsed(), 2),
            "lr": lr,
            "loss": float(loss.detach()),
            "rec_loss": float(rec_loss.detach()),
            "kl": float(kl.detach()),
            **gan,
        }

    def _adversarial_loss(self, y: torch.Tensor, rec_loss: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The generator's GAN term for reconstructions ``y``, weighted, and its record (``g_loss``, ``d_weight``)."""
        ac, disc = self.ac, self.disc
        disc.requires_grad_(False)
        g_loss = -disc(y).mean()
        if ac.disc_adaptive:
            # VQGAN eq. 7: balance the two gradients at the decoder's last layer
            last_layer = self.raw_model.decoder.conv_out.weight
            g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
            g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
            d_weight = (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, 1e4).detach() * ac.disc_weight
        else:
            d_weight = torch.tensor(ac.disc_weight)
        return d_weight * g_loss, {"g_loss": float(g_loss.detach()), "d_weight": float(d_weight)}

    def _discriminator_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> float:
        """One step of the discriminator on real images ``x`` and reconstructions ``y``; returns its loss."""
        import torch.nn.functional as F

        self.disc.requires_grad_(True)
        # hinge loss (Lim & Ye 2017), as in the LDM / VQGAN discriminators
        d_loss = 0.5 * (F.relu(1 - self.disc(x)).mean() + F.relu(1 + self.disc(y)).mean())
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        for g in self.disc_opt.param_groups:
            g["lr"] = lr
        self.disc_opt.step()
        return float(d_loss.detach())

    def train_step(self) -> float:
        self.record = self.step()
        return self.record["loss"]

    # -- the periodic work after a step: log, reconstruction grid with held-out PSNR/SSIM, checkpoint ---------------

    def begin(self) -> None:
        ac = self.ac
        if self.main:
            self.log(
                f"training an autoencoder on {len(self.train_x)} images ({len(self.hold_x)} held out) of "
                f"{len(self.scan.classes)} classes from {self.data_dir}; latent {ac.latent_channels} channels, "
                f"down factor {ac.down_factor}; device {self.device}, mixed precision {self.mixed_precision}"
            )

    def after_step(self, at_end: bool) -> None:
        ac, step = self.ac, self.step_count
        if step % ac.log_every == 0 or step == 1:
            self.last_loss = self.record["loss"]
            if self.main:
                self.run_folder.append_metrics(self.record)
                self.status("running", "training", loss=self.last_loss)
            if self.on_log is not None:
                self.on_log(self.record)
        if ac.sample_every > 0 and step % ac.sample_every == 0:
            self.save_recon_grid()
            held = self.evaluate(self.averaged(), self.hold_x)
            self.run_folder.append_metrics({"step": step, "seconds": round(self._elapsed(), 2), "holdout": held})
        if ac.checkpoint_every > 0 and step % ac.checkpoint_every == 0 and not at_end:
            self.save_checkpoint()
        rate = (step - self.start_step) / max(time.monotonic() - self.t0, 1e-9)
        self.bar_postfix(loss=f"{self.record['rec_loss']:.4f}", it_s=f"{rate:.2f}")

    def averaged(self) -> Any:
        """The EMA weights in their own model (the raw model without EMA), in eval mode, on RGB images."""
        if self.ema is None:
            return self.rgb(self.raw_model).eval()
        self.ema.copy_to(self.ema_model.parameters())
        return self.rgb(self.ema_model).eval()

    def rgb(self, model: Any) -> Any:
        """``model`` as an autoencoder of RGB images: itself, or a copy with the training colour space folded in."""
        return model if self.colour is None else fold_colour_space(model, self.colour)

    def evaluate(self, m: Any, x: torch.Tensor) -> dict[str, float]:
        """Held-out PSNR/SSIM of ``m`` on the images ``x`` (nan without held-out images)."""
        from ldm.evaluation.metrics import psnr, ssim

        if len(x) == 0:
            return {"psnr": float("nan"), "ssim": float("nan")}
        m.eval()
        y = decode(m, encode(m, x.to(self.device)))
        return {"psnr": float(psnr(y.cpu(), x).mean()), "ssim": float(ssim(y.cpu(), x).mean())}

    def save_recon_grid(self) -> Path:
        """``recon/step-XXXXXX.png``: the shown images above their reconstructions by the EMA weights."""
        m = self.averaged()
        rec = decode(m, encode(m, self.show.to(self.device))).cpu()
        path = self.run_folder.recon_grid_path(self.step_count)
        recon_grid(self.show, rec, per_row=8).save(path)
        return path

    def finish(self, state: str, reason: str) -> dict[str, Any]:
        """A final checkpoint, grid and evaluation; ``vae/`` with its scaling factor; ``eval.json``."""
        from ldm.utils import atomic_dir, atomic_write_json

        self.checkpoint_unless_saved()
        step, train_seconds = self.step_count, self._elapsed()
        final = self.averaged()
        grid_path = self.save_recon_grid()
        result: dict[str, Any] = {
            "steps": step,
            "train_seconds": round(train_seconds, 1),
            "stopped_early": state == "stopped",
        }
        result["steps_per_second"] = round((step - self.start_step) / max(time.monotonic() - self.t0, 1e-9), 3)
        held = self.evaluate(final, self.hold_x)
        result.update(psnr=held["psnr"], ssim=held["ssim"], num_holdout=int(len(self.hold_x)))
        result["num_train"] = int(len(self.train_x))
        if self.ema is not None:
            raw = self.evaluate(self.rgb(self.raw_model), self.hold_x)
            result.update(psnr_raw=raw["psnr"], ssim_raw=raw["ssim"])

        # LDM sec. 4.3.2 / appendix G: rescale latents to unit variance; measured on the training images' posterior
        # means (what `ldm prepare` caches), stored in the config so that scaling_factor="config" picks it up
        z = encode(final, self.train_x.to(self.device))
        std = float(z.double().std())
        scaling = 1.0 / std if std > 0 else 1.0
        final = copy.deepcopy(final).to(memory_format=torch.contiguous_format).float().cpu()
        final.register_to_config(scaling_factor=scaling)
        with atomic_dir(self.run_folder.vae_dir) as tmp:
            final.save_pretrained(tmp, safe_serialization=True)
        result.update(
            scaling_factor=scaling,
            latent_std=std,
            latent_shape=list(z.shape[1:]),
            classes=self.scan.classes,
            recon_grid=str(grid_path.relative_to(self.out)),
            vae_dir=self.run_folder.vae_dir.name,
        )
        self.run_folder.append_metrics(
            {"step": step, "seconds": round(train_seconds, 2), "final": True, "holdout": held}
        )
        atomic_write_json(self.run_folder.eval_path, result)
        measured = (
            f"held-out PSNR {held['psnr']:.2f} dB, SSIM {held['ssim']:.4f}"
            if len(self.hold_x)
            else "no held-out images"
        )
        msg = (
            f"{state} at step {step} ({reason}) after {train_seconds / 60:.1f} min: {measured}; "
            f"autoencoder in {self.run_folder.vae_dir}"
        )
        self.log(msg, echo=False)
        self.status(state, msg, loss=self.last_loss)
        return result


def train_vae(
    cfg: Config,
    data_dir: str | Path | None,
    out_dir: str | Path,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train a diffusers ``AutoencoderKL`` from scratch on a class-folder dataset (labels are ignored).

    Writes into ``out_dir``: ``config.yaml`` (first, before any work), ``recon/step-XXXXXX.png`` (originals above
    their reconstructions, every ``autoencoder.sample_every`` steps and at the end), ``metrics.jsonl`` (one JSON
    line per ``log_every`` steps, plus held-out PSNR/SSIM lines at each grid), ``checkpoints/step-XXXXXX/`` (every
    ``autoencoder.checkpoint_every`` steps and at the end), ``status.json``, ``train.log``, ``vae/``
    (``save_pretrained`` of the EMA weights with ``scaling_factor`` = 1 / std of the training images' latents) and
    ``eval.json`` (held-out PSNR/SSIM). Images never seen in training: ``data.holdout_fraction`` of each class,
    split with ``autoencoder.seed``. The run ends after ``max_steps``, after ``max_minutes`` of training, or when
    ``should_stop()`` returns True (polled after every step); it saves in every case. Returns the summary dict
    that is also ``eval.json``.

    ``options``: ``resume`` (``"latest"``, a run or checkpoint folder: continue exactly; ``data_dir`` may then be
    None, the one the checkpoint records), ``on_log`` (called with every metrics record), ``device``.
    """
    if data_dir is None:
        data_dir = recorded_data_dir(out_dir, options.get("resume"))
    trainer = AutoencoderTrainer(cfg, data_dir, out_dir, progress=progress, should_stop=should_stop, **options)
    trainer.setup()
    return trainer.run()


def recorded_data_dir(out: str | Path, resume: str | Path | None) -> Path:
    """The dataset a resumed autoencoder run was trained on (its checkpoint's ``data_dir``)."""

    if resume is None:
        raise UserError("--data DIR is required for a new run (a folder of class folders)")
    ckpt = RunFolder(out).resolve_resume(resume)
    recorded = RunFolder.read_checkpoint_state(ckpt).get("data_dir")
    if not recorded:
        raise UserError(f"--resume: checkpoint {ckpt} does not record its dataset; pass --data DIR")
    if not Path(recorded).is_dir():
        raise UserError(f"--resume: the run was trained on {recorded}, which is no longer there; pass --data DIR")
    return Path(recorded)
