"""handnerf.runs: fitted runs reopened for rendering and evaluation.

Sits above :mod:`handnerf.train` (it reads the fit's config and checkpoint) and below
:mod:`handnerf.render` and :mod:`handnerf.evaluation`, which open runs through it.
"""
