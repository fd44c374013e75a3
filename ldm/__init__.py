"""ldm: a from-scratch, class-conditional latent diffusion training framework with a Gradio app."""

import os as _os

# How long an OpenMP thread spin-waits for work before sleeping. libgomp's default (300000 spins) makes two busy
# processes on a 2-core machine slow each other down badly (a tiny test step: 5.3 s spinning vs 0.17 s at 0), but 0
# costs ~40% of an autoencoder or UNet training step on an idle machine (measured, train-vae step at batch 8:
# 0 -> 270-305 ms, 10000 -> 190-210 ms, default -> 187-220 ms; two trainings at once: 0 -> 650 ms each, 10000 ->
# 1140 ms, 30000 -> 2050 ms). 10000 keeps nearly all of the speed of spinning and limits the damage of contention;
# the test suite, which runs processes side by side, sets 0. Set before torch is first imported; a user's own
# setting wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
