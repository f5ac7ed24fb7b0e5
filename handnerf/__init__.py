"""handnerf: animatable per-subject hand avatars from multi-view captures."""

__version__ = "0.1.0"
