"""The Fréchet distance between two Gaussians, shared by FID and FAD, with float64 running statistics.

    d^2 = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^{1/2})

``mu`` is the feature mean and ``Sigma`` the *unbiased* covariance
(``np.cov(features, rowvar=False)``, divisor ``n - 1``), as clean-fid,
pytorch-fid, torchmetrics and frechet-audio-distance all use. The matrix
square root and its numerical safeguards are clean-fid's
(:func:`cleanfid.fid.frechet_distance`: ``eps`` added to the diagonals when
the product is singular, a small imaginary part dropped).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["GaussianStats", "RunningGaussian", "frechet_distance", "save_stats", "load_stats"]


@dataclass(frozen=True)
class GaussianStats:
    """``mu`` ``[D]`` and ``sigma`` ``[D, D]`` (float64) estimated from ``n`` feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, features: np.ndarray | torch.Tensor) -> "GaussianStats":
        """One-shot estimate from ``[N, D]`` features (N >= 2)."""
        feats = _as_float64(features)
        if feats.shape[0] < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {feats.shape[0]}")
        return cls(feats.mean(axis=0), np.cov(feats, rowvar=False), feats.shape[0])


def _as_float64(features: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {feats.shape}")
    if not np.isfinite(feats).all():
        raise ValueError("features contain NaN or infinite values")
    return feats


class RunningGaussian:
    """Float64 sufficient statistics ``(n, sum x, sum x x^T)`` updated batch by batch.

    The covariance is formed around a shift (the first batch's mean) to keep
    the float64 cancellation error far below 1e-6 relative; the result equals
    :meth:`GaussianStats.from_features` on the concatenated features.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def update(self, features: np.ndarray | torch.Tensor) -> None:
        feats = _as_float64(features)  # (B, D)
        if feats.shape[0] == 0:
            return
        if self._shift is None:
            self._shift = feats.mean(axis=0)
            self._sum = np.zeros_like(self._shift)
            self._outer = np.zeros((feats.shape[1], feats.shape[1]))
        elif feats.shape[1] != self._shift.shape[0]:
            raise ValueError(f"feature dimension changed from {self._shift.shape[0]} to {feats.shape[1]}")
        centred = feats - self._shift
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred
        self.n += feats.shape[0]

    def stats(self) -> GaussianStats:
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mean_c = self._sum / self.n
        sigma = (self._outer - self.n * np.outer(mean_c, mean_c)) / (self.n - 1)
        return GaussianStats(self._shift + mean_c, sigma, self.n)


def frechet_distance(a: GaussianStats, b: GaussianStats, eps: float = 1e-6) -> float:
    """Fréchet distance between ``N(a.mu, a.sigma)`` and ``N(b.mu, b.sigma)`` (clean-fid's implementation)."""
    from cleanfid.fid import frechet_distance as _cleanfid_frechet

    if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
        raise ValueError(f"statistics have different dimensions: {a.mu.shape} vs {b.mu.shape}")
    with warnings.catch_warnings():  # scipy >= 1.17 deprecates sqrtm(disp=...), which clean-fid passes
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(_cleanfid_frechet(a.mu, a.sigma, b.mu, b.sigma, eps=eps))


def save_stats(stats: GaussianStats, path: str | os.PathLike, **meta: str) -> Path:
    """Write ``mu``, ``sigma``, ``n`` (and string metadata) to ``path`` (.npz) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n),
                 **{f"meta_{k}": np.array(v) for k, v in meta.items()})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_stats(path: str | os.PathLike) -> GaussianStats:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        missing = {"mu", "sigma", "n"} - set(data.files)
        if missing:
            raise ValueError(f"{path} is not a statistics file (missing {', '.join(sorted(missing))})")
        return GaussianStats(data["mu"].astype(np.float64), data["sigma"].astype(np.float64), int(data["n"]))
