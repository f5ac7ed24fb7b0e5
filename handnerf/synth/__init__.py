"""``handnerf synth``: license-free synthetic captures in InterHand2.6M's on-disk format.

- :mod:`handnerf.synth.presets`: ``tiny`` / ``demo`` / ``fullscale`` capture sizes.
- :mod:`handnerf.synth.rig`: the dome of calibrated cameras (InterHand camera conventions).
- :mod:`handnerf.synth.raycast`: Embree ray-cast ground truth (textured, shadowed, masks),
  on the mesh ray casting of :mod:`handnerf.geometry.raycast`.
- :mod:`handnerf.synth.writer`: :func:`synthesize_capture`, the InterHand-layout writer.

Usage::

    from handnerf.synth import get_preset, synthesize_capture
    summary = synthesize_capture("out/capture", get_preset("demo"), seed=0)
"""

from __future__ import annotations

from handnerf.synth.presets import PRESETS, SynthPreset, get_preset
from handnerf.synth.writer import SynthSummary, synthesize_capture

__all__ = ["PRESETS", "SynthPreset", "SynthSummary", "get_preset", "synthesize_capture"]
