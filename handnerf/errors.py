"""Error types that reach the user.

Every error raised on bad input derives from :class:`HandnerfError`; the CLI prints
its message (which names the file and field at fault) and exits with status 2
instead of showing a traceback from deep inside a library.
"""

from __future__ import annotations


class HandnerfError(Exception):
    """Base class of all user-facing errors."""


class ModelFileError(HandnerfError):
    """A MANO-format model file or folder is missing, malformed or inconsistent."""


class UnsafePickleError(ModelFileError):
    """A pickle asked for a global outside the allow-list (it may try to run code)."""


class ParameterError(HandnerfError, ValueError):
    """Hand parameters with a wrong shape, NaN or inf values."""


class DataError(HandnerfError):
    """A capture (images, annotations, cache) is missing, malformed or inconsistent."""


class SelectionError(DataError):
    """A requested capture, sequence, camera or hand does not exist; lists what does."""


class ConfigError(HandnerfError):
    """A configuration file or ``key=value`` override is invalid."""


class NovelPoseSequenceError(ConfigError):
    """The novel-pose sequence is the training sequence: it would score poses seen in training."""


class ProceduralHandError(ConfigError):
    """The procedural hand was chosen for a real capture; it is a stand-in for synthetic ones."""


class CheckpointError(HandnerfError):
    """A checkpoint is missing, corrupted, foreign or incompatible with the run."""


class TrainingDivergedError(HandnerfError):
    """Training produced non-finite values it could not recover from."""


class ResourceError(HandnerfError):
    """The job does not fit the machine's memory or disk even after chunking its work."""
