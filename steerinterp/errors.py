"""Errors that steerinterp raises for bad input.

Every message names the problem and, where there is one, the fix. The CLI prints these as one line.
"""


class SteerInterpError(ValueError):
    """Bad input or state: the message says what is wrong and how to fix it."""


class ModelLoadError(SteerInterpError):
    """A model could not be loaded (missing package, unknown name, bad checkpoint)."""


class SteeringFileError(SteerInterpError):
    """A saved steering file is missing, truncated, altered, or does not fit the model."""
