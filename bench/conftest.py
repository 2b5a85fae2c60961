"""Benchmark plumbing: ``pytest bench/ --benchmark`` runs the benchmarks, ``pytest bench/`` skips them.

Options (registered here; pytest-benchmark's own ``--benchmark-*`` options still work)::

    --benchmark              run the benchmarks (without it every test in bench/ that uses the
                             ``benchmark`` fixture or carries the ``benchmark`` mark is skipped)
    --preset NAME            model preset: tiny | official | nano (default: official on a CUDA
                             device, tiny otherwise)
    --device DEV             torch device string (default cpu)
    --dtype NAME             float32 | bfloat16 | float16 (aliases fp32, bf16, fp16; default float32)
    --batch-sizes 1,4,16     comma-separated batch sizes to run (default 1,4,16)
    --steps N                sampler steps per timed run (default: each benchmark's own, 5 for the sampler)
    --compile                wrap the UNets in torch.compile
    --bench-report-dir DIR   where the run's outputs go (default reports/bench/)

Fixtures ``bench_settings`` (a dict of all the above, parsed) and ``preset``,
``device``, ``dtype``, ``batch_sizes``, ``steps``, ``compile_models`` expose
them; option values are strings as typed (``dtype`` a name such as
``"bfloat16"``), so the fixtures do not import torch.

Outputs of a ``--benchmark`` run, written when the session ends:

- ``<dir>/benchmark.json``: pytest-benchmark's JSON (``--benchmark-json PATH``
  puts it elsewhere; the tables are still written to ``<dir>``), moved into
  place atomically;
- ``<dir>/joint_vs_independent.md``: ``reports.bench_table`` rendering of that JSON;
- ``<dir>/throughput.png``: ``reports.plots`` throughput against batch size
  (when matplotlib is installed).

**The extra_info convention** (what ``reports.bench_table`` reads to pair and
render the benchmarks). A sampler benchmark sets, on ``benchmark.extra_info``:

    task            str    joint task, e.g. "text2video+audio", "text2image+text"
    mode            str    "joint" (one run denoising all outputs together) or "independent"
                           (each output alone, with its own UNet; numbers summed/combined over
                           the outputs); other modes (e.g. "release_structure") are listed apart
    batch_size      int    samples per run
    steps           int    sampler steps per run
    samples_per_s   float  batch_size / mean seconds per run (a sample = all of the task's outputs)
    s_per_step      float  mean seconds per run / steps
    peak_mem_bytes  int    CUDA peak allocation (reset before the benchmark) or, on CPU, the
                           process's peak resident set size
    flops_per_step  int    FLOPs of one guided step (all UNet evaluations of the step)
    mfu             float | None  flops_per_step / s_per_step / device peak FLOP/s; None when
                           the device's peak is unknown (e.g. CPU)
    device          str    device name (e.g. "cpu", "NVIDIA H100 80GB HBM3")
    dtype           str    "float32" | "bfloat16" | "float16"
    preset          str    the model preset

Joint and independent benchmarks are paired on (task, batch_size, steps,
preset, device, dtype): give both modes the same values. A metric
feature-extractor benchmark sets instead: ``extractor`` (e.g. "inception"),
``unit`` ("images", "audio_seconds" or "frames"), ``units_per_s``,
``batch_size``, ``device``, ``dtype``. Time with
``benchmark.pedantic(fn, rounds=..., warmup_rounds=1, iterations=1)`` and make
``fn`` synchronise the device before it returns (``torch.cuda.synchronize``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_REPORT_DIR = BENCH_DIR.parent / "reports" / "bench"
JSON_NAME, TABLE_NAME, PNG_NAME = "benchmark.json", "joint_vs_independent.md", "throughput.png"
PRESETS = ("tiny", "official", "nano")
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "half": "float16"}


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,4,16" -> [1, 4, 16]``; anything but positive integers raises ValueError naming the input."""
    try:
        sizes = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"--batch-sizes {text!r}: expected comma-separated positive integers, e.g. 1,4,16")
    return sizes


def pytest_addoption(parser):
    group = parser.getgroup("codi-bench", "CoDi benchmarks (bench/conftest.py)")
    group.addoption("--benchmark", action="store_true", default=False,
                    help="run the benchmarks in bench/ (skipped without it)")
    group.addoption("--preset", default=None, choices=PRESETS,
                    help="model preset (default: official on CUDA, tiny otherwise)")
    group.addoption("--device", default="cpu", help="torch device (default cpu)")
    group.addoption("--dtype", default="float32", choices=sorted(DTYPES), help="compute dtype (default float32)")
    group.addoption("--batch-sizes", default="1,4,16", help="comma-separated batch sizes (default 1,4,16)")
    group.addoption("--steps", type=int, default=None, help="sampler steps per timed run")
    group.addoption("--compile", action="store_true", default=False, help="torch.compile the UNets")
    group.addoption("--bench-report-dir", default=str(DEFAULT_REPORT_DIR),
                    help="folder for benchmark.json and the rendered table (default reports/bench/)")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's configure reads --benchmark-json
def pytest_configure(config):
    opt = config.option
    opt.dtype = DTYPES[opt.dtype]
    if opt.preset is None:
        opt.preset = "official" if str(opt.device).startswith("cuda") else "tiny"
    try:
        parse_batch_sizes(opt.batch_sizes)
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None
    if opt.steps is not None and opt.steps < 1:
        raise pytest.UsageError(f"--steps {opt.steps}: must be at least 1")
    config._codi_bench = {"json": None, "partial": None, "messages": []}
    if not opt.benchmark or not hasattr(opt, "benchmark_json"):
        return
    report_dir = Path(opt.bench_report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    if opt.benchmark_json:  # a path (pytest-benchmark >= 5.3) or a file it opened "wb"
        given = opt.benchmark_json
        config._codi_bench["json"] = Path(given.name if hasattr(given, "write") else given)
    else:  # pytest-benchmark writes in place; write beside the target and rename when the session ends
        partial = report_dir / f".{JSON_NAME}.{os.getpid()}.partial"
        # as pytest-benchmark parses it: a path from 5.3 on, a file opened "wb" before
        opt.benchmark_json = config._parser.parse_known_args([f"--benchmark-json={partial}"]).benchmark_json
        config._codi_bench.update(json=report_dir / JSON_NAME, partial=partial)


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark"):
        return
    skip = pytest.mark.skip(reason="benchmark: run with `pytest bench/ --benchmark`")
    for item in items:
        in_bench = Path(str(item.path)).resolve().is_relative_to(BENCH_DIR)
        if in_bench and ("benchmark" in getattr(item, "fixturenames", ()) or item.get_closest_marker("benchmark")):
            item.add_marker(skip)


def _bench_settings(config) -> dict:
    opt = config.option
    return {"preset": opt.preset, "device": opt.device, "dtype": opt.dtype,
            "batch_sizes": parse_batch_sizes(opt.batch_sizes), "steps": opt.steps, "compile": opt.compile}


@pytest.fixture(scope="session")
def bench_settings(pytestconfig) -> dict:
    """``{"preset", "device", "dtype", "batch_sizes", "steps", "compile"}`` from the command line."""
    return _bench_settings(pytestconfig)


@pytest.fixture(scope="session")
def preset(bench_settings) -> str:
    return bench_settings["preset"]


@pytest.fixture(scope="session")
def device(bench_settings) -> str:
    return bench_settings["device"]


@pytest.fixture(scope="session")
def dtype(bench_settings) -> str:
    return bench_settings["dtype"]


@pytest.fixture(scope="session")
def batch_sizes(bench_settings) -> list[int]:
    return bench_settings["batch_sizes"]


@pytest.fixture(scope="session")
def steps(bench_settings) -> int | None:
    return bench_settings["steps"]


@pytest.fixture(scope="session")
def compile_models(bench_settings) -> bool:
    return bench_settings["compile"]


def _import_reports():
    try:
        import reports.bench_table  # noqa: F401
    except ImportError:  # not installed: use the checkout this conftest belongs to
        sys.path.insert(0, str(BENCH_DIR.parent))
    from reports import bench_table, load
    return bench_table, load


def pytest_sessionfinish(session, exitstatus):
    """After pytest-benchmark wrote its JSON: move it into place, render the table and the plot."""
    state = getattr(session.config, "_codi_bench", None)
    if not state or not state["json"]:
        return
    messages = state["messages"]
    partial, target = state["partial"], state["json"]
    if partial is not None:
        if not partial.exists() or partial.stat().st_size == 0:  # before 5.3 the file is opened at start
            partial.unlink(missing_ok=True)
            messages.append("no benchmark ran: nothing written")
            return
        os.replace(partial, target)
    elif not target.exists():
        messages.append(f"no benchmark JSON at {target}: nothing rendered")
        return
    messages.append(f"benchmark JSON: {target}")
    report_dir = Path(session.config.option.bench_report_dir)
    bench_table, load = _import_reports()
    try:
        doc = load.load_json(target)
        table = load.atomic_write_text(report_dir / TABLE_NAME, bench_table.render_markdown(doc, str(target)))
        messages.append(f"joint/independent table: {table}")
    except load.ReportError as err:
        messages.append(f"ERROR rendering the benchmark table: {err}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    try:
        from reports import plots
        png = plots.write_throughput_png(doc, report_dir / PNG_NAME, str(target))
        messages.append(f"throughput plot: {png}")
    except load.ReportError as err:  # no joint/independent data, or no matplotlib
        messages.append(f"no throughput plot: {err}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = getattr(config, "_codi_bench", None)
    if state and state["messages"]:
        terminalreporter.section("CoDi benchmark reports")
        for line in state["messages"]:
            terminalreporter.write_line(line)
