"""Behaviour of the diffusion core beyond parity: errors, dtypes, latent alignment, samplers, loading."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from codi.checkpoint import CheckpointError
from codi.config import DiffusionConfig, ScheduleConfig, UNetConfig, diffusion_preset
from codi.joint import RELEASE_FILES, CoDiDiffusion, mix_conditions
from codi.sampling import GuidedDenoiser, initial_noise, pack_latents, sample, unpack_latents
from codi.schedule import alphas_cumprod, betas, ddim_timesteps, split_prediction, training_target

CASES = json.loads((Path(__file__).parent / "fixtures" / "official_parity" / "cases.json").read_text())


@pytest.fixture(scope="module")
def tiny() -> CoDiDiffusion:
    torch.manual_seed(0)
    return CoDiDiffusion(diffusion_preset("tiny")).eval()


def latents(batch: int = 2, frames: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(batch, 4, 8, 8, generator=g),
        "video": torch.randn(batch, 4, frames, 8, 8, generator=g),
        "text": torch.randn(batch, 64, generator=g),
        "audio": torch.randn(batch, 8, 16, 4, generator=g),
    }


def test_tiny_preset_equals_the_fixture_configuration() -> None:
    assert DiffusionConfig.from_release(CASES["unets"], CASES["schedule"]) == diffusion_preset("tiny")


def test_release_config_converter_rejects_unknown_keys() -> None:
    args = dict(CASES["unets"]["unet_audio"], bogus_key=1)
    with pytest.raises(ValueError, match="bogus_key"):
        UNetConfig.from_release(args)


def test_misaligned_unet_layouts_are_refused() -> None:
    unets = json.loads(json.dumps(CASES["unets"]))
    unets["unet_audio"]["with_connector"] = [True, True]
    with pytest.raises(ValueError, match="must agree"):
        DiffusionConfig.from_release(unets)


def test_unknown_preset_and_modality_list_valid_names(tiny: CoDiDiffusion) -> None:
    with pytest.raises(ValueError, match="official, tiny"):
        diffusion_preset("huge")
    with pytest.raises(ValueError, match="image, video, text, audio"):
        tiny({"smell": torch.zeros(1, 4, 8, 8)}, torch.tensor([10]), torch.zeros(1, 1, 64))
    with pytest.raises(ValueError, match="image, video, text, audio"):
        mix_conditions([torch.zeros(1, 1, 64)], ["smell"])


def test_wrong_latent_and_condition_shapes_are_named(tiny: CoDiDiffusion) -> None:
    t, context = torch.tensor([10, 20]), torch.zeros(2, 1, 64)
    with pytest.raises(ValueError, match="image latent has shape"):
        tiny({"image": torch.zeros(2, 3, 8, 8)}, t, context)
    with pytest.raises(ValueError, match="text latent has shape"):
        tiny({"text": torch.zeros(2, 64, 1)}, t, context)
    with pytest.raises(ValueError, match="one batch size"):
        tiny({"image": torch.zeros(2, 4, 8, 8), "text": torch.zeros(3, 64)}, t, context)
    with pytest.raises(ValueError, match=r"condition must have shape \[2, M, 64\]"):
        tiny({"image": torch.zeros(2, 4, 8, 8)}, t, torch.zeros(2, 1, 32))
    with pytest.raises(ValueError, match="timesteps"):
        tiny({"image": torch.zeros(2, 4, 8, 8)}, torch.tensor([1, 2, 3]), context)


def test_guidance_needs_an_unconditional_half(tiny: CoDiDiffusion) -> None:
    x, spec = pack_latents({"image": torch.zeros(2, 4, 8, 8)})
    with pytest.raises(ValueError, match="unconditional"):
        GuidedDenoiser(tiny, spec, torch.zeros(2, 1, 64), None, guidance_scale=7.5)
    GuidedDenoiser(tiny, spec, torch.zeros(2, 1, 64), None, guidance_scale=1.0)  # no guidance: fine


def test_building_only_what_outputs_need_and_missing_unet_error() -> None:
    model = CoDiDiffusion(diffusion_preset("tiny"), outputs=["text"])
    assert list(model.unets) == ["text"]
    with pytest.raises(ValueError, match="image UNet was not built"):
        model.unet("video")
    text_only = DiffusionConfig(unets={"text": diffusion_preset("tiny").unets["text"]})
    with pytest.raises(ValueError, match="no image UNet"):
        CoDiDiffusion(text_only, outputs=["image"])


def test_pack_unpack_round_trip() -> None:
    lat = latents()
    x, spec = pack_latents(lat)
    assert x.shape == (2, 4 * 64 + 4 * 3 * 64 + 64 + 8 * 64)
    back = unpack_latents(x, spec)
    assert list(back) == list(lat) and all(torch.equal(back[m], lat[m]) for m in lat)


def test_connectors_only_act_in_joint_generation(tiny: CoDiDiffusion) -> None:
    lat, t, context = latents(), torch.tensor([500, 200]), torch.randn(2, 1, 64)
    with torch.no_grad():
        alone = tiny({"image": lat["image"]}, t, context)["image"]
        joint = tiny({"image": lat["image"], "audio": lat["audio"]}, t, context)["image"]
    assert not torch.allclose(alone, joint, atol=1e-6)


def test_release_alignment_is_own_environment_and_paper_variant_exchanges(tiny: CoDiDiffusion) -> None:
    """'own' (release): a modality ignores the others' latents; 'others' (paper): it depends on them."""
    lat, t, context = latents(), torch.tensor([500, 200]), torch.randn(2, 1, 64)
    other_audio = torch.randn_like(lat["audio"])
    with torch.no_grad():
        own_a = tiny({"video": lat["video"], "audio": lat["audio"]}, t, context)["video"]
        own_b = tiny({"video": lat["video"], "audio": other_audio}, t, context)["video"]
        paper = CoDiDiffusion(diffusion_preset("tiny").replace(env_attention="others")).eval()
        paper.load_state_dict(tiny.state_dict())
        paper_a = paper({"video": lat["video"], "audio": lat["audio"]}, t, context)["video"]
        paper_b = paper({"video": lat["video"], "audio": other_audio}, t, context)["video"]
    torch.testing.assert_close(own_a, own_b, rtol=0, atol=0)
    assert (paper_a - paper_b).abs().max() > 1e-4


def test_environment_vectors_are_unit_norm_and_prompt_free(tiny: CoDiDiffusion) -> None:
    lat, t = latents(), torch.tensor([500, 200])
    with torch.no_grad():
        envs = tiny.environments(lat, t)
    for modality, env in envs.items():
        assert env.shape == (2, 1, 64), modality
        torch.testing.assert_close(env.norm(dim=-1), torch.ones(2, 1))


def test_video_of_one_frame_is_not_the_image_path(tiny: CoDiDiffusion) -> None:
    """Temporal layers run on 5-D input only; an image is a 4-D latent."""
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([300]), torch.randn(1, 1, 64)
    with torch.no_grad():
        image = tiny({"image": x}, t, context)["image"]
        video = tiny({"video": x[:, :, None]}, t, context)["video"][:, :, 0]
    assert not torch.allclose(image, video, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_fp32(tiny: CoDiDiffusion, dtype: torch.dtype) -> None:
    """Image and text track fp32; video only runs finite, since the release's temporal norms switch
    their eps from 1e-5 to 1e-3 outside fp32, which changes the numbers by design."""
    lat, t, context = latents(batch=1, frames=2), torch.tensor([400]), torch.randn(1, 1, 64)
    chosen = {"image": lat["image"], "text": lat["text"]}
    with torch.no_grad():
        ref = tiny(chosen, t, context)
        half = CoDiDiffusion(diffusion_preset("tiny")).eval()
        half.load_state_dict(tiny.state_dict())
        half.to(dtype)
        out = half({m: z.to(dtype) for m, z in chosen.items()}, t, context.to(dtype))
        video = half({"video": lat["video"].to(dtype)}, t, context.to(dtype))["video"]
    assert video.dtype == dtype and torch.isfinite(video.float()).all()
    for m in chosen:
        assert out[m].dtype == dtype and torch.isfinite(out[m].float()).all()
        scale = ref[m].abs().max()
        assert (out[m].float() - ref[m]).abs().max() / scale < 0.1, m


def test_ddim_timesteps_follow_the_release() -> None:
    assert ddim_timesteps(5).tolist() == [1, 201, 401, 601, 801]
    assert ddim_timesteps(50)[-1] == 981 and len(ddim_timesteps(50)) == 50
    assert len(ddim_timesteps(7)) == 8  # 1000 // 7 = 142 -> 0, 142, ..., 994 (+1): one more than asked
    with pytest.raises(ValueError, match="steps=3 is not usable"):
        ddim_timesteps(3)  # 0, 333, 666, 999 (+1) reaches t = 1000
    with pytest.raises(ValueError):
        ddim_timesteps(0)


def test_zero_terminal_snr_schedule_matches_diffusers_and_ends_in_pure_noise() -> None:
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

    release, nano = ScheduleConfig(), diffusion_preset("nano").schedule
    assert nano.zero_terminal_snr and nano.prediction == "v" and nano.timestep_spacing == "trailing"
    rescaled, base = alphas_cumprod(nano).double(), alphas_cumprod(release).double()
    assert rescaled[-1] == 0 and base[-1] > 4e-3  # the release ends at SNR 0.0047
    assert torch.isclose(rescaled[0], base[0], rtol=1e-6) and (rescaled.diff() < 0).all()
    # sqrt(alpha_bar) is an affine map of the release's (float64, before alphas_cumprod's float32 rounding)
    slope = torch.cumprod(1 - betas(nano), 0).sqrt().diff() / torch.cumprod(1 - betas(release), 0).sqrt().diff()
    assert torch.allclose(slope, slope[0].expand_as(slope), rtol=1e-9)
    reference = rescale_zero_terminal_snr(betas(release))  # diffusers' implementation of the same rule, float64
    assert torch.allclose(betas(nano), reference, rtol=1e-12, atol=0) and betas(nano)[-1] == 1


def test_trailing_timesteps_start_at_the_last_timestep_like_diffusers() -> None:
    from diffusers import DDIMScheduler

    for steps in (1, 4, 7, 25, 50):
        ours = ddim_timesteps(steps, 1000, "trailing")
        reference = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
        reference.set_timesteps(steps)
        assert ours.tolist() == reference.timesteps.flip(0).tolist() and len(ours) == steps and ours[-1] == 999
    with pytest.raises(ValueError, match="leading, trailing"):
        ddim_timesteps(4, 1000, "middle")


def test_schedule_config_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="needs prediction='v'"):
        ScheduleConfig(zero_terminal_snr=True)
    with pytest.raises(ValueError, match="epsilon, v"):
        ScheduleConfig(prediction="x0")
    with pytest.raises(ValueError, match="leading, trailing"):
        ScheduleConfig(timestep_spacing="linspace")


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_training_target_and_split_prediction_invert_each_other(prediction: str) -> None:
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    a = torch.tensor([0.9991, 0.5, 0.05, 1e-6, 0.0 if prediction == "v" else 1e-3]).view(5, 1)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
    z0_hat, eps_hat = split_prediction(z_t, training_target(z0, noise, a, prediction), a, prediction)
    assert torch.allclose(eps_hat, noise, atol=1e-5)
    rows = slice(None) if prediction == "v" else slice(0, 3)  # epsilon's z0 divides by sqrt(a)
    assert torch.allclose(z0_hat[rows], z0[rows], atol=1e-5)
    if prediction == "v":
        assert torch.equal(training_target(z0, noise, a, "v")[-1], -z0[-1])  # at SNR 0, v = -z0


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
@pytest.mark.parametrize("preset", ["tiny", "nano"])
def test_samplers_reach_the_data_with_the_ideal_denoiser(preset: str, sampler: str) -> None:
    """On one-point data the ideal denoiser is known in closed form; every sampler must land on that point.

    It fails for a sign or a square root misplaced in either prediction's conversion, or a schedule that the
    sampler and the denoiser disagree on.
    """
    schedule = diffusion_preset(preset).schedule
    ac = alphas_cumprod(schedule)
    target = torch.tensor([[0.8, -1.2, 0.3, 2.0]])

    def ideal(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ac[t].view(-1, 1).double()
        eps = (x.double() - a.sqrt() * target) / (1 - a).sqrt()
        return training_target(target, eps, a, schedule.prediction).float()

    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    estimates = []
    out = sample(ideal, x, schedule, sampler=sampler, steps=10, disable=True,
                 callback=lambda step: estimates.append(step.get("denoised")))
    if sampler == "ddim":  # every clean-latent estimate is the point; it stops at alpha_bar[0], as the release
        assert len(estimates) == 10 and all(torch.allclose(e, target.expand(3, -1), atol=1e-4) for e in estimates)
        assert torch.allclose(out, target.expand(3, -1), atol=0.1)
    else:
        assert torch.allclose(out, target.expand(3, -1), atol=2e-3), (out - target).abs().max()


def test_temporal_attention_drops_frame_constant_offsets_unless_the_prompt_enters_after_its_norm() -> None:
    """The release's temporal norm over frames removes what is the same in every frame (the prompt's offset);
    CoDi-nano's ``temporal_context`` adds the prompt after that norm, so the frames can depend on it."""
    from codi.unets.temporal import TemporalAttention

    torch.manual_seed(0)
    x, offset = torch.randn(6, 8, 16), torch.randn(6, 1, 16)  # [N, F, C]; offset: the same in every frame
    bias = torch.zeros(2, 8, 8)
    release = TemporalAttention(16, heads=2, head_dim=8)
    torch.nn.init.normal_(release.frame_embeds)
    assert torch.allclose(release(x + offset, bias), release(x, bias), atol=1e-5)
    nano = TemporalAttention(16, heads=2, head_dim=8, context_dim=12)
    first, second = torch.randn(6, 1, 12), torch.randn(6, 1, 12)
    assert not torch.allclose(nano(x, bias, first), nano(x, bias, second), atol=1e-3)
    assert torch.equal(nano(x, bias), nano(x, bias, None))


def test_only_the_nano_video_unet_takes_the_prompt_in_its_temporal_layers() -> None:
    def routes(preset: str) -> list[str]:
        unet = CoDiDiffusion(diffusion_preset(preset)).unet("video")
        return [name for name, _ in unet.named_parameters() if "context_proj" in name]

    assert routes("official") == [] and routes("tiny") == []
    nano = routes("nano")
    assert nano and not any(name.startswith("env_encoder") for name in nano)  # the environment encoder has no prompt


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_samplers_are_deterministic_and_finite(tiny: CoDiDiffusion, sampler: str) -> None:
    config = diffusion_preset("tiny")
    shapes = {"image": (4, 8, 8), "text": (64,)}
    context, uncond = torch.randn(2, 1, 64), torch.zeros(2, 1, 64)

    def run():
        noise = initial_noise(shapes, 2, generator=torch.Generator().manual_seed(3))
        x, spec = pack_latents(noise)
        denoiser = GuidedDenoiser(tiny, spec, context, uncond, guidance_scale=3.0)
        return sample(denoiser, x, config.schedule, sampler=sampler, steps=4, disable=True)

    first, second = run(), run()
    assert torch.equal(first, second) and torch.isfinite(first).all()
    with pytest.raises(ValueError, match="ddim, dpmpp_2m"):
        sample(lambda x, t: x, first, config.schedule, sampler="euler_magic")


def test_ddim_eta_draws_noise_from_the_generator(tiny: CoDiDiffusion) -> None:
    config = diffusion_preset("tiny")
    x, spec = pack_latents({"text": torch.randn(2, 64)})
    denoiser = GuidedDenoiser(tiny, spec, torch.randn(2, 1, 64))
    runs = [sample(denoiser, x, config.schedule, steps=4, eta=1.0, disable=True,
                   generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# ------------------------------------------------------------------ loading
def _write_release_files(model: CoDiDiffusion, directory: Path, extra: dict | None = None) -> None:
    state = model.to_release_state_dict()
    for name, filename in RELEASE_FILES.items():
        prefix = f"model.diffusion_model.unet_{name}."
        part = {k: v.clone() for k, v in state.items() if k.startswith(prefix)}
        part["autokl.encoder.conv_in.weight"] = torch.zeros(1)  # other components share the files
        part.update(extra or {})
        torch.save(part, directory / filename)


def test_release_files_round_trip(tiny: CoDiDiffusion, tmp_path: Path) -> None:
    _write_release_files(tiny, tmp_path)
    loaded = CoDiDiffusion.from_release_files(diffusion_preset("tiny"), str(tmp_path), outputs=["video", "text"])
    assert sorted(loaded.unets) == ["image", "text"]
    for name in loaded.unets:
        ours, theirs = loaded.unets[name].state_dict(), tiny.unets[name].state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_missing_file_names_file_and_place(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"CoDi_audio_diffuser_m\.pth.*put it in"):
        CoDiDiffusion.from_release_files(diffusion_preset("tiny"), str(tmp_path), outputs=["audio"])


def test_mis_shaped_and_unexpected_tensors_are_named(tiny: CoDiDiffusion, tmp_path: Path) -> None:
    bad = "model.diffusion_model.unet_audio.time_embed.0.weight"
    _write_release_files(tiny, tmp_path, extra={bad: torch.zeros(3, 3),
                                                "model.diffusion_model.unet_audio.surprise.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError) as error:
        CoDiDiffusion.from_release_files(diffusion_preset("tiny"), str(tmp_path), outputs=["audio"])
    assert "time_embed.linear_1.weight: (3, 3) vs (256, 64)" in str(error.value)
    assert "unet_audio.surprise.weight" in str(error.value)


def test_truncated_file_is_reported(tiny: CoDiDiffusion, tmp_path: Path) -> None:
    _write_release_files(tiny, tmp_path)
    path = tmp_path / RELEASE_FILES["text"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="CoDi_text_diffuser.pth"):
        CoDiDiffusion.from_release_files(diffusion_preset("tiny"), str(tmp_path), outputs=["text"])


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model.diffusion_model.unet_text.x": Exploit()}, tmp_path / RELEASE_FILES["text"])
    with pytest.raises(CheckpointError, match="refusing to load"):
        CoDiDiffusion.from_release_files(diffusion_preset("tiny"), str(tmp_path), outputs=["text"])
    assert not marker.exists()


def test_nano_preset_is_small_and_validates_norm_groups() -> None:
    model = CoDiDiffusion(diffusion_preset("nano"))
    assert sum(p.numel() for p in model.parameters()) < 6_000_000
    assert model.unets["image"].input_blocks[1].res.norm_in.num_groups == 8
    with pytest.raises(ValueError, match="norm_groups"):
        UNetConfig(kind="spatial", in_channels=4, model_channels=32, out_channels=4, channel_mult=(1,),
                   num_res_blocks=(1,), attention_levels=(True,), connector_levels=(False,),
                   env_channel_mult=(1,), env_res_blocks=(1,), num_heads=4)  # 32 // 2 = 16 < 32 groups


def test_checkpoint_reader_names_the_real_format(tmp_path: Path) -> None:
    from codi.checkpoint import read_state_dict, save_state_dict

    save_state_dict({"a": torch.ones(2)}, tmp_path / "weights.safetensors")
    (tmp_path / "weights.pth").write_bytes((tmp_path / "weights.safetensors").read_bytes())
    assert torch.equal(read_state_dict(tmp_path / "weights.pth")["a"], torch.ones(2))  # safetensors under .pth
    (tmp_path / "notes.pth").write_text("these are not weights")
    with pytest.raises(CheckpointError, match="not a PyTorch file"):
        read_state_dict(tmp_path / "notes.pth")
