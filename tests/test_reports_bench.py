"""reports.bench_table and reports.plots on a synthetic pytest-benchmark JSON, and the
bench/conftest.py plumbing (--benchmark, options, outputs) run in a scratch project."""
from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from reports import bench_table, plots
from reports.load import ReportError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "reports"
SYNTHETIC = FIXTURES / "bench_synthetic.json"


def synthetic() -> dict:
    return json.loads(SYNTHETIC.read_text())


def test_bench_table_matches_golden():
    text = bench_table.render_markdown(synthetic(), "bench_synthetic.json")
    golden = FIXTURES / "golden" / "bench_table.md"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_ratios_pair_joint_with_independent():
    frame = bench_table.ratio_frame(bench_table.sampler_records(synthetic()))
    assert len(frame) == 4  # 2 tasks x 2 batch sizes; release_structure is not paired
    row = frame[(frame.task == "text2video+audio") & (frame.batch_size == 4)].iloc[0]
    assert row.speedup == pytest.approx((4 / 1.6) / (4 / 2.0))  # joint samples/s / independent samples/s
    assert row.flops_ratio == pytest.approx(0.8) and row.mem_ratio == pytest.approx(1.2)
    text = bench_table.render_markdown(synthetic())
    assert "| text2video+audio | release_structure | 1 | 1.11 |" in text
    assert "| inception | images | 64 | 256 | cpu | float32 |" in text
    assert "MFU" not in text  # no device peak known: the empty columns are dropped


def test_unpaired_and_duplicated_benchmarks():
    doc = synthetic()
    doc["benchmarks"] = [b for b in doc["benchmarks"] if b["extra_info"].get("mode") != "independent"]
    frame = bench_table.ratio_frame(bench_table.sampler_records(doc))
    assert frame["independent_samples_per_s"].isna().all() and frame["speedup"].isna().all()
    doc = synthetic()
    doc["benchmarks"].append(copy.deepcopy(doc["benchmarks"][0]))
    with pytest.raises(ReportError, match="two joint benchmarks for"):
        bench_table.render_markdown(doc)


def test_convention_violations_are_named():
    doc = synthetic()
    del doc["benchmarks"][0]["extra_info"]["s_per_step"]
    del doc["benchmarks"][0]["extra_info"]["mfu"]
    with pytest.raises(ReportError, match=r"test_joint_vs_independent\[text2video\+audio-joint-1\] .* lacks s_per_step, mfu"):
        bench_table.render_markdown(doc, "b.json")
    with pytest.raises(ReportError, match="expected a pytest-benchmark JSON, got a results JSON"):
        bench_table.render_markdown(json.loads((FIXTURES / "t2i_codi.json").read_text()))
    assert bench_table.main([str(FIXTURES / "absent.json")]) == 2


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_throughput_plot_is_a_png_with_one_panel_per_task(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "t.png"
    assert plots.main([str(SYNTHETIC), "--out", str(out)]) == 0
    width, height = png_size(out.read_bytes())
    assert (width, height) == (1200, 432)  # 2 panels side by side, 10 x 3.6 inches at 120 dpi
    doc = synthetic()
    doc["benchmarks"] = [b for b in doc["benchmarks"] if b["extra_info"].get("task") != "text2image+text"]
    assert png_size(plots.throughput_png(doc))[0] == 600  # one task, one panel
    doc["benchmarks"] = [b for b in doc["benchmarks"] if "extractor" in b["extra_info"]]
    with pytest.raises(ReportError, match="no joint/independent sampler benchmarks to plot"):
        plots.throughput_png(doc)


FAKE_BENCH = '''
import pytest

@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("mode", ["joint", "independent"])
def test_fake(benchmark, bench_settings, mode, batch):
    if batch not in bench_settings["batch_sizes"]:
        pytest.skip("batch size not selected")
    benchmark.pedantic(lambda: sum(range(100)), rounds=2, warmup_rounds=1, iterations=1)
    seconds = 0.5 if mode == "joint" else 1.0
    benchmark.extra_info.update({
        "task": "text2video+audio", "mode": mode, "batch_size": batch, "steps": 5,
        "samples_per_s": batch / seconds, "s_per_step": seconds / 5, "peak_mem_bytes": 2**20,
        "flops_per_step": 1e9, "mfu": None, "device": bench_settings["device"],
        "dtype": bench_settings["dtype"], "preset": bench_settings["preset"]})

def test_plain():
    assert True
'''


@pytest.fixture()
def scratch(tmp_path):
    """A scratch project: bench/ holding this repository's conftest.py and a fast fake benchmark."""
    (tmp_path / "bench").mkdir()
    shutil.copy(ROOT / "bench" / "conftest.py", tmp_path / "bench" / "conftest.py")
    (tmp_path / "bench" / "test_fake.py").write_text(FAKE_BENCH)
    return tmp_path


def run_pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "bench", "-p", "no:cacheprovider", "-q", "-rs", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_without_flag_benchmarks_skip_and_nothing_is_written(scratch):
    proc = run_pytest(scratch, "--bench-report-dir", str(scratch / "out"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 4 skipped" in proc.stdout
    assert "run with `pytest bench/ --benchmark`" in proc.stdout
    assert not (scratch / "out").exists()


def test_with_flag_json_table_and_plot_are_written(scratch):
    out = scratch / "out"
    proc = run_pytest(scratch, "--benchmark", "--batch-sizes", "1,4", "--dtype", "bf16", "--bench-report-dir", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 passed" in proc.stdout and "CoDi benchmark reports" in proc.stdout
    doc = json.loads((out / "benchmark.json").read_text())
    infos = [b["extra_info"] for b in doc["benchmarks"]]
    assert len(infos) == 4 and {i["dtype"] for i in infos} == {"bfloat16"} and {i["preset"] for i in infos} == {"tiny"}
    table = (out / "joint_vs_independent.md").read_text()
    assert "| text2video+audio | 1 | 2 | 1 | 2.00 |" in table  # speed-up 2.00 at batch 1
    assert (out / "throughput.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*partial"))  # the partial JSON was moved into place


def test_options_select_and_validate(scratch):
    out = scratch / "out"
    proc = run_pytest(scratch, "--benchmark", "--batch-sizes", "4", "--bench-report-dir", str(out))
    assert proc.returncode == 0 and "3 passed, 2 skipped" in proc.stdout, proc.stdout + proc.stderr
    proc = run_pytest(scratch, "--benchmark", "--batch-sizes", "1,x")
    assert proc.returncode == 4 and "--batch-sizes '1,x': expected comma-separated positive integers" in proc.stderr
    proc = run_pytest(scratch, "--benchmark", "--dtype", "int8")
    assert proc.returncode == 4 and "invalid choice: 'int8'" in proc.stderr


def test_explicit_benchmark_json_path_is_used(scratch):
    out, custom = scratch / "out", scratch / "elsewhere" / "b.json"
    custom.parent.mkdir()
    proc = run_pytest(scratch, "--benchmark", "--batch-sizes", "1", "--benchmark-json", str(custom),
                      "--bench-report-dir", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(json.loads(custom.read_text())["benchmarks"]) == 2
    assert not (out / "benchmark.json").exists()
    assert f"Source: `{custom}`" in (out / "joint_vs_independent.md").read_text()
