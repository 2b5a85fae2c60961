"""Benchmark tables: pytest-benchmark JSON -> Markdown table of joint/independent ratios.

    python -m reports.bench_table reports/bench/benchmark.json [--out reports/bench/joint_vs_independent.md]

Reads the ``extra_info`` convention of ``bench/conftest.py``. Sampler
benchmarks (``extra_info`` with ``task`` and ``mode``) with modes ``joint`` and
``independent`` are paired on (task, batch size, steps, preset, device, dtype);
each pair gives one row:

- speed-up = joint samples/s ÷ independent samples/s (> 1: joint generation of
  all outputs is faster than generating each output alone with its own UNet);
- FLOPs ratio = joint FLOPs per step ÷ independent FLOPs per step (summed over
  the independent runs);
- memory ratio = joint peak memory ÷ independent peak memory.

Sampler benchmarks in other modes (e.g. ``codi`` against ``release_structure``)
and extractor benchmarks (``extra_info`` with ``extractor``) get their own
tables. A benchmark that names a ``task`` and ``mode`` but lacks a required key
is an error naming the benchmark and the keys.
"""
from __future__ import annotations

import argparse
import math
import sys

import pandas as pd

from reports.load import ReportError, document_kind, emit, load_json
from reports.tables import markdown_table

SAMPLER_KEYS = ("task", "mode", "batch_size", "steps", "samples_per_s", "s_per_step", "peak_mem_bytes",
                "flops_per_step", "mfu", "device", "dtype", "preset")
EXTRACTOR_KEYS = ("extractor", "unit", "units_per_s", "batch_size", "device", "dtype")
PAIR_ON = ("task", "batch_size", "steps", "preset", "device", "dtype")


def _check_doc(doc: dict, source: str) -> list[dict]:
    if document_kind(doc, source) != "benchmark":
        raise ReportError(f"{source}: expected a pytest-benchmark JSON, got a results JSON")
    return doc["benchmarks"]


def _records(doc: dict, source: str, keys: tuple[str, ...], marker: str) -> pd.DataFrame:
    rows = []
    for i, b in enumerate(_check_doc(doc, source)):
        info = b.get("extra_info") or {}
        if marker not in info:
            continue
        name = b.get("fullname") or b.get("name") or f"benchmarks[{i}]"
        missing = [k for k in keys if k not in info]
        if missing:
            raise ReportError(f"{source}: benchmark {name} sets extra_info[{marker!r}] but lacks "
                              f"{', '.join(missing)} (see the convention in bench/conftest.py)")
        mean = (b.get("stats") or {}).get("mean")
        rows.append({"name": name, "mean_s": mean, **{k: info[k] for k in keys}})
    return pd.DataFrame(rows, columns=["name", "mean_s", *keys])


def sampler_records(doc: dict, source: str = "<benchmark>") -> pd.DataFrame:
    """One row per sampler benchmark: its name, mean round time and the convention's keys."""
    return _records(doc, source, SAMPLER_KEYS, "task")


def extractor_records(doc: dict, source: str = "<benchmark>") -> pd.DataFrame:
    return _records(doc, source, EXTRACTOR_KEYS, "extractor")


def _ratio(a, b) -> float:
    if a is None or b is None or b == 0 or (isinstance(a, float) and math.isnan(a)):
        return math.nan
    return a / b


def ratio_frame(records: pd.DataFrame) -> pd.DataFrame:
    """Joint vs independent, one row per (task, batch size, ...) with both modes, numeric."""
    pairs: dict[tuple, dict[str, pd.Series]] = {}
    for _, r in records[records["mode"].isin(["joint", "independent"])].iterrows():
        key = tuple(r[k] for k in PAIR_ON)
        slot = pairs.setdefault(key, {})
        if r["mode"] in slot:
            raise ReportError(f"two {r['mode']} benchmarks for {dict(zip(PAIR_ON, key))}: "
                              f"{slot[r['mode']]['name']} and {r['name']}")
        slot[r["mode"]] = r
    rows = []
    for key, slot in pairs.items():
        j, i = slot.get("joint"), slot.get("independent")
        get = lambda s, k: None if s is None else s[k]  # noqa: E731
        rows.append({
            **dict(zip(PAIR_ON, key)),
            "joint_samples_per_s": get(j, "samples_per_s"), "independent_samples_per_s": get(i, "samples_per_s"),
            "speedup": _ratio(get(j, "samples_per_s"), get(i, "samples_per_s")),
            "joint_s_per_step": get(j, "s_per_step"), "independent_s_per_step": get(i, "s_per_step"),
            "joint_flops_per_step": get(j, "flops_per_step"),
            "independent_flops_per_step": get(i, "flops_per_step"),
            "flops_ratio": _ratio(get(j, "flops_per_step"), get(i, "flops_per_step")),
            "joint_peak_mem_bytes": get(j, "peak_mem_bytes"), "independent_peak_mem_bytes": get(i, "peak_mem_bytes"),
            "mem_ratio": _ratio(get(j, "peak_mem_bytes"), get(i, "peak_mem_bytes")),
            "joint_mfu": get(j, "mfu"), "independent_mfu": get(i, "mfu"),
        })
    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame.sort_values(["task", "batch_size"], kind="stable").reset_index(drop=True)
    return frame


def _g(x, fmt: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return format(x, fmt)


def _mib(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x / 2**20:.0f}"


def _gflop(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x / 1e9:.3g}"


def _pct(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def render_markdown(doc: dict, source: str = "<benchmark>") -> str:
    """The whole Markdown report of one benchmark JSON (tables that have no rows are left out)."""
    records = sampler_records(doc, source)
    extractors = extractor_records(doc, source)
    machine = doc.get("machine_info") or {}
    cpu = (machine.get("cpu") or {}).get("brand_raw") if isinstance(machine.get("cpu"), dict) else None
    parts = ["# Benchmarks", "", f"Source: `{source}`" + (f"; CPU: {cpu}" if cpu else "")
             + (f"; Python {machine['python_version']}" if machine.get("python_version") else "") + "."]
    if len(records):
        settings = records[["preset", "device", "dtype", "steps"]].drop_duplicates()
        parts.append("Settings: " + "; ".join(
            f"preset {s.preset}, device {s.device}, dtype {s.dtype}, {s.steps} steps" for s in settings.itertuples()) + ".")
    ratios = ratio_frame(records) if len(records) else pd.DataFrame()
    if len(ratios):
        shown = pd.DataFrame({
            "batch": ratios["batch_size"].astype(str),
            "joint samples/s": ratios["joint_samples_per_s"].map(_g),
            "indep. samples/s": ratios["independent_samples_per_s"].map(_g),
            "speed-up (joint/indep.)": ratios["speedup"].map(lambda x: _g(x, ".2f")),
            "joint s/step": ratios["joint_s_per_step"].map(_g),
            "indep. s/step": ratios["independent_s_per_step"].map(_g),
            "joint GFLOP/step": ratios["joint_flops_per_step"].map(_gflop),
            "indep. GFLOP/step": ratios["independent_flops_per_step"].map(_gflop),
            "FLOPs ratio": ratios["flops_ratio"].map(lambda x: _g(x, ".2f")),
            "joint peak MiB": ratios["joint_peak_mem_bytes"].map(_mib),
            "indep. peak MiB": ratios["independent_peak_mem_bytes"].map(_mib),
            "memory ratio": ratios["mem_ratio"].map(lambda x: _g(x, ".2f")),
            "joint MFU": ratios["joint_mfu"].map(_pct),
            "indep. MFU": ratios["independent_mfu"].map(_pct),
        })
        shown.index = pd.Index(ratios["task"], name="task")
        if (shown[["joint MFU", "indep. MFU"]] == "").all(axis=None):  # no known device peak (e.g. CPU)
            shown = shown.drop(columns=["joint MFU", "indep. MFU"])
        parts += ["", "## Joint vs independent generation", "",
                  "Speed-up = joint samples/s ÷ independent samples/s (each output alone with its own UNet); "
                  "> 1 means joint is faster. Ratios of FLOPs and peak memory are joint ÷ independent. "
                  "Peak memory is the CUDA peak allocation on a GPU and the growth of the resident set on CPU.",
                  "", markdown_table(shown).rstrip("\n")]
        if (records["device"] == "cpu").any():
            parts += ["", "On CPU the peak is the growth of the resident set while the benchmark runs; memory "
                      "the allocator kept from earlier benchmarks in the same process does not show, so CPU "
                      "memory figures are lower bounds and their ratios are not a comparison of the modes "
                      "(run one benchmark per process, or use the CUDA figures)."]
    others = records[~records["mode"].isin(["joint", "independent"])] if len(records) else records
    if len(others):
        shown = pd.DataFrame({
            "mode": others["mode"], "batch": others["batch_size"].astype(str),
            "samples/s": others["samples_per_s"].map(_g), "s/step": others["s_per_step"].map(_g),
            "GFLOP/step": others["flops_per_step"].map(_gflop), "peak MiB": others["peak_mem_bytes"].map(_mib),
            "MFU": others["mfu"].map(_pct),
        })
        shown.index = pd.Index(others["task"], name="task")
        if (shown["MFU"] == "").all():
            shown = shown.drop(columns=["MFU"])
        parts += ["", "## Other sampler benchmarks", "", markdown_table(shown).rstrip("\n")]
    if len(extractors):
        shown = pd.DataFrame({
            "unit": extractors["unit"], "batch": extractors["batch_size"].astype(str),
            "units/s": extractors["units_per_s"].map(_g), "device": extractors["device"],
            "dtype": extractors["dtype"],
        })
        shown.index = pd.Index(extractors["extractor"], name="extractor")
        parts += ["", "## Metric feature extractors", "", markdown_table(shown).rstrip("\n")]
    if not len(records) and not len(extractors):
        parts += ["", "No benchmark follows the extra_info convention of bench/conftest.py."]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark_json", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--out", help="write the Markdown here (atomically) instead of printing")
    args = parser.parse_args(argv)
    return emit(lambda: render_markdown(load_json(args.benchmark_json), args.benchmark_json), args.out)


if __name__ == "__main__":
    sys.exit(main())
