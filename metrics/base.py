"""What every metric returns: :class:`MetricValue`, the entry of ``results["metrics"][mode][name]``.

Metrics follow one protocol (no base class): ``name`` and ``higher_is_better``
class attributes, ``update(...)`` with one batch, ``compute() -> MetricValue``
and ``reset()``. ``MetricValue.reliable`` is ``False`` (with a ``note`` saying
why) when the number should not be quoted, e.g. an FID from fewer samples than
feature dimensions.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["MetricValue", "mean_and_stderr"]


@dataclass(frozen=True)
class MetricValue:
    """A metric's result: ``value`` (float), ``stderr`` (standard error of the mean, or None), ``n`` samples."""

    value: float
    stderr: float | None
    n: int
    higher_is_better: bool
    reliable: bool = True
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; a non-finite value becomes ``null`` with ``reliable: false`` and a note."""
        out = asdict(self)
        out["value"] = float(self.value)
        out["stderr"] = None if self.stderr is None or not math.isfinite(self.stderr) else float(self.stderr)
        if not math.isfinite(out["value"]):
            out.update(value=None, reliable=False, note=f"non-finite value ({self.value}); " + (self.note or ""))
        return out


def mean_and_stderr(values: Sequence[float] | np.ndarray) -> tuple[float, float | None]:
    """Mean and standard error ``s / sqrt(n)`` (``s``: sample std, ddof 1); stderr is None for n < 2."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("no values to average")
    if x.size < 2:
        return float(x.mean()), None
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))
