"""The diffusion model: training objective, schedulers, the class-conditional pipeline (the one sampling loop)."""
