"""ldm: a from-scratch, class-conditional latent diffusion training framework with a Gradio app.

Importing ``ldm`` changes nothing in the process: environment defaults (the OpenMP spin count) are set by the entry
points (the ``ldm`` command, ``python app.py``, the app's worker) through :func:`ldm.utils.set_runtime_defaults`.
"""

__version__ = "0.1.0"
