"""Generate any subset of text, image, video and audio from any subset of them with CoDi.

Examples:
  python -m codi.generate --checkpoint-dir checkpoints/ --text "a dog barks in the rain" --outputs video audio
  python -m codi.generate --checkpoint-dir checkpoints/ --image cat.jpg --outputs text
  python -m codi.generate --preset tiny --text "smoke test" --outputs image text --steps 4   # random weights

Outputs are written to --out-dir as <index>_<modality>.{png,mp4|gif,wav,txt}.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from codi.config import MODALITIES
from codi.io import load_input, save_audio, save_image, save_video
from codi.sampling import SAMPLERS

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint-dir", help="folder with the official CoDi_*.pth files")
    source.add_argument("--preset", help="build a preset with random weights instead (tiny: smoke tests)")
    parser.add_argument("--fp16-files", action="store_true", help="read the *_fp16.pth copies of the release")
    parser.add_argument("--tokenizer-dir", help="local folder with the BERT/GPT-2 tokenizer files (text VAE)")
    parser.add_argument("--text", action="append", default=[], help="a text prompt (repeat for a batch)")
    for modality in ("image", "video", "audio"):
        parser.add_argument(f"--{modality}", action="append", default=[], help=f"a {modality} file (repeatable)")
    parser.add_argument("--outputs", nargs="+", required=True, choices=MODALITIES, help="modalities to generate")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--sampler", default="ddim", choices=SAMPLERS)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--mix-weight", action="append", default=[], metavar="MODALITY=W",
                        help="weight of an input modality in the condition mix (default 1 each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--audio-seconds", type=float)
    parser.add_argument("--text-sampling", choices=("greedy", "sample"), default="greedy")
    parser.add_argument("--alignment", choices=("own", "others"), default="own",
                        help="environment vectors the connectors attend to: own (release) or others (paper)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--video-format", choices=("mp4", "gif"), default="mp4")
    parser.add_argument("--out-dir", default="outputs")
    return parser


def parse_weights(items: list[str]) -> dict[str, float]:
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in MODALITIES:
            raise SystemExit(f"--mix-weight takes MODALITY=W with MODALITY one of {', '.join(MODALITIES)}; got {item!r}")
        weights[name] = float(value)
    return weights


def collect_inputs(args: argparse.Namespace) -> dict:
    inputs = {}
    if args.text:
        inputs["text"] = list(args.text)
    for modality in ("image", "video", "audio"):
        paths = getattr(args, modality)
        if paths:
            values = [load_input(modality, p) for p in paths]
            if modality == "audio":
                length = min(v.shape[-1] for v in values)
                values = [v[..., :length] for v in values]
            inputs[modality] = torch.stack(values)
    if not inputs:
        raise SystemExit("give at least one input: --text, --image, --video or --audio")
    return inputs


def save_outputs(result: dict, out_dir: Path, video_format: str) -> list[Path]:
    written = []
    for modality, values in result.items():
        if modality == "latents":
            continue
        for index in range(len(values)):
            stem = out_dir / f"{index}_{modality}"
            if modality == "image":
                written.append(save_image(values[index], stem.with_suffix(".png")))
            elif modality == "video":
                written.append(save_video(values[index], stem.with_suffix(f".{video_format}")))
            elif modality == "audio":
                written.append(save_audio(values[index], stem.with_suffix(".wav")))
            else:
                path = stem.with_suffix(".txt")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(values[index] + "\n")
                written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from codi.pipeline import CoDiPipeline

    dtype = DTYPES[args.dtype]
    inputs = collect_inputs(args)
    if args.checkpoint_dir:
        pipe = CoDiPipeline.from_pretrained(args.checkpoint_dir, inputs=list(inputs), outputs=args.outputs,
                                            device=args.device,
                                            dtype=dtype, fp16_files=args.fp16_files,
                                            tokenizer_dir=args.tokenizer_dir, env_attention=args.alignment)
    else:
        pipe = CoDiPipeline.from_config(args.preset, device=args.device, dtype=dtype, env_attention=args.alignment)
    result = pipe(inputs, args.outputs, num_inference_steps=args.steps,
                  guidance_scale=args.guidance_scale, mix_weights=parse_weights(args.mix_weight), seed=args.seed,
                  sampler=args.sampler, eta=args.eta, image_size=args.image_size, num_frames=args.frames,
                  audio_seconds=args.audio_seconds, text_sampling=args.text_sampling, progress=True)
    for path in save_outputs(result, Path(args.out_dir), args.video_format):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
