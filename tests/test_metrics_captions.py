"""Caption metrics: equal to pycocoevalcap called directly, batch accumulation, SPICE skipping, errors."""
from __future__ import annotations

import shutil

import pytest

from metrics.captions import CaptionMetrics, MetricUnavailable, score_captions, spice_available

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs Java")

REFS = {
    "1": ["A man is riding a horse on the beach.", "A person rides a brown horse near the sea.",
          "Someone on horseback by the ocean."],
    "2": ["Two dogs play with a red ball in the grass.", "Dogs chasing a ball on a lawn."],
    "3": ["A plate of pasta with tomato sauce.", "Spaghetti covered in red sauce on a white plate."],
    "4": ["A train arrives at a busy station.", "People waiting as a train pulls into the platform."],
    "5": ["A cat sleeps on a sofa.", "A grey cat is sleeping on the couch."],
}
PREDS = {"1": "a man riding a horse on the beach", "2": "two dogs playing with a ball on the grass",
         "3": "a plate of spaghetti with sauce", "4": "a train at the station", "5": "a dog on a bed"}


def _reference_scores():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in PREDS.items()})
    cider, cider_per = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    return {"cider": cider, "bleu4": bleu[3], "rouge_l": rouge, "cider_per": cider_per}


def test_caption_metrics_equal_pycocoevalcap_and_accumulate_in_batches():
    expected = _reference_scores()
    metric = CaptionMetrics(["cider", "bleu4", "rouge_l"])
    ids = list(REFS)
    for start in (0, 2, 3):  # batches of 2, 1, 2
        stop = {0: 2, 2: 3, 3: 5}[start]
        chunk = ids[start:stop]
        metric.update(chunk, [PREDS[k] for k in chunk], [REFS[k] for k in chunk])
    values = metric.compute()
    assert set(values) == {"cider", "bleu4", "rouge_l"}
    for name in ("cider", "bleu4", "rouge_l"):
        assert values[name].value == pytest.approx(expected[name], rel=1e-6, abs=1e-12)
        assert values[name].n == 5 and values[name].higher_is_better
    assert values["cider"].value > 0.3  # several good captions: not the single-image zero of CIDEr-D
    assert values["cider"].stderr is not None and values["bleu4"].stderr is None

    one_shot = score_captions(PREDS, REFS, ["cider"])
    assert one_shot["cider"][0] == pytest.approx(values["cider"].value, rel=1e-12)
    assert one_shot["cider"][1] == pytest.approx(list(expected["cider_per"]), rel=1e-9)


def test_perfect_captions_score_higher_than_wrong_ones():
    good = score_captions({k: v[0] for k, v in REFS.items()}, REFS, ["bleu4", "cider"])
    bad = score_captions({k: "a green tree" for k in REFS}, REFS, ["bleu4", "cider"])
    assert good["bleu4"][0] > 0.8 and bad["bleu4"][0] < 0.01
    assert good["cider"][0] > 5 * max(bad["cider"][0], 0.01)


def test_meteor_runs_once_offline():
    """METEOR's JVM takes ~11 s to start: one run, checked for range and ordering."""
    value, per = score_captions(PREDS, REFS, ["meteor"])["meteor"]
    assert 0.1 < value < 1 and len(per) == 5
    assert per[0] > per[4]  # "a man riding a horse on the beach" beats "a dog on a bed" for a sleeping cat


def test_spice_is_skipped_with_a_message_when_corenlp_is_missing():
    ok, why = spice_available()
    metric = CaptionMetrics(["cider", "spice", "spider"])
    metric.update(list(PREDS), list(PREDS.values()), [REFS[k] for k in PREDS])
    skipped: dict[str, str] = {}
    values = metric.compute(skipped)
    if ok:
        assert {"spice", "spider"} <= set(values)
        assert values["spider"].value == pytest.approx((values["cider"].value + values["spice"].value) / 2)
    else:
        assert set(values) == {"cider"} and set(skipped) == {"spice", "spider"}
        assert "stanford-corenlp-3.6.0" in skipped["spice"]
        with pytest.raises(MetricUnavailable, match="SPICE skipped"):
            score_captions(PREDS, REFS, ["spice"])


def test_bad_caption_input_is_an_error():
    with pytest.raises(KeyError, match="valid: cider, bleu4, meteor, rouge_l, spice, spider"):
        CaptionMetrics(["cidr"])
    with pytest.raises(ValueError, match="different ids"):
        score_captions({"1": "x"}, {"2": ["y"]})
    with pytest.raises(ValueError, match="non-empty list"):
        score_captions({"1": "x"}, {"1": []})
    metric = CaptionMetrics(["cider"])
    metric.update(["1"], ["x"], [["y"]])
    with pytest.raises(ValueError, match="already scored"):
        metric.update(["1"], ["x"], [["y"]])
    with pytest.raises(ValueError, match="1 ids, 2 predictions"):
        metric.update(["2"], ["x", "y"], [["y"]])
