"""Captioning metrics from one pass of pycocoevalcap (the COCO caption evaluation code).

All metrics see the same captions, tokenised once by the PTB tokenizer
(Stanford CoreNLP 3.4.1 through Java, lower-cased, punctuation removed):

- ``cider``: CIDEr-D (Vedantam et al. 2015, the coco-caption variant: n = 1..4,
  Gaussian length penalty sigma = 6, clipped counts, x10), document frequencies
  taken from the *evaluated* references, so the number depends on the whole
  set (``update`` only collects; ``compute`` scores the set at once).

All values are on pycocoevalcap's native scale (CIDEr-D around 1, the others in
[0, 1]); papers that print x100 (CoDi's COCO table) are converted by ``reports``.
- ``bleu4``: corpus BLEU-4 (closest reference length).
- ``meteor``: METEOR 1.5 (Java, ~11 s to start), corpus score.
- ``rouge_l``: ROUGE-L F (beta 1.2), mean over samples.
- ``spice``: SPICE 1.0, only where Stanford CoreNLP 3.6.0 is in pycocoevalcap's
  ``spice/lib`` (it is downloaded there on first use with internet); otherwise
  skipped with a message. ``spider`` = (CIDEr-D + SPICE) / 2 (Liu et al. 2017).

``stderr`` is the standard error of the per-sample scores for the metrics
whose corpus value is their mean (CIDEr-D, ROUGE-L, SPICE); None for BLEU and
METEOR, whose corpus values are not means of per-sample values.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from metrics.base import MetricValue, mean_and_stderr

__all__ = ["CAPTION_METRICS", "CaptionMetrics", "ptb_tokenize", "score_captions", "spice_available",
           "MetricUnavailable"]

CAPTION_METRICS = ("cider", "bleu4", "meteor", "rouge_l", "spice", "spider")


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed on this machine (missing Java or jar); the message says why."""


def _require_java() -> None:
    if shutil.which("java") is None:
        raise MetricUnavailable("the PTB tokenizer and METEOR need Java: install a JRE "
                                "(Debian: apt-get install default-jre-headless)")


def spice_available() -> tuple[bool, str]:
    import pycocoevalcap.spice  # pycocoevalcap itself is a namespace package (no __file__)

    lib = Path(pycocoevalcap.spice.__file__).parent / "lib"
    needed = ["stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"]
    missing = [n for n in needed if not (lib / n).is_file()]
    if missing:
        return False, (f"SPICE skipped: {', '.join(missing)} not in {lib} (SPICE downloads Stanford CoreNLP 3.6.0 "
                       f"there on first use with internet; run pycocoevalcap/spice/get_stanford_models.py)")
    if shutil.which("java") is None:
        return False, "SPICE skipped: no Java"
    return True, ""


def ptb_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """``{id: [caption, ...]}`` -> the same ids with PTB-tokenised captions (Java)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    _require_java()
    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def score_captions(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                   metrics: Iterable[str] = ("cider", "bleu4", "meteor", "rouge_l"), *, tokenize: bool = True
                   ) -> dict[str, tuple[float, list[float] | None]]:
    """Corpus value and per-sample scores of each metric. ``predictions``: ``{id: caption}``;
    ``references``: ``{id: [caption, ...]}`` with the same ids."""
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in CAPTION_METRICS]
    if unknown:
        raise KeyError(f"unknown caption metric(s) {', '.join(unknown)}; valid: {', '.join(CAPTION_METRICS)}")
    if set(predictions) != set(references):
        extra, missing = set(predictions) - set(references), set(references) - set(predictions)
        raise ValueError(f"predictions and references have different ids (only in predictions: {sorted(extra)[:5]}; "
                         f"only in references: {sorted(missing)[:5]})")
    if not predictions:
        raise ValueError("no captions to score")
    for key, refs in references.items():
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references of {key!r} must be a non-empty list of strings")
    if tokenize:  # one Java call for predictions and references
        merged = {**{f"p|{k}": [v] for k, v in predictions.items()}, **{f"r|{k}": list(v) for k, v in references.items()}}
        tokens = ptb_tokenize(merged)
        res = {k: tokens[f"p|{k}"] for k in predictions}
        gts = {k: tokens[f"r|{k}"] for k in references}
    else:
        res, gts = {k: [v] for k, v in predictions.items()}, {k: list(v) for k, v in references.items()}
    out: dict[str, tuple[float, list[float] | None]] = {}
    if "cider" in metrics or "spider" in metrics:
        from pycocoevalcap.cider.cider import Cider

        value, per = Cider().compute_score(gts, res)
        out["cider"] = (float(value), [float(x) for x in per])
    if "bleu4" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu

        values, per = Bleu(4).compute_score(gts, res, verbose=0)
        out["bleu4"] = (float(values[3]), [float(x) for x in per[3]])
    if "meteor" in metrics:
        from pycocoevalcap.meteor.meteor import Meteor

        _require_java()
        scorer = Meteor()
        try:
            value, per = scorer.compute_score(gts, res)
        finally:
            _close_meteor(scorer)
        out["meteor"] = (float(value), [float(x) for x in per])
    if "rouge_l" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        value, per = Rouge().compute_score(gts, res)
        out["rouge_l"] = (float(value), [float(x) for x in per])
    if "spice" in metrics or "spider" in metrics:
        ok, why = spice_available()
        if not ok:
            raise MetricUnavailable(why)
        from pycocoevalcap.spice.spice import Spice

        value, per = Spice().compute_score(gts, res)
        out["spice"] = (float(value), [float(x["All"]["f"]) for x in per])
    if "spider" in metrics:
        c, s = out["cider"][1], out["spice"][1]
        out["spider"] = ((out["cider"][0] + out["spice"][0]) / 2, [(a + b) / 2 for a, b in zip(c, s)])
    return {m: out[m] for m in metrics}


def _close_meteor(scorer) -> None:
    proc = getattr(scorer, "meteor_p", None)
    if proc is not None and proc.poll() is None:
        try:
            proc.stdin.close()
            proc.kill()
            proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            pass


_MEAN_METRICS = {"cider", "rouge_l", "spice", "spider"}


class CaptionMetrics:
    """Collect ``(id, prediction, references)`` with ``update``; ``compute`` scores the whole set in one pass
    and returns ``{metric name: MetricValue}`` (higher is better for all)."""

    higher_is_better = True

    def __init__(self, metrics: Iterable[str] = ("cider", "bleu4", "meteor", "rouge_l")):
        self.metrics = list(dict.fromkeys(metrics))
        unknown = [m for m in self.metrics if m not in CAPTION_METRICS]
        if unknown:
            raise KeyError(f"unknown caption metric(s) {', '.join(unknown)}; valid: {', '.join(CAPTION_METRICS)}")
        self.reset()

    def reset(self) -> None:
        self.predictions: dict[str, str] = {}
        self.references: dict[str, list[str]] = {}

    def update(self, ids: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        if not (len(ids) == len(predictions) == len(references)):
            raise ValueError(f"{len(ids)} ids, {len(predictions)} predictions and {len(references)} reference lists")
        for key, pred, refs in zip(ids, predictions, references):
            key = str(key)
            if key in self.predictions:
                raise ValueError(f"sample id {key!r} was already scored")
            if not isinstance(pred, str):
                raise TypeError(f"prediction of {key!r} must be a str, got {type(pred).__name__}")
            self.predictions[key] = pred
            self.references[key] = list(refs)

    def compute(self, skipped: dict[str, str] | None = None) -> dict[str, MetricValue]:
        """Scores; metrics that cannot run here (SPICE without CoreNLP) are left out and, when ``skipped`` is
        given, recorded there as ``{name: reason}``."""
        wanted = list(self.metrics)
        out: dict[str, MetricValue] = {}
        if any(m in wanted for m in ("spice", "spider")):
            ok, why = spice_available()
            if not ok:
                for m in ("spice", "spider"):
                    if m in wanted:
                        wanted.remove(m)
                        if skipped is not None:
                            skipped[m] = why
        if not wanted:
            return out
        scores = score_captions(self.predictions, self.references, wanted)
        n = len(self.predictions)
        for name, (value, per) in scores.items():
            stderr = mean_and_stderr(per)[1] if name in _MEAN_METRICS and per else None
            out[name] = MetricValue(value, stderr, n, True)
        return out
