"""handnerf.evaluation: PSNR, SSIM, offline-safe LPIPS, evaluation protocols, reports."""

from handnerf.evaluation.protocols import DEFAULT_PROTOCOL, PROTOCOLS, EvalProtocol, get_protocol
from handnerf.evaluation.report import image_key, write_report
from handnerf.metrics.image import psnr, ssim, ssim_map
from handnerf.metrics.perceptual import PerceptualMetric, PerceptualUnavailableError

__all__ = [
    "DEFAULT_PROTOCOL",
    "PROTOCOLS",
    "EvalProtocol",
    "PerceptualMetric",
    "PerceptualUnavailableError",
    "get_protocol",
    "image_key",
    "psnr",
    "ssim",
    "ssim_map",
    "write_report",
]
