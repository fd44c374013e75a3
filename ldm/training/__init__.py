"""Training: the loop for the diffusion model and for the autoencoder, checkpoints, export to a pipeline."""
