"""Train CoDi-nano from scratch on the procedural world (codi.data.world), stage by stage.

    python -m codi.train --preset nano --stage all --out runs/nano      # everything, resumable
    python -m codi.train --preset nano --stage diffusion_audio --out runs/nano

The release never published training code; this follows the paper's stages
(Sec. 3, 4), in the order their inputs require:

1. ``data``: render the training and held-out worlds once (cached).
2. Autoencoders, each alone: ``image_vae`` (KL-f4 on frames), ``audio_vae``
   (KL-f8 on AudioLDM log-mels; Griffin-Lim replaces a vocoder), ``text_vae``
   (Optimus: BERT -> 32-d latent -> GPT-2 with the latent as memory and
   embedding; reconstruction + beta * KL).
3. Bridging alignment: ``clip`` (text and image towers contrastively on
   text-image pairs, then the video temporal blocks on text-video pairs) and
   ``clap`` (the audio tower aligned to the *frozen* text tower on text-audio
   pairs). Losses are multi-positive InfoNCE: captions repeat and may name
   only some attributes, so every pair that agrees on the named attributes
   counts as a positive.
4. ``latents``: encode the training set once with the trained autoencoders
   and towers; latent scale factors are measured here (1 / std).
5. Each modality's latent diffusion model alone: ``diffusion_image``,
   ``diffusion_video`` (the image UNet with its temporal layers, trained on
   videos and still frames together so the shared spatial layers keep the
   image model), ``diffusion_audio``, ``diffusion_text``. Conditions are
   prompt embeddings of the other modalities of the same event or of
   full/partial captions, dropped to the unconditional embedding 10 % of the
   time (for guidance). Each writes only ``unet_<modality>.safetensors``.
   The UNets learn v-prediction on the release's schedule rescaled to zero
   terminal SNR (:data:`codi.config.NANO_SCHEDULE`; the preset's schedule is
   what every diffusion stage trains with, and the export records it).
6. Latent alignment with everything else frozen, in the paper's order:
   ``align_text_image`` (both sides), ``align_text_audio`` (the audio side;
   text frozen), ``align_audio_video`` (the video side; audio frozen). Each
   trains the environment encoders contrastively on paired latents, then
   the connector cross-attention on joint denoising with the encoders
   frozen, conditioned on captions that leave size and motion to the other
   modality (:func:`stage_align`); they extend ``alignment.safetensors``.
7. ``export``: fp16 safetensors + tokenizers + a manifest with checksums and
   scale factors into the output folder (``codi/weights/nano`` ships them).

Every stage checkpoints atomically every ``--save-every`` steps and resumes
from its last checkpoint; a finished stage is skipped. Losses are appended to
``<out>/log.jsonl``. ``--jobs 2`` runs stages whose inputs are ready
(:data:`DEPENDS`) side by side, each in its own process, sharing
``--threads`` among the stages started together; of the ready stages the one
with the longest chain of stages behind it starts first (:func:`chain_length`).

Every UNet built here gets :func:`codi.unets.unet.release_initialisation_`
(the release's zero-initialised residual branches) before its first step.
The last timed run of ``python -m codi.train --preset nano --stage all
--threads 2 --jobs 2`` from an empty folder (commit 6f31a68, these
``STEPS``) took 54 min 4 s on 2 cores, 2.4 GB peak memory. Its critical
path was data, ``clip`` (19.5 min on one thread: clip_video alone is about
1 s a step), ``clap`` (4.6), ``latents`` (1.2), the image then video UNet
(12.8 + 9.0, beside text 2.8 then audio 15.0) and the alignment chain
(0.5 + 0.7 + 5.1); the autoencoders run beside ``clip`` (5.2 + 12.2 + 3.6
min). The run before it (a3f67fa, the single-step alignment) took 52 min
46 s.
Earlier timed runs with 4800 image-UNet steps took 48 min 47 s and 47 min
5 s here and 58 min 17 s on another machine: the margin under an hour
depends on the machine (README, "CoDi-nano").
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from codi.checkpoint import CheckpointError, read_state_dict, save_state_dict
from codi.data.world import ATTRIBUTES, WorldConfig, world_sample
from codi.nano import build_components
from codi.schedule import alphas_cumprod, training_target

STAGES = ("data", "image_vae", "audio_vae", "text_vae", "clip", "clap", "latents", "diffusion_image",
          "diffusion_video", "diffusion_audio", "diffusion_text", "align_text_image", "align_text_audio",
          "align_audio_video", "export")
# the image UNet's 7200 steps (4800 before), as nano_eval's earlier classifiers read 256 validation prompts:
# text->image 0.82 -> 0.83, audio->image 0.69 -> 0.77 and, through the video stage that continues it, text->video
# 0.82 -> 0.95 (motion 0.97 -> 1.00)
STEPS = {  # default optimisation steps per stage (scaled by --steps-scale); what the shipped nano used
    "image_vae": 600, "audio_vae": 400, "text_vae": 4000, "clip": 1500, "clip_video": 1000, "clap": 1000,
    "diffusion_image": 7200, "diffusion_video": 1000, "diffusion_audio": 4300, "diffusion_text": 4000,
    "align_text_image_env": 400, "align_text_audio_env": 400, "align_audio_video_env": 400,
    "align_text_image": 200, "align_text_audio": 200, "align_audio_video": 600,
}
ATTRIBUTE_ORDER = ("size", "colour", "shape", "motion")
REVERSED_MOTION = {"left": "right", "right": "left", "up": "down", "down": "up"}  # a video played backwards
TRANSPOSED_MOTION = {"left": "up", "up": "left", "right": "down", "down": "right"}  # x and y swapped
TRANSPOSE_SYMMETRIC = ("circle", "square", "diamond")  # shapes that look the same transposed (a triangle does not)
DEPENDS = {  # stage -> the stages whose outputs it reads (``--jobs`` runs stages whose inputs are ready at once)
    "data": (), "image_vae": ("data",), "audio_vae": ("data",), "text_vae": ("data",), "clip": ("data",),
    "clap": ("clip",), "latents": ("image_vae", "audio_vae", "text_vae", "clap"),
    "diffusion_image": ("latents",), "diffusion_audio": ("latents",), "diffusion_text": ("latents",),
    "diffusion_video": ("diffusion_image",),  # continues the image UNet
    # the alignment stages extend one alignment file, in the paper's order
    "align_text_image": ("diffusion_video", "diffusion_text"),
    "align_text_audio": ("align_text_image", "diffusion_audio"),
    "align_audio_video": ("align_text_audio",),
    "export": ("align_audio_video",),
}


# ------------------------------------------------------------------ captions
def partial_caption(attributes: dict[str, str], keep: Iterable[str]) -> str:
    """A caption naming only the attributes in ``keep`` ("a red circle", "a large object moves up")."""
    keep = set(keep)
    words = [attributes[k] for k in ("size", "colour") if k in keep]
    words.append(attributes["shape"] if "shape" in keep else "object")
    text = "a " + " ".join(words)
    if "motion" in keep:
        text += f" moves {attributes['motion']}"
    return text


def random_keep(rng: random.Random, p_full: float = 0.5) -> tuple[str, ...]:
    if rng.random() < p_full:
        return ATTRIBUTE_ORDER
    return tuple(a for a in ATTRIBUTE_ORDER if rng.random() < 0.6)


def agreement(query: list[dict], keys: list[dict], named: list[Iterable[str]]) -> torch.Tensor:
    """``[Q, K]`` 1 where key j agrees with query i on every attribute query i names."""
    out = torch.zeros(len(query), len(keys))
    for i, (q, names) in enumerate(zip(query, named)):
        for j, k in enumerate(keys):
            out[i, j] = float(all(q[a] == k[a] for a in names))
    return out


def multi_positive_nce(a: torch.Tensor, b: torch.Tensor, positives: torch.Tensor, temperature: float = 0.07):
    """Symmetric InfoNCE where ``positives [B, B]`` marks every matching pair (rows normalised to targets)."""
    logits = a @ b.T / temperature
    target_ab = positives / positives.sum(1, keepdim=True)
    target_ba = positives.T / positives.T.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target_ab * logits.log_softmax(1), 1).mean()
                  + torch.sum(-target_ba * logits.T.log_softmax(1), 1).mean())


def centred_nce(a: torch.Tensor, b: torch.Tensor, positives: torch.Tensor, temperature: float = 0.1):
    """:func:`multi_positive_nce` of ``a``, ``b [B, C]`` centred on their batch means and renormalised.

    A part that every row shares says nothing about which rows pair up; centring removes it, so the loss
    neither rewards nor is swamped by it (uncentred, environment vectors collapsed onto it).
    """
    a, b = (F.normalize(x - x.mean(0), dim=-1) for x in (a, b))
    return multi_positive_nce(a, b, positives, temperature)


# ------------------------------------------------------------------ run state
def seeded_random(*parts) -> random.Random:
    """A Python generator seeded with the string ``"part/part/..."``: the same in every process."""
    return random.Random("/".join(map(str, parts)))


def stable_seed(*parts) -> int:
    """A 63-bit seed from ``parts`` for torch, the same in every process.

    ``hash()`` of a tuple holding a string is salted per process (PYTHONHASHSEED), so seeding torch with it made
    every run draw different noise: two runs of the same command gave different weights.
    """
    return seeded_random(*parts).getrandbits(63)


class Run:
    """Output folder, logging, resumable optimisation loops."""

    def __init__(self, out: Path, preset: str, steps_scale: float, samples: int, test_samples: int,
                 save_every: int, seed: int, progress: bool = True):
        self.out, self.preset = out, preset
        self.steps_scale, self.samples, self.test_samples = steps_scale, samples, test_samples
        self.save_every, self.seed, self.progress = save_every, seed, progress
        out.mkdir(parents=True, exist_ok=True)
        self._data = None
        self.step = 0  # the optimisation step that Run.fit is on

    def steps(self, stage: str) -> int:
        return max(1, int(round(STEPS[stage] * self.steps_scale)))

    def log(self, **entry) -> None:
        with open(self.out / "log.jsonl", "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def done(self, stage: str) -> bool:
        return (self.out / f"{stage}.done").exists()

    def mark_done(self, stage: str, **info) -> None:
        (self.out / f"{stage}.done").write_text(json.dumps(info))

    @property
    def data(self) -> dict:
        if self._data is None:
            self._data = torch.load(self.out / "data.pt", weights_only=True)
        return self._data

    def fit(self, stage: str, module: torch.nn.Module, params: list[torch.nn.Parameter] | list[dict],
            loss_fn: Callable[[random.Random], torch.Tensor], lr: float) -> None:
        """Optimise ``loss_fn`` over ``params`` (AdamW, cosine decay), resuming from ``<stage>.ckpt``.

        ``params`` may be AdamW parameter groups (dicts with their own ``lr``).
        """
        steps = self.steps(stage)
        # fused: one kernel for every parameter (the per-parameter loop was 13 % of a UNet step on the CPU)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
        start = 0
        ckpt = self.out / f"{stage}.ckpt"
        if ckpt.exists():
            saved = torch.load(ckpt, weights_only=True)
            module.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            start = int(saved["step"])
        rng = seeded_random(self.seed, stage, start)
        torch.manual_seed(stable_seed(self.seed, stage, start))
        module.train()
        bar = tqdm(range(start, steps), initial=start, total=steps, desc=stage, disable=not self.progress)
        running = None
        for step in bar:
            self.step = step  # for schedules inside loss_fn (correct after a resume too)
            loss = loss_fn(rng)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{stage}: loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            bar.set_postfix(loss=f"{running:.4f}")
            if (step + 1) % 50 == 0 or step + 1 == steps:
                self.log(stage=stage, step=step + 1, loss=running, time=time.time())
            if (step + 1) % self.save_every == 0 or step + 1 == steps:
                tmp = ckpt.with_suffix(".tmp")
                torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "step": step + 1}, tmp)
                tmp.replace(ckpt)
        module.eval()


# ------------------------------------------------------------------ components
def load_stage(run: Run, name: str, module: torch.nn.Module) -> torch.nn.Module:
    module.load_state_dict(read_state_dict(run.out / f"{name}.safetensors"))
    return module.eval()


def save_stage(run: Run, name: str, module: torch.nn.Module, stage: str) -> None:
    save_state_dict(module.state_dict(), run.out / f"{name}.safetensors")
    run.mark_done(stage)


# ------------------------------------------------------------------ stages
def stage_data(run: Run) -> None:
    from codi.audio import audioldm_log_mel

    config = WorldConfig()
    out = {}
    for split, count in (("train", run.samples), ("test", run.test_samples)):
        samples = [world_sample(i, split, config) for i in tqdm(range(count), desc=f"world {split}",
                                                                disable=not run.progress)]
        audio = torch.stack([s.audio for s in samples])
        out[split] = {
            "video": (torch.stack([s.video for s in samples]) * 255).round().to(torch.uint8),
            "audio": audio.half(),
            "mel": torch.cat([audioldm_log_mel(audio[i:i + 256], 128) for i in range(0, count, 256)]).half(),
            "attributes": [s.attributes for s in samples],
        }
    torch.save(out, run.out / "data.pt")
    run.mark_done("data")


def _frames(run: Run, rng: random.Random, batch: int) -> torch.Tensor:
    video = run.data["train"]["video"]
    idx = torch.tensor([rng.randrange(video.shape[0]) for _ in range(batch)])
    frame = torch.tensor([rng.randrange(video.shape[1]) for _ in range(batch)])
    return video[idx, frame].float() / 255


def _kl_autoencoder_loss(vae, x: torch.Tensor, kl_weight: float = 1e-6) -> torch.Tensor:
    posterior = vae.encode(x).latent_dist
    rec = vae.decode(posterior.sample()).sample
    return F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * posterior.kl().mean()


def stage_image_vae(run: Run) -> None:
    model = build_components(run.preset, only=("image_vae",))["image_vae"]
    vae = model.vae.requires_grad_(True)
    run.fit("image_vae", vae, list(vae.parameters()),
            lambda rng: _kl_autoencoder_loss(vae, _frames(run, rng, 32) * 2 - 1), lr=1e-3)
    save_stage(run, "image_vae", model, "image_vae")


def stage_audio_vae(run: Run) -> None:
    model = build_components(run.preset, only=("audio_vae",))["audio_vae"]
    vae = model.vae.requires_grad_(True)
    mel = run.data["train"]["mel"]

    def loss(rng):
        idx = torch.tensor([rng.randrange(mel.shape[0]) for _ in range(32)])
        return _kl_autoencoder_loss(vae, mel[idx].float())

    run.fit("audio_vae", vae, list(vae.parameters()), loss, lr=1e-3)
    save_stage(run, "audio_vae", model, "audio_vae")


def _tokenizers(run: Run):
    from codi.vocab import char_tokenizers

    return char_tokenizers(run.out / "tokenizers")


def stage_text_vae(run: Run) -> None:
    model = build_components(run.preset, only=("text_vae",))["text_vae"]
    model.set_tokenizers(*_tokenizers(run))
    model.requires_grad_(True)
    bert, gpt2 = model.bert_tokenizer, model.gpt2_tokenizer
    attributes = run.data["train"]["attributes"]
    steps = run.steps("text_vae")

    def loss(rng):
        batch = [rng.choice(attributes) for _ in range(32)]
        texts = [partial_caption(a, random_keep(rng, 0.7)) for a in batch]
        enc = bert(texts, padding=True, return_tensors="pt")
        pooled = model.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output
        mu, logvar = model.encoder_latent(pooled).chunk(2, dim=-1)
        # the first 30 % of steps are a plain autoencoder (u = mu): with posterior noise from step 0 the
        # attribute learnt last, the motion, stayed under the noise (mu 0.03 apart, std 0.2) and was never
        # encoded (round trip at chance after 6000 steps). A 600-step warm-up (2000 steps) learnt motion in
        # one run and not in the next (round trip 0.32, loss stuck at 0.075); 1200 steps (of 4000) end with the
        # autoencoder's loss at 0.011-0.013 in both seeds tried, motion included
        deterministic = run.step < 0.3 * steps
        u = mu if deterministic else mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        ids = [[gpt2.bos_token_id] + gpt2.encode(t) + [gpt2.eos_token_id] for t in texts]
        width = max(map(len, ids))
        ids = torch.tensor([row + [gpt2.pad_token_id] * (width - len(row)) for row in ids])
        logits = model.logits(u, ids[:, :-1])
        target = ids[:, 1:].masked_fill(ids[:, 1:] == gpt2.pad_token_id, -100)
        rec = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        beta = 0.02 * min(1.0, run.step / max(1, steps // 2))  # KL annealing
        return rec + beta * torch.clamp(kl, min=1.0).mean() / 32  # free bits: 1 nat per sample

    run.fit("text_vae", model, [p for p in model.parameters() if p.requires_grad], loss, lr=1e-3)
    save_stage(run, "text_vae", model, "text_vae")


def _encode_grad(encoders, modality: str, value):
    """The prompt encoders' forward with gradients (their public methods run under no_grad)."""
    method = getattr(type(encoders), f"encode_{modality}")
    return method.__wrapped__(encoders, value)


def stage_clip(run: Run) -> None:
    encoders = build_components(run.preset, only=("encoders",))["encoders"]
    encoders.audio = None  # trained in the clap stage
    data = run.data["train"]
    attributes, video = data["attributes"], data["video"]

    def pair_loss(rng, modality):
        # 8 videos: about 22 clips with the negatives below
        idx = [rng.randrange(len(attributes)) for _ in range(48 if modality == "image" else 8)]
        keys = [attributes[i] for i in idx]
        if modality == "video":
            # hard negatives that differ from a clip only in motion: its time reversal (the opposite direction;
            # without it the towers settle on motion-blind embeddings) and, for shapes that look the same
            # transposed, its transpose (the other axis). With reversals alone the towers learnt one motion
            # feature along a diagonal: "left" and "down" were 0.015 apart in cosine distance (left/right 0.24),
            # which capped motion in every generated modality near 50 %.
            clips = video[torch.tensor(idx)].float() / 255
            swap = [i for i, k in enumerate(keys) if k["shape"] in TRANSPOSE_SYMMETRIC]
            keys = (keys + [dict(k, motion=REVERSED_MOTION[k["motion"]]) for k in keys]
                    + [dict(keys[i], motion=TRANSPOSED_MOTION[keys[i]["motion"]]) for i in swap])
            visual = _encode_grad(encoders, "video", torch.cat([clips, clips.flip(1),
                                                                clips[swap].transpose(-1, -2)]))
        named = [random_keep(rng, 0.5) for _ in keys]
        if modality == "image":
            frames = torch.tensor([rng.randrange(video.shape[1]) for _ in idx])
            visual = _encode_grad(encoders, "image", video[torch.tensor(idx), frames].float() / 255)
            named = [[a for a in n if a != "motion"] for n in named]  # a still frame shows no motion
        texts = [partial_caption(k, n) for k, n in zip(keys, named)]
        text = _encode_grad(encoders, "text", texts)
        return multi_positive_nce(text, visual, agreement(keys, keys, named))

    encoders.requires_grad_(True)
    params = [p for n, p in encoders.named_parameters() if not n.startswith("temporal.")]
    # 1500 steps at 1e-3: held-out images pick their size/colour/shape caption among the 48 for 1.00 (the towers
    # of 3000 steps at 5e-4, after the video phase: 0.93), and the loss is on its floor (about 1.45: captions repeat)
    run.fit("clip", encoders, params, lambda rng: pair_loss(rng, "image"), lr=1e-3)
    # then the temporal blocks (and the rest, slowly) on text-video pairs
    if encoders.config.temporal_frame_positions and not (run.out / "clip_video.ckpt").exists():
        for block in encoders.temporal:  # frame positions start at N(0, 0.5^2) whatever the image phase left
            torch.nn.init.normal_(block.attn.pos_embeds, std=0.5)
    groups = [{"params": list(encoders.temporal.parameters()), "lr": 1e-3},  # untrained so far: larger steps
              {"params": [p for n, p in encoders.named_parameters() if not n.startswith("temporal.")]}]
    # the image-text loss stays on every step: with text-video pairs alone (hard negatives differing only in
    # motion) the text tower lost shape (circle/square and triangle/diamond captions 0.03-0.04 apart in cosine
    # distance, 0.37 after the image phase); with it every shape pair stays >= 0.16 apart, held-out videos pick
    # their shape and motion captions for 1.00, for about 0.15 s more a step
    run.fit("clip_video", encoders, groups, lambda rng: pair_loss(rng, "video") + pair_loss(rng, "image"), lr=3e-4)
    full = build_components(run.preset, only=("encoders",))["encoders"]
    state = full.state_dict()
    state.update(encoders.state_dict())
    full.load_state_dict(state)
    save_stage(run, "encoders_clip", full, "clip")


def stage_clap(run: Run) -> None:
    encoders = load_stage(run, "encoders_clip", build_components(run.preset, only=("encoders",))["encoders"])
    data = run.data["train"]
    attributes, audio = data["attributes"], data["audio"]
    encoders.requires_grad_(False)
    encoders.audio.requires_grad_(True)
    text_cache: dict[str, torch.Tensor] = {}

    def loss(rng):
        idx = [rng.randrange(len(attributes)) for _ in range(48)]
        keys = [attributes[i] for i in idx]
        named = [random_keep(rng, 0.5) for _ in idx]
        texts = [partial_caption(k, n) for k, n in zip(keys, named)]
        missing = [t for t in dict.fromkeys(texts) if t not in text_cache]
        if missing:
            for t, e in zip(missing, encoders.encode_text(missing)):
                text_cache[t] = e
        text = torch.stack([text_cache[t] for t in texts])  # frozen text tower
        sound = _encode_grad(encoders, "audio", audio[torch.tensor(idx)].float())
        return multi_positive_nce(text, sound, agreement(keys, keys, named))

    run.fit("clap", encoders.audio, list(encoders.audio.parameters()), loss, lr=5e-4)
    save_stage(run, "encoders", encoders, "clap")


@torch.no_grad()
def stage_latents(run: Run) -> None:
    """Encode every training sample once; measure latent scales; cache prompt embeddings."""
    parts = build_components(run.preset, only=("image_vae", "audio_vae", "text_vae", "encoders"))
    image_vae = load_stage(run, "image_vae", parts["image_vae"])
    audio_vae = load_stage(run, "audio_vae", parts["audio_vae"])
    text_vae = load_stage(run, "text_vae", parts["text_vae"]).set_tokenizers(*_tokenizers(run))
    encoders = load_stage(run, "encoders", parts["encoders"])
    data = run.data["train"]
    video = data["video"].float() / 255
    n = video.shape[0]
    chunks = range(0, n, 128)
    z_video = torch.cat([image_vae.encode_video(video[i:i + 128]) for i in chunks])  # [N, 4, F, 8, 8]
    z_audio = torch.cat([audio_vae.vae.encode(data["mel"][i:i + 128].float()).latent_dist.mode() for i in chunks])
    captions = [partial_caption(a, ATTRIBUTE_ORDER) for a in data["attributes"]]
    z_text = torch.cat([text_vae.encode(captions[i:i + 128]) for i in chunks])
    scales = {"image": 1 / float(z_video.std()), "audio": 1 / float(z_audio.std()), "text": 1 / float(z_text.std())}
    embeddings = {
        "image": torch.cat([encoders.encode_image(video[i:i + 128, 0]) for i in chunks]),
        "video": torch.cat([encoders.encode_video(video[i:i + 128]) for i in chunks]),
        "audio": torch.cat([encoders.encode_audio(data["audio"][i:i + 128].float()) for i in chunks]),
    }
    # every caption a condition may use: all subsets of named attributes for every combination
    from itertools import product
    texts = sorted({partial_caption(dict(zip(ATTRIBUTE_ORDER, combo)), keep)
                    for combo in product(*(ATTRIBUTES[a] for a in ATTRIBUTE_ORDER))
                    for keep in _subsets(ATTRIBUTE_ORDER)})
    text_table = torch.cat([encoders.encode_text(texts[i:i + 256]) for i in range(0, len(texts), 256)])
    uncond = {m: encoders.unconditional(m, 1)[0] for m in ("text", "image", "video", "audio")}
    torch.save({"video": z_video * scales["image"], "audio": z_audio * scales["audio"], "text": z_text * scales["text"],
                "scales": scales, "embeddings": embeddings, "texts": texts, "text_table": text_table,
                "uncond": uncond}, run.out / "latents.pt")
    run.mark_done("latents", scales=scales)


def _subsets(items):
    from itertools import combinations

    return [c for r in range(len(items) + 1) for c in combinations(items, r)]


class Conditions:
    """Draws the condition token for training sample ``i``: a caption (full or partial) or another modality."""

    def __init__(self, run: Run, p_full: float = 0.5):
        self.p_full = p_full  # chance that a caption names every attribute
        latents = torch.load(run.out / "latents.pt", weights_only=True)
        self.latents = latents
        self.attributes = run.data["train"]["attributes"]
        self.text_index = {t: k for k, t in enumerate(latents["texts"])}

    def __call__(self, rng: random.Random, indices: list[int], target: str | tuple[str, ...]) -> torch.Tensor:
        targets = {target} if isinstance(target, str) else set(target)
        sources = [m for m in ("image", "video", "audio") if m not in targets and not
                   (m in ("image", "video") and targets & {"image", "video"})]
        rows = []
        for i in indices:
            roll = rng.random()
            if roll < 0.1:
                rows.append(self.latents["uncond"][rng.choice(["text"] + sources)])
            elif roll < 0.6 or not sources:
                text = partial_caption(self.attributes[i], random_keep(rng, self.p_full))
                rows.append(self.latents["text_table"][self.text_index[text]])
            else:
                rows.append(self.latents["embeddings"][rng.choice(sources)][i])
        return torch.stack(rows)[:, None, :]  # [B, 1, D]


def _diffusion_latent(latents: dict, modality: str, idx: torch.Tensor) -> torch.Tensor:
    if modality == "image":
        frames = torch.randint(0, latents["video"].shape[2], (len(idx),))
        return latents["video"][idx, :, frames].clone()  # [B, 4, 8, 8]: a frame's latent
    return latents[modality][idx]


def _noised(x0: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor, prediction: str):
    """``(z_t, target)``: ``z_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` and what the UNet must output there."""
    noise = torch.randn_like(x0)
    a = alpha_bar[t].view(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise, training_target(x0, noise, a, prediction)


def _is_alignment(name: str) -> bool:
    """Latent-alignment parameters (environment encoders, connector cross-attention): trained only in ``align_*``."""
    return "env_encoder" in name or "connectors" in name


def _unet_file(run: Run, modality: str) -> Path:
    return run.out / f"unet_{'image' if modality == 'video' else modality}.safetensors"


def _load_diffusion(run: Run):
    """The joint model with every UNet trained so far (``unet_<m>.safetensors``) and the alignment.

    The alignment (environment encoders, connectors) is ``alignment.safetensors``.

    Each modality's diffusion stage writes only its own UNet file, so the
    stages for different UNets are independent and may run at the same time
    in separate processes (the video stage continues the image UNet's file).
    """
    from codi.unets.unet import release_initialisation_

    model = build_components(run.preset, only=("diffusion",))["diffusion"]
    for modality in ("image", "audio", "text"):
        path = _unet_file(run, modality)
        if path.exists():
            model.unet(modality).load_state_dict(read_state_dict(path))
        else:  # not trained yet: zero-initialised residual branches, as the release trains
            release_initialisation_(model.unet(modality))
    path = run.out / "alignment.safetensors"
    if path.exists():
        unexpected = model.load_state_dict(read_state_dict(path), strict=False).unexpected_keys
        if unexpected:
            raise CheckpointError(f"{path} holds tensors that are not alignment parameters: {unexpected[:5]}")
    return model


def _denoising_loss(unet, latents: dict, conditions: Conditions, rng: random.Random, modality: str, batch: int,
                    alpha_bar: torch.Tensor, prediction: str) -> torch.Tensor:
    """MSE of one UNet's epsilon or v prediction on ``batch`` training samples of ``modality``.

    Ho et al. 2020, Eq. 14 for epsilon; Salimans & Ho 2022 for v. ``t`` is
    uniform over all T timesteps, the last (SNR 0 on a zero-terminal-SNR
    schedule) included.
    """
    idx = [rng.randrange(latents["video"].shape[0]) for _ in range(batch)]
    x0 = _diffusion_latent(latents, modality, torch.tensor(idx))
    t = torch.randint(0, len(alpha_bar), (batch,))
    xt, target = _noised(x0, t, alpha_bar, prediction)
    return F.mse_loss(unet(xt, t, conditions(rng, idx, modality)), target)


def stage_diffusion(run: Run, modality: str) -> None:
    """One modality's latent diffusion model alone (alignment parameters untouched).

    The video stage continues the image UNet and trains it on videos *and*
    still frames at once (joint image-video training): the spatial layers are
    shared, and training them on videos alone makes the image model forget
    its conditioning (measured: held-out image denoising loss 0.04 -> 0.31).
    """
    model = _load_diffusion(run)
    conditions = Conditions(run)
    latents = conditions.latents
    unet = model.unet(modality)
    ac, prediction = alphas_cumprod(model.config.schedule), model.config.schedule.prediction

    if modality == "video":
        # still frames weighted 1.0, as much as the videos: at 0.5 the video stage cost text->image 0.89 -> 0.73
        # (64 validation prompts, guidance 2); rerun from the same image UNet at 1.0: 0.83, and text->video
        # 0.80 vs 0.78 (motion 0.97). On 256 validation prompts at 1.0: 0.81 before, 0.82 after, so no cost;
        # freezing the spatial layers instead (temporal layers only) gave text->video 0.79 against 0.82
        def loss(rng):
            return (_denoising_loss(unet, latents, conditions, rng, "video", 12, ac, prediction)
                    + _denoising_loss(unet, latents, conditions, rng, "image", 16, ac, prediction))
    else:
        def loss(rng):
            return _denoising_loss(unet, latents, conditions, rng, modality, 32, ac, prediction)

    params = [p for name, p in unet.named_parameters() if not _is_alignment(name)]
    unet.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    # measured on the image UNet (1500 steps from scratch, text->image all-attributes-right on 64 held-out
    # prompts): 5e-4 -> 0.19, 1.5e-3 -> 0.55, 3e-3 -> 0.42; audio 1.5e-3 beat 5e-4 at half the steps; the video
    # stage (continuing the image UNet) 1e-3 -> 0.19 text->video vs 3e-4 -> 0.09 after 300 steps
    lr = {"video": 1e-3, "text": 1e-3}.get(modality, 1.5e-3)
    run.fit(f"diffusion_{modality}", unet, params, loss, lr=lr)
    save_state_dict(unet.state_dict(), _unet_file(run, modality))
    run.mark_done(f"diffusion_{modality}")


# The paper's order (Sec. 3.4): text-image trains both sides; text-audio freezes the text diffuser and trains the
# audio side; audio-video freezes the audio side and trains the video side (the image UNet's alignment parameters)
ALIGN_TRAINS = {("text", "image"): ("text", "image"), ("text", "audio"): ("audio",), ("audio", "video"): ("video",)}
SHOWN = {"image": ("size", "colour", "shape")}  # what a modality shows of the event (the rest: every attribute)
CONNECTOR_BAND = (200, 800)  # timesteps the connectors train at: the partner's environment vector is informative


def _environment_loss(model, latents: dict, attributes: list[dict], pair: tuple[str, str], rng: random.Random,
                      alpha_bar: torch.Tensor, prediction: str, batch: int = 64) -> torch.Tensor:
    """Contrastive loss putting the pair's environment vectors ``V_a(z_t)``, ``V_b(z_t)`` in one space.

    Paired latents are noised at *one* timestep for the whole batch (with a
    timestep per pair, ``t`` itself identifies the pair and the encoders learn
    that: measured, the vectors of different clips at one ``t`` became
    identical). The vectors are centred on the batch mean before the
    multi-positive InfoNCE: a unit vector averaged over frames and space is
    dominated by a part shared by every clip (cosine 0.95-0.98 between
    clips), and uncentred InfoNCE collapsed onto it (loss stuck at ln B).
    Positives: pairs agreeing on every attribute both modalities show.
    """
    n = latents["video"].shape[0]
    idx = [rng.randrange(n) for _ in range(batch)]
    t = torch.full((batch,), rng.randrange(len(alpha_bar)))
    noisy = {m: _noised(_diffusion_latent(latents, m, torch.tensor(idx)), t, alpha_bar, prediction)[0] for m in pair}
    env = model.environments(noisy, t)  # {m: [B, 1, C_env]}
    shown = [attr for attr in ATTRIBUTE_ORDER if all(attr in SHOWN.get(m, ATTRIBUTE_ORDER) for m in pair)]
    events = [attributes[i] for i in idx]
    return centred_nce(env[pair[0]][:, 0], env[pair[1]][:, 0], agreement(events, events, [shown] * batch))


def _open_conditions(latents: dict, index: dict[str, int], attributes: list[dict], idx: list[int],
                     rng: random.Random) -> torch.Tensor:
    """``[B, 1, D]`` captions naming at most colour and shape (10 % unconditional): size and motion are left open.

    ``index`` maps a caption to its row of ``latents["text_table"]``.
    """
    rows = []
    for i in idx:
        if rng.random() < 0.1:
            rows.append(latents["uncond"]["text"])
        else:
            keep = [k for k in ("colour", "shape") if rng.random() < 0.7]
            rows.append(latents["text_table"][index[partial_caption(attributes[i], keep)]])
    return torch.stack(rows)[:, None, :]


def _trainable(model, modalities: Iterable[str], part: str) -> list[torch.nn.Parameter]:
    """Only ``part`` ("env_encoder" or "connectors") of ``modalities``' UNets requires grad; returns those parameters."""
    model.requires_grad_(False)
    params = [p for m in modalities for name, p in model.unet(m).named_parameters() if _is_alignment(name)
              and part in name]
    for p in params:
        p.requires_grad_(True)
    return params


def stage_align(run: Run, pair: tuple[str, str]) -> None:
    """Latent alignment of ``pair`` (Sec. 3.4), in two steps for the trained side ``ALIGN_TRAINS[pair]``.

    1. ``align_<a>_<b>_env``: the environment encoders, contrastively on
       paired latents (:func:`_environment_loss`), so that ``V`` carries the
       event into the shared space. Trained by the denoising loss instead,
       they collapse: the connectors first learn a bias, which a constant
       vector serves, and then every clip's vector was the same (cosine
       0.999); the denoiser then gave the same loss with the paired partner
       as with a mismatched one, and joint generation never beat independent.
    2. ``align_<a>_<b>``: the connectors, with the encoders frozen, on joint
       denoising at ``CONNECTOR_BAND`` timesteps, conditioned on captions that
       leave size and motion to the partner (:func:`_open_conditions`).
    """
    model = _load_diffusion(run)
    latents = torch.load(run.out / "latents.pt", weights_only=True)
    attributes = run.data["train"]["attributes"]
    ac, prediction = alphas_cumprod(model.config.schedule), model.config.schedule.prediction
    trains, name = ALIGN_TRAINS[pair], f"align_{pair[0]}_{pair[1]}"
    n = latents["video"].shape[0]

    run.fit(f"{name}_env", model, _trainable(model, trains, "env_encoder"),
            lambda rng: _environment_loss(model, latents, attributes, pair, rng, ac, prediction), lr=1e-3)

    params = _trainable(model, trains, "connectors")
    text_index = {text: k for k, text in enumerate(latents["texts"])}
    batch = 12 if "video" in pair else 24

    def loss(rng):
        idx = [rng.randrange(n) for _ in range(batch)]
        t = torch.randint(*CONNECTOR_BAND, (batch,))
        noisy, target = {}, {}
        for m in pair:
            noisy[m], target[m] = _noised(_diffusion_latent(latents, m, torch.tensor(idx)), t, ac, prediction)
        with torch.no_grad():
            env = model.environments(noisy, t)  # frozen here
        context = _open_conditions(latents, text_index, attributes, idx, rng)
        out = {m: model.unet(m)(noisy[m], t, context, model.env_tokens(env, m)) for m in trains}
        return sum(F.mse_loss(out[m], target[m]) for m in trains) / len(trains)

    run.fit(name, model, params, loss, lr=3e-3)
    aligned = {key: value for key, value in model.state_dict().items() if _is_alignment(key)}
    save_state_dict(aligned, run.out / "alignment.safetensors")
    run.mark_done(name)


def stage_export(run: Run, destination: Path | None = None) -> None:
    from codi.nano import export_nano

    scales = json.loads((run.out / "latents.done").read_text())["scales"]
    stage_files = ("image_vae", "audio_vae", "text_vae", "encoders")
    parts = {name: load_stage(run, name, module)
             for name, module in build_components(run.preset, scales, only=stage_files).items()}
    parts["diffusion"] = _load_diffusion(run)  # the UNet files and the alignment, built once
    steps: dict[str, int] = {}
    for line in (run.out / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "step" in entry:
            steps[entry["stage"]] = max(steps.get(entry["stage"], 0), int(entry["step"]))
    export_nano(parts, scales, destination or run.out / "export", tokenizer_dir=run.out / "tokenizers",
                extra={"optimised_steps": steps})
    run.mark_done("export")


RUNNERS: dict[str, Callable[[Run], None]] = {
    "data": stage_data, "image_vae": stage_image_vae, "audio_vae": stage_audio_vae, "text_vae": stage_text_vae,
    "clip": stage_clip, "clap": stage_clap, "latents": stage_latents,
    "diffusion_image": lambda run: stage_diffusion(run, "image"),
    "diffusion_video": lambda run: stage_diffusion(run, "video"),
    "diffusion_audio": lambda run: stage_diffusion(run, "audio"),
    "diffusion_text": lambda run: stage_diffusion(run, "text"),
    "align_text_image": lambda run: stage_align(run, ("text", "image")),
    "align_text_audio": lambda run: stage_align(run, ("text", "audio")),
    "align_audio_video": lambda run: stage_align(run, ("audio", "video")),
    "export": stage_export,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano", choices=("nano", "tiny"))
    parser.add_argument("--stage", default="all", choices=("all",) + STAGES)
    parser.add_argument("--out", default="runs/nano")
    parser.add_argument("--samples", type=int, default=2048, help="training world samples")
    parser.add_argument("--test-samples", type=int, default=256, help="held-out world samples")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's step count")
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--jobs", type=int, default=1,
                        help="with --stage all: run up to this many independent stages at once, each in its own "
                             "process, sharing --threads among them")
    args = parser.parse_args(argv)
    if args.jobs > 1 and args.stage == "all":
        return run_parallel(argv if argv is not None else sys.argv[1:], Path(args.out), args.jobs,
                            args.threads or torch.get_num_threads())
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run(Path(args.out), args.preset, args.steps_scale, args.samples, args.test_samples, args.save_every,
              args.seed, progress=not args.no_progress)
    stages = STAGES if args.stage == "all" else (args.stage,)
    for stage in stages:
        if run.done(stage) and args.stage == "all":
            continue
        started = time.time()
        torch.manual_seed(stable_seed(args.seed, stage, "init"))  # the same weights whatever ran before in this process
        RUNNERS[stage](run)
        run.log(stage=stage, finished=True, seconds=time.time() - started)
        print(f"{stage}: done in {time.time() - started:.0f} s", file=sys.stderr)
    return 0


def run_parallel(argv: list[str], out: Path, jobs: int, threads: int) -> int:
    """Run every unfinished stage as ``python -m codi.train --stage <s>`` in dependency order, ``jobs`` at a time.

    ``threads`` torch threads are shared among the stages started together.
    """
    import subprocess

    base = _without_options(argv, ("--stage", "--jobs", "--threads"))
    done = {stage for stage in STAGES if (out / f"{stage}.done").exists()}
    running: dict[str, subprocess.Popen] = {}
    while len(done) < len(STAGES):
        ready = sorted((stage for stage in STAGES if stage not in done and stage not in running
                        and all(d in done for d in DEPENDS[stage])), key=lambda s: -chain_length(s))
        ready = ready[:jobs - len(running)]
        share = max(1, threads // max(1, len(running) + len(ready)))  # alone (latents, alignment): every thread
        for stage in ready:
            command = [sys.executable, "-m", "codi.train", *base, "--stage", stage, "--threads", str(share),
                       "--no-progress"]
            running[stage] = subprocess.Popen(command)
        if not running:
            raise RuntimeError(f"no stage can start; unfinished: {sorted(set(STAGES) - done)}")
        while not (finished := [s for s, p in running.items() if p.poll() is not None]):
            time.sleep(0.5)
        for stage in finished:
            if running.pop(stage).returncode != 0:
                for process in running.values():
                    process.wait()
                print(f"stage {stage} failed; finished stages are kept, rerun the same command to resume",
                      file=sys.stderr)
                return 1
            done.add(stage)
    return 0


def chain_length(stage: str) -> int:
    """Stages in the longest chain from ``stage`` to the end (itself included): ``run_parallel`` starts the
    ready stage with the longest chain first (clip before the autoencoders, the image UNet before the text
    UNet before the audio UNet); in the order of :data:`STAGES`, clip waited 8 min for two autoencoders."""
    after = [s for s, needs in DEPENDS.items() if stage in needs]
    return 1 + max((chain_length(s) for s in after), default=0)


def _without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the given ``--name value`` / ``--name=value`` options."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{n}=" for n in names)):
            kept.append(arg)
    return kept


if __name__ == "__main__":
    sys.exit(main())
