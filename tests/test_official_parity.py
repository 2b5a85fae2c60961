"""Parity with the official CoDi release on recorded outputs (see tests/fixtures/official_parity/README.md).

Every case of the fixture directory (``CODI_PARITY_FIXTURE`` overrides it)
is rebuilt from its own configuration: the UNets are built from the release
vocabulary in ``cases.json``, every parameter is filled by the fixture's
``codi-fill-v1`` rule through its *release* name, and the outputs must match
to a relative error of 1e-4 (max |diff| / max |ref|) in fp32.
"""
from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from codi.config import DiffusionConfig
from codi.joint import CoDiDiffusion, mix_conditions
from codi.sampling import GuidedDenoiser, pack_latents, sample_ddim, unpack_latents
from codi.schedule import alphas_cumprod, ddim_timesteps

FIXTURE = Path(os.environ.get("CODI_PARITY_FIXTURE", Path(__file__).parent / "fixtures" / "official_parity"))
TOLERANCE = 1e-4


def _load_fixture():
    spec = json.loads((FIXTURE / "cases.json").read_text())
    return spec, load_file(str(FIXTURE / "cases.safetensors"))


SPEC, TENSORS = _load_fixture()


def fill_codi_v1(model: CoDiDiffusion) -> None:
    """The fixture's deterministic weight rule, applied through the release names."""
    names = model.release_key_map()
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = names[name]
            shape = tuple(param.shape)
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            if len(shape) >= 2:
                value = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
            elif key.endswith("weight") or key.endswith(".g"):
                value = 1 + 0.1 * torch.randn(shape, generator=g)
            else:
                value = 0.1 * torch.randn(shape, generator=g)
            param.copy_(value)


@pytest.fixture(scope="module")
def model() -> CoDiDiffusion:
    assert SPEC["fill"] == "codi-fill-v1", f"unknown fill rule {SPEC['fill']}"
    config = DiffusionConfig.from_release(SPEC["unets"], SPEC["schedule"])
    built = CoDiDiffusion(config).eval()
    fill_codi_v1(built)
    return built


def _case_tensors(name: str, kind: str) -> list[torch.Tensor]:
    found = {}
    for key, value in TENSORS.items():
        prefix = f"{name}/{kind}/"
        if key.startswith(prefix):
            found[int(key[len(prefix):])] = value
    return [found[i] for i in sorted(found)]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("case", SPEC["cases"], ids=[c["name"] for c in SPEC["cases"]])
def test_case_matches_release(model: CoDiDiffusion, case: dict) -> None:
    name, outputs = case["name"], case["xtype"]
    xs = _case_tensors(name, "x")
    conds = _case_tensors(name, "cond")
    expected = _case_tensors(name, "out")
    assert len(xs) == len(outputs) == len(expected) and len(conds) == len(case["condition_types"])
    context = mix_conditions(conds, case["condition_types"], case["mix_weight"])
    latents = dict(zip(outputs, xs))
    with torch.no_grad():
        if case["kind"] == "eps":
            result = model(latents, TENSORS[f"{name}/t"], context)
            actual = [result[m] for m in outputs]
        elif case["kind"] == "ddim":
            batch = xs[0].shape[0]
            x, spec = pack_latents(latents)
            denoiser = GuidedDenoiser(model, spec, context[batch:], context[:batch], case["guidance_scale"])
            schedule = DiffusionConfig.from_release(SPEC["unets"], SPEC["schedule"]).schedule
            final = sample_ddim(denoiser, x, ddim_timesteps(case["steps"], schedule.timesteps),
                                alphas_cumprod(schedule), eta=case["eta"], disable=True)
            unpacked = unpack_latents(final, spec)
            actual = [unpacked[m] for m in outputs]
        else:
            pytest.fail(f"unknown case kind {case['kind']!r}")
    for modality, got, want in zip(outputs, actual, expected):
        assert got.shape == want.shape, f"{name} {modality}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        error = relative_error(got, want)
        assert error <= TOLERANCE, f"{name} {modality}: relative error {error:.2e} > {TOLERANCE:.0e}"


def test_fixture_covers_the_claims() -> None:
    """The bundled fixture exercises single/joint, 1-3 modalities, weighted multi-conditions, eps and DDIM."""
    if "CODI_PARITY_FIXTURE" in os.environ:
        pytest.skip("coverage is only asserted for the bundled fixture")
    cases = SPEC["cases"]
    assert {c["kind"] for c in cases} == {"eps", "ddim"}
    assert any(len(c["xtype"]) >= 2 for c in cases)
    assert any("video" in c["xtype"] for c in cases)
    assert any(len(c["condition_types"]) >= 3 and len(set(c["mix_weight"].values())) > 1 for c in cases)
