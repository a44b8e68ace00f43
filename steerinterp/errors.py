"""Errors that steerinterp raises for bad input.

Every message names the problem and, where there is one, the fix, in the library's own terms (argument
and setting names). ``setting`` names the argument at fault when there is one, so that a front end such
as the command line can add its own spelling of it (``--group-size``); the library never speaks of flags.
"""

from __future__ import annotations


class SteerInterpError(ValueError):
    """Bad input or state: the message says what is wrong and how to fix it."""

    def __init__(self, message: str, *, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class ModelLoadError(SteerInterpError):
    """A model could not be loaded (missing package, unknown name, bad checkpoint)."""


class SteeringFileError(SteerInterpError):
    """A saved steering file is missing, truncated, altered, or does not fit the model."""
