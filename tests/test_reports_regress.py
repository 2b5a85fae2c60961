"""reports.regress: the gate fails on a made-up regression and passes on an improvement, for both
directions of metric, with absolute and relative tolerances; bad or mismatched input exits 2."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from reports import regress
from reports.load import ReportError

FIXTURES = Path(__file__).parent / "fixtures" / "reports"
BASE = FIXTURES / "t2i_codi.json"  # fid 11.8431 (lower is better), clip_score 30.1254 (higher is better)


def candidate(tmp_path, name="cand.json", *, fid=None, clip_score=None, edit=None, src=BASE) -> Path:
    doc = json.loads(src.read_text())
    metrics = doc["metrics"].get("default", {})
    if fid is not None:
        metrics["fid"]["value"] = fid
    if clip_score is not None:
        metrics["clip_score"]["value"] = clip_score
    if edit:
        edit(doc)
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def gate(capsys, *args) -> tuple[int, str, str]:
    rc = regress.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def status(out: str, key: str) -> str:
    line = next(line for line in out.splitlines() if line.startswith(f"| {key} |"))
    return line.split(" | ")[1]


@pytest.mark.parametrize("fid,clip,expect_rc,expect", [
    (12.3, None, 1, {"fid": "regressed"}),       # lower-is-better went up
    (11.2, None, 0, {"fid": "improved"}),        # lower-is-better went down
    (None, 29.0, 1, {"clip_score": "regressed"}),  # higher-is-better went down
    (None, 31.5, 0, {"clip_score": "improved"}),   # higher-is-better went up
    (None, None, 0, {"fid": "held", "clip_score": "held"}),
])
def test_gate_is_direction_aware(tmp_path, capsys, fid, clip, expect_rc, expect):
    rc, out, err = gate(capsys, "--baseline", BASE, "--candidate", candidate(tmp_path, fid=fid, clip_score=clip))
    assert rc == expect_rc
    for metric, s in expect.items():
        assert status(out, f"text2image/default/{metric}") == s
    assert ("FAILED" in err) == (expect_rc == 1)


@pytest.mark.parametrize("tolerance,expect_rc", [
    ("fid=0.5", 0),    # +0.4569 within 0.5
    ("fid=0.4", 1),    # beyond 0.4
    ("fid=5%", 0),     # 5% of 11.8431 = 0.592
    ("fid=3%", 1),     # 3% = 0.355
])
def test_absolute_and_relative_tolerance_on_lower_is_better(tmp_path, capsys, tolerance, expect_rc):
    rc, out, _ = gate(capsys, "--baseline", BASE, "--candidate", candidate(tmp_path, fid=12.3), "--tolerance", tolerance)
    assert rc == expect_rc
    assert status(out, "text2image/default/fid") == ("held" if expect_rc == 0 else "regressed")


@pytest.mark.parametrize("tolerance,expect", [
    ("clip_score=1.5", "held"), ("clip_score=1", "regressed"),
    ("clip_score=4%", "held"), ("clip_score=3%", "regressed"),  # 4%: 1.205 > 1.1254 > 0.904 (3%)
])
def test_absolute_and_relative_tolerance_on_higher_is_better(tmp_path, capsys, tolerance, expect):
    rc, out, _ = gate(capsys, "--baseline", BASE, "--candidate", candidate(tmp_path, clip_score=29.0),
                      "--tolerance", tolerance)
    assert status(out, "text2image/default/clip_score") == expect
    assert rc == (0 if expect == "held" else 1)


def test_a_change_within_tolerance_in_the_good_direction_is_held_not_improved(tmp_path, capsys):
    rc, out, _ = gate(capsys, "--baseline", BASE, "--candidate", candidate(tmp_path, fid=11.5), "--tolerance", "fid=0.5")
    assert rc == 0 and status(out, "text2image/default/fid") == "held"


def test_config_file_then_options_last_rule_wins(tmp_path, capsys):
    config = tmp_path / "tol.yaml"
    config.write_text("default: 0.01\ntolerances:\n  fid: 1.0\n  'text2image/*/clip_score': 2%\n")
    cand = candidate(tmp_path, fid=12.3, clip_score=29.9)
    rc, out, _ = gate(capsys, "--baseline", BASE, "--candidate", cand, "--config", config)
    assert rc == 0 and "| 1 | " not in out
    assert "| 1 |" in out and "| 2% |" in out
    rc, out, _ = gate(capsys, "--baseline", BASE, "--candidate", cand, "--config", config, "--tolerance", "fid=0.1")
    assert rc == 1 and status(out, "text2image/default/fid") == "regressed"
    assert regress.tolerance_for("a/b/fid", [("fid", regress.Tolerance(1)), ("a/*", regress.Tolerance(2))],
                                 regress.Tolerance(0)) == regress.Tolerance(2)
    assert regress.tolerance_for("a/b/kid", [("fid", regress.Tolerance(1))], regress.Tolerance(0.5)).amount == 0.5


def test_default_tolerance_option(tmp_path, capsys):
    cand = candidate(tmp_path, fid=11.9)
    assert gate(capsys, "--baseline", BASE, "--candidate", cand)[0] == 1
    assert gate(capsys, "--baseline", BASE, "--candidate", cand, "--default-tolerance", "1%")[0] == 0


def test_missing_new_and_nan(tmp_path, capsys):
    cand = candidate(tmp_path, edit=lambda d: d["metrics"]["default"].pop("clip_score"))
    rc, out, _ = gate(capsys, "--baseline", BASE, "--candidate", cand)
    assert rc == 1 and status(out, "text2image/default/clip_score") == "missing"
    assert gate(capsys, "--baseline", BASE, "--candidate", cand, "--allow-missing")[0] == 0
    rc, out, _ = gate(capsys, "--baseline", cand, "--candidate", BASE)
    assert rc == 0 and status(out, "text2image/default/clip_score") == "new"
    nan = candidate(tmp_path, "nan.json", edit=lambda d: d["metrics"]["default"]["fid"].update(value=None))
    rc, out, _ = gate(capsys, "--baseline", BASE, "--candidate", nan, "--tolerance", "fid=100")
    assert rc == 1 and status(out, "text2image/default/fid") == "regressed"


def test_refuses_incomparable_settings_unless_allowed(tmp_path, capsys):
    cand = candidate(tmp_path, fid=11.0, edit=lambda d: d["settings"].update(num_samples=5000))
    rc, _, err = gate(capsys, "--baseline", BASE, "--candidate", cand)
    assert rc == 2 and "settings.num_samples is 30000 in the baseline but 5000 in the candidate" in err
    assert gate(capsys, "--baseline", BASE, "--candidate", cand, "--allow-settings-mismatch")[0] == 0
    reworded = candidate(tmp_path, "reworded.json", edit=lambda d: d["task_config"].update(description="new words"))
    assert gate(capsys, "--baseline", BASE, "--candidate", reworded)[0] == 0
    nano = candidate(tmp_path, "nano.json", edit=lambda d: d["task_config"].update(feature_space="nano"))
    rc, _, err = gate(capsys, "--baseline", BASE, "--candidate", nano)
    assert rc == 2 and "task_config" in err


def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys):
    flipped = candidate(tmp_path, edit=lambda d: d["metrics"]["default"]["fid"].update(higher_is_better=True))
    rc, _, err = gate(capsys, "--baseline", BASE, "--candidate", flipped)
    assert rc == 2 and "text2image/default/fid: higher_is_better is False" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    rc, _, err = gate(capsys, "--baseline", BASE, "--candidate", broken)
    assert rc == 2 and "broken.json: not valid JSON" in err
    rc, _, err = gate(capsys, "--baseline", BASE, "--candidate", tmp_path / "absent.json")
    assert rc == 2 and "no such file or folder" in err
    rc, _, err = gate(capsys, "--baseline", BASE, "--candidate", FIXTURES / "i2t_codi.json")
    assert rc == 2 and "share no quantity" in err
    for bad in ("fid", "fid=-1", "fid=abc", "fid=5%%", "=1"):
        rc, _, err = gate(capsys, "--baseline", BASE, "--candidate", BASE, "--tolerance", bad)
        assert rc == 2 and repr(bad) in err
    config = tmp_path / "tol.yaml"
    config.write_text("tolerance:\n  fid: 1\n")
    rc, _, err = gate(capsys, "--baseline", BASE, "--candidate", BASE, "--config", config)
    assert rc == 2 and "expected only the keys 'default' and 'tolerances'" in err


def test_folders_and_the_example_baseline(tmp_path, capsys):
    example = Path(regress.__file__).parent / "baselines" / "example"
    cand_dir = tmp_path / "cand"
    cand_dir.mkdir()
    candidate(cand_dir, "text2image.json", fid=11.0, src=example / "text2image.json")
    candidate(cand_dir, "text2video+audio.json", src=example / "text2video+audio.json",
              edit=lambda d: d["metrics"]["joint"]["sim_video_audio"].update(value=0.15))
    config = Path(regress.__file__).parent / "baselines" / "tolerances.yaml"
    rc, out, _ = gate(capsys, "--baseline", example, "--candidate", cand_dir, "--config", config,
                      "--out", tmp_path / "regress.md")
    assert rc == 1
    assert status(out, "text2video+audio/joint/sim_video_audio") == "regressed"  # 0.184 -> 0.15, tol 0.005
    assert status(out, "text2image/default/fid") == "improved"
    assert (tmp_path / "regress.md").read_text() == out
    assert out.strip().endswith("1 regressed, 1 improved, 6 held")


def bench_doc(scale_time=1.0, samples=None):
    doc = json.loads((FIXTURES / "bench_synthetic.json").read_text())
    for b in doc["benchmarks"]:
        b["stats"]["mean"] *= scale_time
        if samples is not None and "samples_per_s" in b["extra_info"]:
            b["extra_info"]["samples_per_s"] *= samples
    return doc


def test_benchmark_json_slower_fails_faster_passes(tmp_path, capsys):
    base, slow, fast = tmp_path / "base.json", tmp_path / "slow.json", tmp_path / "fast.json"
    base.write_text(json.dumps(bench_doc()))
    slow.write_text(json.dumps(bench_doc(scale_time=1.2, samples=1 / 1.2)))
    fast.write_text(json.dumps(bench_doc(scale_time=0.8, samples=1.25)))
    key = "bench/bench/test_sampler.py::test_joint_vs_independent[text2video+audio-joint-1]"
    rc, out, _ = gate(capsys, "--baseline", base, "--candidate", slow, "--tolerance", "bench/*=10%")
    assert rc == 1
    assert status(out, f"{key}/mean_s") == "regressed"          # lower is better, +20%
    assert status(out, f"{key}/samples_per_s") == "regressed"   # higher is better, -17%
    assert status(out, f"{key}/peak_mem_bytes") == "held"
    rc, out, _ = gate(capsys, "--baseline", base, "--candidate", fast, "--tolerance", "bench/*=10%")
    assert rc == 0
    assert status(out, f"{key}/mean_s") == "improved" and status(out, f"{key}/samples_per_s") == "improved"
    rc, _, err = gate(capsys, "--baseline", base, "--candidate", slow, "--tolerance", "bench/*=25%")
    assert rc == 0 and "different machines" not in err
    other = bench_doc()
    other["machine_info"]["cpu"]["brand_raw"] = "Another CPU"
    slow.write_text(json.dumps(other))
    rc, _, err = gate(capsys, "--baseline", base, "--candidate", slow)
    assert rc == 0 and "warning: the benchmarks ran on different machines" in err


def test_compare_is_a_pure_function():
    q = lambda v, hib=False: regress.Quantity("t/m/x", v, hib, "f")  # noqa: E731
    rows = regress.compare({"t/m/x": q(1.0)}, {"t/m/x": q(0.5)})
    assert rows[0].status == "improved" and rows[0].delta == -0.5
    assert regress.compare({"t/m/x": q(math.nan)}, {"t/m/x": q(1.0)})[0].status == "new"
    with pytest.raises(ReportError, match="higher_is_better is False in f but True in f"):
        regress.compare({"t/m/x": q(1.0)}, {"t/m/x": q(1.0, True)})
