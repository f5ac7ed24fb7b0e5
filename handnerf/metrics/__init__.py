"""Image metrics shared by training (the LPIPS loss) and evaluation: PSNR and SSIM
(:mod:`handnerf.metrics.image`) and standard LPIPS (:mod:`handnerf.metrics.perceptual`)."""
