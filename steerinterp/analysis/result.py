"""Shared behaviour of analysis results: a table for Jupyter, the figure on demand."""

from __future__ import annotations


class AnalysisResult:
    """Mixin: subclasses define ``to_frame()`` and ``plot()``; notebooks show the table."""

    def to_frame(self):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def plot(self):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return self.to_frame()._repr_html_()
