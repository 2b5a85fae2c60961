"""Safe checkpoint reading and strict, named load reports.

Every weight file in this project is read through :func:`read_state_dict`:
safetensors files with ``safetensors``, anything else with
``torch.load(..., weights_only=True)``, so no file can run code when it is
opened. Loading into a module goes through :func:`load_state_dict_strict`,
which names every missing, unexpected and mis-shaped tensor instead of
silently skipping it (the reference release loads non-strictly).

The key mappings between the release's names and this project's live next
to the modules they describe (``codi.joint.release_key_map`` for the UNets);
this module only holds the mechanics they share.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "LoadReport",
    "read_state_dict",
    "save_state_dict",
    "load_state_dict_strict",
    "rename_keys",
]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


@dataclass
class LoadReport:
    """What a load left unmatched, by tensor name (project names)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        """A human-readable summary naming up to ``limit`` tensors per category."""
        lines = []

        def block(title: str, items: list[str]) -> None:
            if not items:
                return
            lines.append(f"{title} ({len(items)}):")
            lines.extend(f"  {item}" for item in items[:limit])
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")

        block("missing from the checkpoint", self.missing)
        block("unexpected in the checkpoint", self.unexpected)
        block(
            "shape mismatch (name: checkpoint vs model)",
            [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched],
        )
        return "\n".join(lines) if lines else "all tensors matched"


def read_state_dict(path: str | os.PathLike, *, hint: str | None = None) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict without executing any pickled code.

    ``.safetensors`` files are read with safetensors; ``.pth``/``.pt``/``.ckpt``
    with ``torch.load(weights_only=True)``. A nested ``{"state_dict": ...}``
    wrapper (as Lightning writes) is unwrapped. ``hint`` is added to the error
    for a missing file, for example where to download it and where to put it.
    """
    path = Path(path)
    if not path.is_file():
        message = f"checkpoint file not found: {path}"
        if hint:
            message += f"\n{hint}"
        raise CheckpointError(message)
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty: {path}")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"cannot read safetensors file {path}: {error}") from error
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
        except Exception as error:  # torch raises several types for truncated / foreign files
            if "Weights only load failed" in str(error) and _is_pickle(path):
                raise CheckpointError(
                    f"refusing to load {path}: it contains pickled objects other than tensors "
                    "(loading it could run arbitrary code); convert it to safetensors from a "
                    "trusted source"
                ) from error
            raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a PyTorch file?): {error}") from error
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a flat state dict of tensors")
    return dict(state)


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file under another name: 8-byte little-endian header size, then a JSON object."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") < path.stat().st_size


def _is_pickle(path: Path) -> bool:
    """A torch.save file: a zip archive holding a pickle, or a bare pickle (protocol byte 0x80)."""
    if _is_zip(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def ordinary_permissions(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open`` would (0666 less the umask).

    ``tempfile.mkstemp`` and safetensors' writer both create 0600 files, which
    a rename into place would otherwise keep.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state dict atomically (temporary file, then rename); format by suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # clone: tied weights (e.g. GPT-2's lm_head and wte) share storage, which safetensors refuses
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(tmp))
    else:
        torch.save(tensors, tmp)
    ordinary_permissions(tmp)
    os.replace(tmp, path)


def rename_keys(
    state: Mapping[str, torch.Tensor], mapping: Callable[[str], str | None]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply ``mapping`` to every key; keys it maps to ``None`` are returned as unmatched."""
    renamed, unmatched = {}, []
    for key, value in state.items():
        new = mapping(key)
        if new is None:
            unmatched.append(key)
        else:
            renamed[new] = value
    return renamed, unmatched


def load_state_dict_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    ignore_missing: Iterable[str] = (),
    strict: bool = True,
    source: str = "checkpoint",
) -> LoadReport:
    """Copy ``state`` into ``module``; raise :class:`CheckpointError` naming every mismatch.

    Tensors are cast to each parameter's dtype and device. Names listed in
    ``ignore_missing`` (exact names or prefixes ending in ``.``) may be absent.
    With ``strict=False`` the report is returned instead of raised; matching
    tensors are loaded either way.
    """
    own = module.state_dict()
    ignore = tuple(ignore_missing)
    report = LoadReport()
    for name in own:
        if name not in state and not any(name == p or (p.endswith(".") and name.startswith(p)) for p in ignore):
            report.missing.append(name)
    for name, value in state.items():
        if name not in own:
            report.unexpected.append(name)
        elif tuple(own[name].shape) != tuple(value.shape):
            report.mismatched.append((name, tuple(value.shape), tuple(own[name].shape)))
    if strict and not report.ok:
        raise CheckpointError(f"{source} does not fit the model:\n{report.describe()}")
    bad = set(report.unexpected) | {name for name, _, _ in report.mismatched}
    usable = {k: v for k, v in state.items() if k not in bad}
    with torch.no_grad():
        for name, value in usable.items():
            own[name].copy_(value.to(dtype=own[name].dtype, device=own[name].device))
    return report
