"""Judging samples and models: PSNR/SSIM, Inception features (KID/FID), a class classifier, run reports."""
