"""Stage 1 of the flow: class-folder images (and synthetic demo faces) -> the latent cache."""
