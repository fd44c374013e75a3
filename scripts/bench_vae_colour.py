"""The demo autoencoder's colours: ``autoencoder.colour_balance`` values (and any other overrides) trained for the
same number of steps on the synthetic faces, in the same run, measured on the held-out images.

    python scripts/bench_vae_colour.py                                   # 1100 steps: the demo's 3 min on AVX2
    python scripts/bench_vae_colour.py --variant 'lat8 autoencoder.latent_channels=8'
    python scripts/bench_vae_colour.py --steps 30 --per-class 20 --record-dir /tmp     # smoke run

Why a step count and not minutes: on CPUs without AVX-512 the demo's 3-minute autoencoder gets ~1100 float32 steps
(docs/benchmarks.md) and greens and purples come out grey-blue; a faster CPU cannot reproduce that with a time
budget, but it can run the same 1100 float32 steps. Each row is ``ldm train-vae`` with ``configs/demo.yaml`` and
``autoencoder.max_steps=STEPS autoencoder.max_minutes=0 autoencoder.mixed_precision=fp32`` plus the row's overrides.

Per row: held-out PSNR and SSIM (``train-vae``'s own ``eval.json``); the **background colour error**: the mean
absolute difference between an image's 4-pixel border (background in every synthetic face) and its reconstruction's,
averaged over R, G, B, in 0-255 units; and the **colourfulness** of the reconstructed backgrounds (the standard
deviation of the border's mean R, G, B; the real images' is printed beside it): a grey-blue background has the
right brightness but little colourfulness. Writes ``<workdir>/bench_vae_colour.json``, the reconstruction grids
stay in the row folders, and a record in ``docs/benchmarks/`` (``scripts/bench_record.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "scripts"))  # bench_record

BORDER = 4  # pixels of the frame that is background in every synthetic face


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"NAME key=value ..."`` -> (NAME, overrides)."""
    name, *overrides = text.split()
    if not overrides or "=" in name or any("=" not in o for o in overrides):
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected a name then key=value overrides")
    return name, overrides


def border_colours(images) -> torch.Tensor:  # noqa: F821
    """Mean R, G, B of each image's border, 0-255 units: (N, 3) from images (N, 3, H, W) in [-1, 1]."""
    import torch

    h, w = images.shape[-2:]
    frame = torch.zeros(h, w, dtype=torch.bool)
    frame[:BORDER], frame[-BORDER:], frame[:, :BORDER], frame[:, -BORDER:] = True, True, True, True
    return (images[:, :, frame].mean(-1) + 1.0) * 127.5


def colour_metrics(real, recon) -> dict[str, float]:
    """Background colour error and colourfulness of reconstructions ``recon`` of ``real`` (N, 3, H, W)."""
    a, b = border_colours(real), border_colours(recon.clamp(-1, 1))
    return {
        "background_error": float((a - b).abs().mean()),
        "colourfulness": float(b.std(dim=1).mean()),
        "colourfulness_real": float(a.std(dim=1).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=1100, help="autoencoder steps per row (default %(default)s)")
    p.add_argument("--balances", type=float, nargs="+", default=[0.0, 0.25, 0.5],
                   help="autoencoder.colour_balance rows (default: 0 0.25 0.5)")  # fmt: skip
    p.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="'NAME KEY=VALUE ...'",
                   help="one more row: colour_balance 0 with these overrides; repeatable")  # fmt: skip
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"), help="recipe (default: %(default)s)")
    p.add_argument("--per-class", type=int, default=200, help="synthetic faces per class (default: the demo's 200)")
    p.add_argument("--workdir", default="runs/bench-vae-colour", help="where everything is written")
    p.add_argument("--record-dir", default=str(ROOT / "docs" / "benchmarks"), help="record folder")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPU count)")
    args = p.parse_args(argv)

    import torch
    from bench_record import write_record

    from ldm.config import load_config
    from ldm.data.synth import make_synth_faces
    from ldm.errors import UserError
    from ldm.models.autoencoder import decode, encode, load_autoencoder
    from ldm.training.autoencoder import _load_images, train_vae
    from ldm.utils import atomic_write_json

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    workdir = Path(args.workdir)
    data = workdir / "synth-faces"
    if not data.is_dir():
        make_synth_faces(data, per_class=args.per_class, seed=0)
    fixed = [f"autoencoder.max_steps={args.steps}", "autoencoder.max_minutes=0", "autoencoder.mixed_precision=fp32"]
    rows_in = [(f"balance-{b:g}", [f"autoencoder.colour_balance={b:g}"]) for b in args.balances]
    rows_in += [(n, ["autoencoder.colour_balance=0", *o]) for n, o in args.variant]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = {}
    try:
        for name, overrides in rows_in:
            cfg = load_config(args.config, [*fixed, *overrides])
            out = workdir / f"{name}-{stamp}"
            t0 = time.time()
            summary = train_vae(cfg, data, out, progress=False)
            seconds = time.time() - t0
            # the held-out images of the run (same seed and split as train_vae's)
            _, hold, _ = _load_images(data, cfg.data.image_size, cfg.data.channels, cfg.autoencoder.seed,
                                      cfg.data.holdout_fraction)  # fmt: skip
            ae = load_autoencoder(out, device="cpu")
            with torch.no_grad():
                recon = decode(ae, encode(ae, hold))
            rows[name] = {
                "overrides": overrides,
                "steps": summary["steps"],
                "seconds": round(seconds, 1),
                "psnr": summary["psnr"],
                "ssim": summary["ssim"],
                **colour_metrics(hold, recon),
                "recon_grid": str(out / summary["recon_grid"]),
            }
            r = rows[name]
            print(f"{name}: {r['steps']} steps in {r['seconds']} s: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}, "
                  f"background colour error {r['background_error']:.1f}/255, colourfulness {r['colourfulness']:.1f} "
                  f"(real {r['colourfulness_real']:.1f})", flush=True)  # fmt: skip
    except UserError as e:
        print(f"bench_vae_colour: error: {e}", file=sys.stderr)
        return 2
    result = {"settings": {**vars(args), "variant": [list(v) for v in args.variant]}, "fixed_overrides": fixed,
              "num_holdout": len(hold), "rows": rows}  # fmt: skip
    atomic_write_json(workdir / "bench_vae_colour.json", result)
    record = write_record("bench_vae_colour", result, args.record_dir)
    print(f"wrote {workdir / 'bench_vae_colour.json'} and {record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
