"""handnerf.data: InterHand2.6M captures (real or synthetic), cameras, masks, filters, crops."""

from handnerf.data.camera import PinholeCamera
from handnerf.data.crops import Crop, CropConfig, crop_hand, downscale, prepare_view
from handnerf.data.filters import FrameFilterConfig, check_frame, filter_views
from handnerf.data.interhand import FrameView, InterHandCapture, SelectionReport, load_image
from handnerf.data.masks import ManoMasker, MaskCache, mesh_silhouette

__all__ = [
    "Crop",
    "CropConfig",
    "FrameFilterConfig",
    "FrameView",
    "InterHandCapture",
    "ManoMasker",
    "MaskCache",
    "PinholeCamera",
    "SelectionReport",
    "check_frame",
    "crop_hand",
    "downscale",
    "filter_views",
    "load_image",
    "mesh_silhouette",
    "prepare_view",
]
