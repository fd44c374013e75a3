"""ldm: a from-scratch, class-conditional latent diffusion training framework with a Gradio app."""

__version__ = "0.1.0"
