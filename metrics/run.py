"""Evaluate a generator on a paper task: generate (or read) samples, score them, write results JSON.

    python -m metrics.run --task text2video+audio --checkpoint ckpt/ --data-root data/ --num-samples 100
    python -m metrics.run --task text2image --samples-dir other_model/ --data-root data/   # score files only
    torchrun --nproc_per_node 8 -m metrics.run --task text2image --checkpoint ckpt/ --device cuda   # sharded

Samples go to ``<output>/<settings>/<mode>/<id>.{png,wav,mp4,txt}`` where
``<settings>`` encodes everything that changes them (task and version,
generator, checkpoint hash prefix, sampler, steps, guidance, seed); results to
``<output>/<settings>/results.json`` (schema codi-results/1), and a table is
printed. Weights for the metrics are looked up locally only
(``python -m metrics.weights`` lists them); the data root is ``--data-root`` or
``$CODI_DATA_ROOT``.

Under ``torchrun`` (any number of processes and nodes) the sorted records are
split into one contiguous block per rank; each rank generates, saves and
extracts its block, rank 0 gathers the features, scores and writes the results
(:mod:`metrics.distributed`). A run that is stopped (even by SIGKILL) resumes
when started again with the same options: finished samples and their cached
features are reused (:mod:`metrics.store`). The run folder's ``settings.json``
and ``features/settings.json`` record what produced them; a run with other
settings is refused with the differences rather than mixed in.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import torch

from metrics import distributed
from metrics.build import Context
from metrics.data import COMMON_OPTIONS, DatasetError, data_root, ids_digest, load_records
from metrics.evaluate import RunInfo, Settings, as_dicts, evaluate, reference_modalities
from metrics.features.local import MissingWeightsError
from metrics.generators import resolve_generator
from metrics.registry import EMBEDDERS
from metrics.results import build_results, checkpoint_hashes, write_results
from metrics.store import check_settings
from metrics.task import SAMPLERS, TaskError, available_tasks, load_task

DEFAULT_GENERATOR = "codi-nano"
"""The generator used when --generator is not given: the embedded CoDi-nano, which runs offline."""
NANO_WORLD_SAMPLES = 32
"""Samples scored by default when codi-nano runs on the procedural world (no data root or manifest)."""

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODE_CHOICES = {"both": ("joint", "independent"), "joint": ("joint",), "independent": ("independent",)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m metrics.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="task name or YAML path (" + ", ".join(available_tasks()) + ")")
    p.add_argument("--generator", default=DEFAULT_GENERATOR,
                   help=f"registered generator (default {DEFAULT_GENERATOR}) or module.path:callable")
    p.add_argument("--checkpoint", help="checkpoint folder or file of the generator")
    p.add_argument("--preset", help="model preset: codi-random's architecture (default tiny), or the architecture "
                                    "the codi generator loads release-format files into (default official)")
    p.add_argument("--data-root", help="dataset root (default $CODI_DATA_ROOT)")
    p.add_argument("--manifest", help="JSONL manifest replacing the task's dataset (a custom prompt set)")
    p.add_argument("--num-samples", type=int, help="number of samples (default: the task's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--mode", choices=sorted(MODE_CHOICES), default="both",
                   help="for multi-output tasks: joint, independent or both")
    p.add_argument("--sampler", choices=SAMPLERS, help="override the task's sampler")
    p.add_argument("--steps", type=int, help="override the task's number of sampling steps")
    p.add_argument("--guidance-scale", type=float,
                   help="override the guidance scale (default: the task's, or the generator's own where it has "
                        "one: codi-nano's per-task scales chosen on validation prompts)")
    p.add_argument("--output", default="runs", help="output folder (default runs/)")
    p.add_argument("--samples-dir", help="score the samples in this folder instead of generating")
    p.add_argument("--no-save", action="store_true", help="do not save generated samples")
    p.add_argument("--cache-dir", help="reference statistics / embedding cache (default <output>/cache)")
    p.add_argument("--weights-dir", help="folder with inception-2015-12-05.pt etc. (default $CODI_EVAL_WEIGHTS)")
    p.add_argument("--clip-model", help="CLIP directory or cached hub id for CLIPScore/CLIPSIM/evaluator SIM")
    p.add_argument("--clap-model", help="CLAP directory or cached hub id for the evaluator SIM")
    p.add_argument("--fad-model", choices=("vggish", "pann"), default="vggish")
    p.add_argument("--sim-embedder", default="codi", help="SIM encoders: codi (default) or evaluator")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="score without samples whose outputs or features have NaN/inf values (counted in the "
                        "results) instead of failing")
    p.add_argument("--dist-timeout", type=float, default=24 * 60,
                   help="minutes a torchrun rank waits for the others at a collective (default 1440)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+\-]", "_", text)


def settings_name(task, generator: str, ckpt_hashes: dict[str, str], sampler: str, steps: int, guidance: float,
                  seed: int, dtype: str = "float32") -> str:
    """Folder name encoding every setting that changes the samples."""
    digest = "none"
    if ckpt_hashes:
        import hashlib

        digest = hashlib.sha256("".join(f"{k}:{v}" for k, v in sorted(ckpt_hashes.items())).encode()).hexdigest()[:10]
    precision = "" if dtype == "float32" else f"-{dtype}"
    return _slug(f"{task.name}-v{task.version}-{generator}-{digest}-{sampler}-s{steps}-g{guidance:g}-seed{seed}"
                 f"{precision}")


def _print_table(doc: dict, path: Path) -> None:
    try:
        from reports.load import parse_results
        from reports.tables import render

        print(render([parse_results(doc, str(path))], "md"))
    except Exception:  # noqa: BLE001 (the table is a convenience; the JSON is the result)
        for mode, entries in doc["metrics"].items():
            for name, m in entries.items():
                err = f" ± {m['stderr']:.4g}" if m.get("stderr") is not None else ""
                value = "n/a" if m["value"] is None else f"{m['value']:.4g}"
                print(f"{mode:12s} {name:24s} {value}{err}" + ("" if m["reliable"] else f"  ({m['note']})"))


def run(args: argparse.Namespace, env: distributed.DistEnv | None = None) -> Path | None:
    """One evaluation; under torchrun every rank calls it with its :class:`DistEnv` (results on rank 0 only)."""
    env = env or distributed.DistEnv(device=args.device)
    task = load_task(args.task)
    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    sampler = args.sampler or task.sampler.name
    steps = args.steps or task.sampler.steps
    modes = task.modes if task.modes == ("default",) else MODE_CHOICES[args.mode]
    output = Path(args.output)
    cache_dir = Path(args.cache_dir) if args.cache_dir else output / "cache"

    # dataset
    kind, split, options = task.dataset.kind, task.dataset.split, dict(task.dataset.options)
    root_given = bool(args.data_root or os.environ.get("CODI_DATA_ROOT"))
    if args.manifest:
        manifest = Path(args.manifest).resolve()
        kind, split, options = "jsonl", None, {**{k: v for k, v in options.items() if k != "path"},
                                               "path": str(manifest)}
        root = data_root(args.data_root) if root_given else manifest.parent
    elif args.generator == "codi-nano" and not root_given:
        # the embedded model on its own held-out world (metrics/world.py): runs offline, nano-space numbers
        import metrics.world  # noqa: F401  (registers the dataset)

        kind, split, options, root = "world", "test", dict(metrics.world.WORLD_OPTIONS), cache_dir
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = data_root(args.data_root)
    wanted = args.num_samples or (NANO_WORLD_SAMPLES if kind == "world" else task.dataset.num_samples)
    needs = set(task.inputs) | set(reference_modalities(task))
    records, available = load_records(kind, root, split, options, wanted, needs)
    if len(records) < wanted and env.is_root:
        print(f"warning: {task.name}: only {len(records)} of the {wanted} requested samples are available",
              file=sys.stderr)

    # generator or existing samples
    dtype = DTYPES[args.dtype]
    device = env.device
    generator, hashes, samples_from, checkpoint = None, {}, None, args.checkpoint
    guidance = task.sampler.guidance_scale if args.guidance_scale is None else args.guidance_scale
    if args.samples_dir:
        samples_from = Path(args.samples_dir)
        if not samples_from.is_dir():
            raise FileNotFoundError(f"--samples-dir {samples_from} is not a folder")
        gen_name = "samples:" + samples_from.resolve().name
        run_dir = output / _slug(f"{task.name}-v{task.version}-scored-{samples_from.resolve().name}")
        sample_settings = {"task": task.name, "task_version": task.version, "outputs": list(task.outputs),
                           "samples_dir": str(samples_from.resolve())}
    else:
        preset = args.preset or ("tiny" if args.generator == "codi-random" else None)
        gen_name = args.generator + (f"-{preset}" if preset and preset != "official" else "")
        build = resolve_generator(args.generator)
        if checkpoint is None and hasattr(build, "default_checkpoint"):
            checkpoint = build.default_checkpoint()
        try:
            generator = build(checkpoint=checkpoint, device=device, dtype=dtype, outputs=list(task.outputs),
                              preset=preset, seed=args.seed)
        except (ValueError, RuntimeError, FileNotFoundError):
            raise
        except Exception as error:  # noqa: BLE001 (model loaders raise their own types)
            raise RuntimeError(f"cannot build generator {args.generator!r}: {error}") from error
        if args.guidance_scale is None and hasattr(build, "default_guidance"):
            guidance = build.default_guidance(task.inputs, task.outputs)
            if env.is_root:
                print(f"{task.name}: {args.generator} generates with guidance scale {guidance:g}, its own default "
                      f"(the task's {task.sampler.guidance_scale:g} is the paper's); --guidance-scale overrides",
                      file=sys.stderr)
        hashes = checkpoint_hashes(checkpoint, cache_dir)
        run_dir = output / settings_name(task, gen_name, hashes, sampler, steps, guidance, args.seed, args.dtype)
        prep = {**COMMON_OPTIONS, **options}
        input_prep = {k: prep[k] for k, m in (("image_size", "image"), ("video_size", "video"),
                                              ("num_frames", "video"), ("audio_seconds", "audio")) if m in task.inputs}
        sample_settings = {"task": task.name, "task_version": task.version, "inputs": list(task.inputs),
                           "outputs": list(task.outputs), "generator": gen_name, "preset": preset,
                           "checkpoint_sha256": hashes, "sampler": sampler, "steps": steps,
                           "guidance_scale": guidance, "seed": args.seed, "dtype": args.dtype,
                           "input_preprocessing": input_prep}
    check_settings(run_dir, sample_settings, "samples")
    if args.sim_embedder not in EMBEDDERS:
        EMBEDDERS.get(args.sim_embedder)  # raises with the valid names

    ctx = Context(device=device, dtype=dtype, clip_model=args.clip_model, clap_model=args.clap_model,
                  weights_root=args.weights_dir, fad_model=args.fad_model, sim_embedder=args.sim_embedder,
                  checkpoint=checkpoint, cache_dir=str(cache_dir), batch_size=args.batch_size,
                  codi_encoders=getattr(generator, "encoders", None),
                  reference_id=dict(dataset=f"{task.dataset.name}-{kind}",
                                    split=f"{split}-{ {**COMMON_OPTIONS, **options}['image_size']}px",
                                    num=len(records),
                                    ids_digest=ids_digest([r.id for r in records]
                                                          + [json.dumps(options, sort_keys=True, default=str)])))
    settings = Settings(sampler=sampler, steps=steps, guidance_scale=guidance, seed=args.seed,
                        batch_size=args.batch_size, modes=modes, save_samples=not args.no_save,
                        progress=not args.no_progress, allow_nonfinite=args.allow_nonfinite)
    info = RunInfo()
    scores = evaluate(task, records, settings, ctx, generator=generator, sample_dir=run_dir,
                      samples_from=samples_from, dataset_options=options, dist=env, info=info)
    if not env.is_root:
        return None
    task_config = dict(task.raw)
    if kind == "world" or args.generator == "codi-nano":
        task_config["feature_space"] = "nano"  # never comparable with the paper's numbers (reports keep it apart)
        task_config["dataset"] = {**task_config.get("dataset", {}), "kind": kind, "name": "procedural world"} \
            if kind == "world" else task_config.get("dataset")
    doc = build_results(
        task=task.name, task_version=task.version, task_config=task_config, generator=gen_name,
        checkpoint=checkpoint, checkpoint_sha256=hashes,
        settings={"sampler": sampler, "steps": steps, "guidance_scale": guidance, "seed": args.seed,
                  "num_samples": len(records), "batch_size": args.batch_size, "device": args.device,
                  "dtype": args.dtype, "modes": list(modes), "seeds": f"sample i uses seed {args.seed} + i",
                  "requested_samples": wanted, "available_samples": available,
                  "dataset": {"kind": kind, "split": split, "root": str(root)},
                  "samples_dir": str(samples_from if samples_from else run_dir),
                  "sim_embedder": args.sim_embedder, "fad_model": args.fad_model,
                  "allow_nonfinite": args.allow_nonfinite},
        metrics=as_dicts(scores))
    doc["run"] = info.to_dict()  # world size, samples made now / reused from the cache, non-finite exclusions
    path = write_results(doc, run_dir / "results.json")
    _print_table(doc, path)
    print(f"results: {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = None
    try:
        env = distributed.setup(args.device, args.dist_timeout)
        if args.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        run(args, env)
    except (TaskError, DatasetError, MissingWeightsError, KeyError, ValueError, OSError, RuntimeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        rank = f"rank {env.rank}: " if env is not None and env.active else ""
        print(f"error: {rank}{message}", file=sys.stderr)
        return 2
    finally:
        if env is not None:
            distributed.teardown(env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
