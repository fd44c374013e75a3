"""ldm: a from-scratch, class-conditional latent diffusion training framework with a Gradio app."""

import os as _os

# OpenMP threads that spin-wait for each other burn the other core on a busy 2-core machine (a tiny training
# step measured 5.3 s spinning vs 0.17 s without); passive waiting costs little on an idle one. Set before torch
# is first imported; a user's own setting wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "0")

__version__ = "0.1.0"
