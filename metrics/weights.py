"""List every weight file the metrics need, where it is expected, and whether it is there.

    python -m metrics.weights            # table of files and their status
    python -m metrics.weights --json     # the same as JSON

Nothing is downloaded; each row says where to get a missing file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def weight_table(weights_dir: str | None = None, clip_model: str | None = None, clap_model: str | None = None
                 ) -> list[dict]:
    """Rows ``{metric, what, path, present, source}``."""
    from metrics.features.audio import audio_weight_paths
    from metrics.features.clap import DEFAULT_CLAP
    from metrics.features.clip import DEFAULT_CLIP
    from metrics.features.inception import inception_weight_paths
    from metrics.features.local import MissingWeightsError, resolve_hf_dir

    rows = []
    inception = inception_weight_paths(weights_dir)
    rows.append(dict(metric="fid/kid (clean, legacy_tensorflow)", what="Inception v3 TorchScript",
                     path=str(inception["clean"][0]), present=inception["clean"][0].is_file(),
                     source=inception["clean"][1]))
    rows.append(dict(metric="fid/kid (legacy_pytorch)", what="pytorch-fid Inception v3",
                     path=str(inception["legacy_pytorch"][0]), present=inception["legacy_pytorch"][0].is_file(),
                     source=inception["legacy_pytorch"][1]))
    for model, files in audio_weight_paths(weights_dir).items():
        for path, source in files:
            rows.append(dict(metric=f"fad ({model})", what=path.name, path=str(path), present=path.is_file(),
                             source=source))
    for metric, name, default in (("clip_score/clipsim/sim evaluator", clip_model, DEFAULT_CLIP),
                                  ("sim evaluator (audio)", clap_model, DEFAULT_CLAP)):
        name = name or default
        try:
            path, present = str(resolve_hf_dir(name, "model")), True
        except MissingWeightsError:
            path, present = f"Hugging Face cache or a folder ({name})", False
        rows.append(dict(metric=metric, what=name, path=path, present=present,
                         source=f"huggingface-cli download {name}"))
    rows.append(dict(metric="sim (codi)", what="CoDi_encoders.pth", path="<--checkpoint>/CoDi_encoders.pth",
                     present=None, source="the CoDi release (given per run with --checkpoint)"))
    try:
        import pycocoevalcap.spice

        from metrics.captions import spice_available

        ok, _ = spice_available()
        lib = Path(pycocoevalcap.spice.__file__).parent / "lib" / "stanford-corenlp-3.6.0.jar"
        rows.append(dict(metric="spice/spider", what="Stanford CoreNLP 3.6.0", path=str(lib), present=ok,
                         source="pycocoevalcap/spice/get_stanford_models.py (run with internet)"))
    except ImportError:
        pass
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metrics.weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", help="as in metrics.run (default $CODI_EVAL_WEIGHTS)")
    parser.add_argument("--clip-model")
    parser.add_argument("--clap-model")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = weight_table(args.weights_dir, args.clip_model, args.clap_model)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        status = {True: "ok", False: "MISSING", None: "per run"}[r["present"]]
        print(f"{status:8s} {r['metric']:34s} {r['what']}\n         at   {r['path']}\n         from {r['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
