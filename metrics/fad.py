"""Fréchet Audio Distance (Kilgour et al. 2019) as frechet-audio-distance computes it.

Every clip ``[T]`` (16 kHz) gives ``K`` embedding frames (VGGish: one 128-d
vector per 0.96 s; PANN: one 2048-d vector per clip); the frames of all clips
are pooled into one set, fitted by a Gaussian (float64 mean, unbiased
covariance) and compared with the reference set's Gaussian by
:func:`metrics.frechet.frechet_distance`. Lower is better.

Embeddings are cached per file (:class:`EmbeddingCache`): the key is the
embedder id plus the file's absolute path, size and modification time, so an
edited file is embedded again.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from metrics.base import MetricValue
from metrics.frechet import GaussianStats, RunningGaussian, frechet_distance

__all__ = ["FAD", "EmbeddingCache", "file_key"]

AudioEmbedder = Callable[[torch.Tensor], list]


def file_key(path: str | os.PathLike) -> str:
    """Cache key of a file: absolute path, size and mtime (ns)."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


class EmbeddingCache:
    """``root/<model_id>/<sha1(key)>.npy`` holding one clip's ``[K, D]`` float64 embeddings (atomic writes)."""

    def __init__(self, root: str | os.PathLike, model_id: str):
        self.dir = Path(root) / model_id

    def _path(self, key: str) -> Path:
        return self.dir / (hashlib.sha1(key.encode()).hexdigest() + ".npy")

    def get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        return np.load(path, allow_pickle=False) if path.is_file() else None

    def put(self, key: str, value: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, np.asarray(value, dtype=np.float64))
        os.replace(tmp, path)


class FAD:
    """``update(audio [B, T])`` (or ``update_embeddings``) for generated clips; the reference likewise or fixed."""

    name = "fad"
    higher_is_better = False

    def __init__(self, embedder: AudioEmbedder | None = None, *, reference: GaussianStats | None = None,
                 cache: EmbeddingCache | None = None, min_frames: int | None = None, eps: float = 1e-6):
        self.embedder, self.cache, self.min_frames, self.eps = embedder, cache, min_frames, eps
        self._fixed_reference = reference
        self.reset()

    def reset(self) -> None:
        self.generated, self.reference = RunningGaussian(), RunningGaussian()
        self.clips = 0

    def embed(self, audio: torch.Tensor, keys: Sequence[str] | None = None) -> list[np.ndarray]:
        """Per-clip ``[K, D]`` embeddings, read from / written to the cache when ``keys`` are given."""
        if self.embedder is None:
            raise ValueError("this FAD has no embedder: use update_embeddings(...) or build it with one")
        if keys is None or self.cache is None:
            return [np.asarray(e, dtype=np.float64) for e in self.embedder(audio)]
        if len(keys) != audio.shape[0]:
            raise ValueError(f"{len(keys)} cache keys for {audio.shape[0]} clips")
        out: list[np.ndarray | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, e in enumerate(out) if e is None]
        if todo:
            for i, emb in zip(todo, self.embedder(audio[todo])):
                out[i] = np.asarray(emb, dtype=np.float64)
                self.cache.put(keys[i], out[i])
        return out  # type: ignore[return-value]

    def update(self, audio: torch.Tensor, keys: Sequence[str] | None = None) -> None:
        self.update_embeddings(self.embed(audio, keys))

    def update_embeddings(self, embeddings: Sequence[np.ndarray]) -> None:
        for emb in embeddings:
            self.generated.update(np.atleast_2d(emb))
            self.clips += 1

    def update_reference(self, audio: torch.Tensor, keys: Sequence[str] | None = None) -> None:
        self.update_reference_embeddings(self.embed(audio, keys))

    def update_reference_embeddings(self, embeddings: Sequence[np.ndarray]) -> None:
        for emb in embeddings:
            self.reference.update(np.atleast_2d(emb))

    def set_reference(self, stats: GaussianStats) -> None:
        self._fixed_reference = stats

    def compute(self) -> MetricValue:
        gen = self.generated.stats()
        ref = self._fixed_reference or (self.reference.stats() if self.reference.n else None)
        if ref is None:
            raise ValueError("FAD has no reference: call update_reference(...) or set_reference(stats)")
        value = frechet_distance(gen, ref, eps=self.eps)
        dim = gen.mu.shape[0]
        need = self.min_frames if self.min_frames is not None else dim
        low = [f"{label}: {s.n} embedding frames < {need}" for label, s in (("generated", gen), ("reference", ref))
               if s.n < need]
        note = (f"too few embedding frames for a stable FAD ({'; '.join(low)}; dim {dim})" if low else None)
        return MetricValue(value, None, self.clips, self.higher_is_better, reliable=not low, note=note)
