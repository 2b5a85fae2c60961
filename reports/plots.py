"""Plots of benchmark JSON: throughput against batch size, joint against independent, per task.

    python -m reports.plots reports/bench/benchmark.json --out reports/bench/throughput.png

One panel per task: samples per second (log scale) against batch size, a line
for joint generation and one for independent generation (each output alone
with its own UNet). Needs matplotlib (Agg backend, no display); the PNG is
written atomically.
"""
from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path

from reports.bench_table import sampler_records
from reports.load import ReportError, atomic_write_bytes, load_json

MODES = {"joint": ("tab:blue", "o"), "independent": ("tab:orange", "s")}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ReportError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker as ticker
    return plt, ticker


def throughput_png(doc: dict, source: str = "<benchmark>", *, dpi: int = 120) -> bytes:
    """PNG bytes of the throughput-vs-batch-size panels; ReportError when no joint/independent data."""
    records = sampler_records(doc, source)
    if len(records):
        records = records[records["mode"].isin(list(MODES))]
    if not len(records):
        raise ReportError(f"{source}: no joint/independent sampler benchmarks to plot")
    plt, ticker = _pyplot()
    tasks = list(dict.fromkeys(records["task"]))
    cols = min(len(tasks), 2)
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    settings = records.iloc[0]
    for ax, task in zip(axes.flat, tasks):
        for mode, (color, marker) in MODES.items():
            sub = records[(records["task"] == task) & (records["mode"] == mode)].sort_values("batch_size")
            if len(sub):
                ax.plot(sub["batch_size"], sub["samples_per_s"], marker=marker, color=color, label=mode)
        ax.set_title(task)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(set(records.loc[records["task"] == task, "batch_size"])))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%d"))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.3g"))
        ax.set_xlabel("batch size")
        ax.set_ylabel("samples / s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle(f"Sampler throughput ({settings['preset']}, {settings['device']}, {settings['dtype']}, "
                 f"{settings['steps']} steps)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def write_throughput_png(doc: dict, out: str | Path, source: str = "<benchmark>") -> Path:
    return atomic_write_bytes(out, throughput_png(doc, source))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark_json", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    try:
        write_throughput_png(load_json(args.benchmark_json), args.out, args.benchmark_json)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
