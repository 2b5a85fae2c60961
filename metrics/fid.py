"""FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) between generated and reference images.

The feature path is clean-fid's (Parmar et al. 2022): images in [0, 1] are
quantised to 8 bits exactly as a saved PNG would be, resized by the mode's
resizer (``clean``: PIL bicubic on float pixels to 299 x 299; ``legacy_pytorch``:
torch bilinear; ``legacy_tensorflow``: resized inside the network) and fed to
Inception v3 (pool3, 2048-d), or to a CLIP image tower for ``clip`` FID; see
:mod:`metrics.features.inception`. The metric classes only take a feature
extractor ``images [B, 3, H, W] in [0, 1] -> features [B, D]``, so any
extractor (and precomputed features) can be used.

- FID: :func:`metrics.frechet.frechet_distance` of float64 Gaussian statistics
  (clean-fid's math). Lower is better. With fewer samples than feature
  dimensions the covariance is singular and the value is biased upwards; the
  result is then marked ``reliable=False``.
- KID: unbiased squared MMD with the cubic polynomial kernel
  ``k(x, y) = (x.y / D + 1)^3``, averaged over ``num_subsets`` random subsets
  of ``min(subset_size, n_gen, n_ref)`` samples (clean-fid's
  ``kernel_distance``; subsets drawn from a seeded generator here, so the
  number is reproducible). ``stderr`` is the std over subsets / sqrt(subsets).

Reference statistics are computed once and cached as ``.npz`` under a name
built by :func:`reference_stats_name` from every setting that changes them.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from metrics.base import MetricValue
from metrics.frechet import GaussianStats, RunningGaussian, frechet_distance, load_stats, save_stats

__all__ = ["FID", "KID", "kid_from_features", "reference_stats_name", "cached_reference_stats"]

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def _features(extractor: FeatureFn | None, images: torch.Tensor | None, features) -> np.ndarray:
    if (images is None) == (features is None):
        raise ValueError("give exactly one of images or features")
    if features is None:
        if extractor is None:
            raise ValueError("this metric has no feature extractor: pass features=... or build it with one")
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a [B, 3, H, W] tensor in [0, 1], got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        features = extractor(images)
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {features.shape}")
    return features


class FID:
    """Fréchet Inception Distance; ``update`` generated images, ``update_reference`` (or ``set_reference``) the real ones.

    ``min_samples``: below this many generated (or reference) samples the
    result is marked unreliable (default: the feature dimension, below which
    the covariance is singular; published FIDs use 10k to 50k samples).
    """

    name = "fid"
    higher_is_better = False

    def __init__(self, extractor: FeatureFn | None = None, *, reference: GaussianStats | None = None,
                 min_samples: int | None = None, eps: float = 1e-6):
        self.extractor = extractor
        self.min_samples = min_samples
        self.eps = eps
        self._fixed_reference = reference
        self.reset()

    def reset(self) -> None:
        self.generated = RunningGaussian()
        self.reference = RunningGaussian()

    def set_reference(self, stats: GaussianStats) -> None:
        self._fixed_reference = stats

    def update(self, images: torch.Tensor | None = None, *, features=None) -> None:
        self.generated.update(_features(self.extractor, images, features))

    def update_reference(self, images: torch.Tensor | None = None, *, features=None) -> None:
        self.reference.update(_features(self.extractor, images, features))

    def reference_stats(self) -> GaussianStats:
        if self._fixed_reference is not None:
            return self._fixed_reference
        if self.reference.n == 0:
            raise ValueError("FID has no reference: call update_reference(...) or set_reference(stats)")
        return self.reference.stats()

    def compute(self) -> MetricValue:
        gen, ref = self.generated.stats(), self.reference_stats()
        value = frechet_distance(gen, ref, eps=self.eps)
        dim = gen.mu.shape[0]
        need = self.min_samples if self.min_samples is not None else dim
        notes = [f"{label}: {stats.n} samples < {need}" for label, stats in (("generated", gen), ("reference", ref))
                 if stats.n < need]
        note = None
        if notes:
            note = (f"too few samples for a stable FID ({'; '.join(notes)}; feature dim {dim}); "
                    "the value is biased upwards and not comparable with published numbers")
        return MetricValue(value, None, gen.n, self.higher_is_better, reliable=not notes, note=note)


def kid_from_features(generated: np.ndarray, reference: np.ndarray, *, num_subsets: int = 100,
                      subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID mean and std over subsets (clean-fid's estimator, seeded subsets). Features ``[N, D]`` float64."""
    x_all = np.asarray(reference, dtype=np.float64)  # clean-fid: x from feats2 (reference), y from feats1
    y_all = np.asarray(generated, dtype=np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D, got {y_all.shape} and {x_all.shape}")
    d = x_all.shape[1]
    m = min(x_all.shape[0], y_all.shape[0], subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples on each side, got {y_all.shape[0]} and {x_all.shape[0]}")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3  # k(x, x') + k(y, y')
        b = (x @ y.T / d + 1) ** 3  # k(x, y)
        values[i] = ((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m
    return float(values.mean()), float(values.std(ddof=1)) if num_subsets > 1 else 0.0


class KID:
    """Kernel Inception Distance (stores the float64 features of both sides)."""

    name = "kid"
    higher_is_better = False

    def __init__(self, extractor: FeatureFn | None = None, *, num_subsets: int = 100, subset_size: int = 1000,
                 seed: int = 0, min_samples: int = 100):
        self.extractor = extractor
        self.num_subsets, self.subset_size, self.seed, self.min_samples = num_subsets, subset_size, seed, min_samples
        self.reset()

    def reset(self) -> None:
        self._gen: list[np.ndarray] = []
        self._ref: list[np.ndarray] = []

    def update(self, images: torch.Tensor | None = None, *, features=None) -> None:
        self._gen.append(_features(self.extractor, images, features))

    def update_reference(self, images: torch.Tensor | None = None, *, features=None) -> None:
        self._ref.append(_features(self.extractor, images, features))

    def compute(self) -> MetricValue:
        if not self._gen or not self._ref:
            raise ValueError("KID needs generated (update) and reference (update_reference) features")
        gen, ref = np.concatenate(self._gen), np.concatenate(self._ref)
        mean, std = kid_from_features(gen, ref, num_subsets=self.num_subsets, subset_size=self.subset_size,
                                      seed=self.seed)
        n = min(gen.shape[0], ref.shape[0])
        reliable = n >= self.min_samples
        note = None if reliable else f"too few samples for a stable KID ({n} < {self.min_samples})"
        return MetricValue(mean, std / math.sqrt(self.num_subsets), gen.shape[0], self.higher_is_better,
                           reliable=reliable, note=note)


def reference_stats_name(dataset: str, split: str, num: int, extractor_id: str, ids_digest: str) -> str:
    """Cache name carrying everything that changes the statistics, e.g.
    ``coco-val2014-n30000-inception_v3-clean-299-1a2b3c4d.npz`` (``ids_digest``: hash of the reference ids)."""
    parts = [dataset, split, f"n{num}", extractor_id, ids_digest]
    name = "-".join(parts)
    if not re.fullmatch(r"[A-Za-z0-9_.+\-]+", name):
        name = re.sub(r"[^A-Za-z0-9_.+\-]", "_", name)
    return name + ".npz"


def cached_reference_stats(cache_dir: str | os.PathLike, name: str,
                           compute: Callable[[], GaussianStats]) -> tuple[GaussianStats, Path, bool]:
    """Load ``cache_dir/name`` if present, else ``compute()`` and save it. Returns (stats, path, was_cached)."""
    path = Path(cache_dir) / name
    if path.is_file():
        return load_stats(path), path, True
    stats = compute()
    save_stats(stats, path, name=name)
    return stats, path, False
