"""Results tables: results JSON -> pandas DataFrame -> Markdown, LaTeX or CSV.

    python -m reports.tables runs/a.json runs/b.json --format md [--out table.md]

Rows are (checkpoint, mode) pairs, one per mode of each results file; columns
are metrics, labelled with an arrow (↑ higher is better, ↓ lower is better).
A cell reads ``value ± stderr`` (stderr when known). Results of different tasks
give one table per task. Metrics computed in the project's nano feature space
get their own column labelled ``[nano]``: a nano number never shares a column
with a number in the published feature space. A metric the harness marked
unreliable carries ``†``, explained under the table.

Markdown and LaTeX are rendered here rather than by ``DataFrame.to_markdown``
(needs ``tabulate``, not installed) or ``to_latex`` (its layout changes between
pandas releases): the golden tests pin the exact text. CSV is
``DataFrame.to_csv`` of the numeric frame (value and stderr columns).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from reports.load import Metric, ReportError, Results, emit, load_results

METRIC_LABELS = {
    "fid": "FID", "kid": "KID", "clip_score": "CLIP score", "clipsim": "CLIPSIM", "fad": "FAD", "fd": "FD",
    "is": "IS", "bleu4": "BLEU-4", "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr",
    "spice": "SPICE", "spider": "SPIDEr",
}
METRIC_ORDER = list(METRIC_LABELS)  # columns follow this order, then sim_* and unknown names alphabetically
DECIMALS = {"fid": 2, "kid": 4, "clip_score": 2, "clipsim": 4, "fad": 2, "fd": 2, "is": 2}
DEFAULT_DECIMALS = 3  # caption metrics in native scale (0..1, CIDEr 0..10), sim_* cosines
UNRELIABLE_MARK = "†"
FORMATS = ("md", "latex", "csv")


def metric_label(name: str) -> str:
    """Display name: ``fid -> FID``, ``sim_video_audio -> SIM(video, audio)``; unknown names unchanged."""
    if name in METRIC_LABELS:
        return METRIC_LABELS[name]
    m = re.fullmatch(r"sim_([a-z]+)_([a-z]+)", name)
    return f"SIM({m.group(1)}, {m.group(2)})" if m else name


def column_label(name: str, higher_is_better: bool, nano: bool = False) -> str:
    return f"{metric_label(name)} {'↑' if higher_is_better else '↓'}" + (" [nano]" if nano else "")


def metric_sort_key(name: str) -> tuple:
    return (METRIC_ORDER.index(name), "") if name in METRIC_ORDER else (len(METRIC_ORDER), name)


def format_value(x: float | None, decimals: int) -> str:
    if x is None:
        return ""
    if math.isnan(x):
        return "n/a"  # the harness could not compute it (JSON null); its note says why
    return f"{x:.{decimals}f}"


def format_metric(m: Metric, scale: float = 1.0, decimals: int | None = None) -> str:
    """``"11.26 ± 0.13"`` (``scale`` multiplies value and stderr; ``†`` when unreliable)."""
    d = DECIMALS.get(m.name, DEFAULT_DECIMALS) if decimals is None else decimals
    text = format_value(m.value * scale, d)
    if m.stderr is not None and not math.isnan(m.value):
        text += f" ± {format_value(m.stderr * abs(scale), d)}"
    return text + (UNRELIABLE_MARK if not m.reliable else "")


def row_label(results: Results, mode: str) -> str:
    """``generator [checkpoint file name] (mode)`` or ``label (mode)``; no mode when it is ``default``."""
    label = results.label or str(results.model.get("generator") or "model")
    checkpoint = results.model.get("checkpoint")
    if checkpoint and not results.label:
        label += f" [{Path(str(checkpoint)).name}]"
    return label if mode == "default" else f"{label} ({mode})"


def _columns(results_list: list[Results]) -> list[tuple[str, bool, bool]]:
    """The (metric, higher_is_better, nano) columns of a group, in display order; checks directions agree."""
    seen: dict[tuple[str, bool], bool] = {}
    for r in results_list:
        for mode, metrics in r.metrics.items():
            for m in metrics.values():
                key = (m.name, m.nano)
                if key in seen and seen[key] != m.higher_is_better:
                    raise ReportError(f"{r.source}: metric {m.name!r} has higher_is_better={m.higher_is_better} "
                                      f"but another results file says {seen[key]}")
                seen[key] = m.higher_is_better
    return [(name, hib, nano) for (name, nano), hib in
            sorted(seen.items(), key=lambda kv: (metric_sort_key(kv[0][0]), kv[0][1]))]


def _rows(results_list: list[Results]) -> list[tuple[str, Results, str]]:
    rows, labels = [], set()
    for r in results_list:
        for mode in r.metrics:
            label = row_label(r, mode)
            if label in labels:
                raise ReportError(f"{r.source}: row {label!r} appears twice in the {r.task} table "
                                  "(two results files for the same checkpoint and mode; name them with --label)")
            labels.add(label)
            rows.append((label, r, mode))
    return rows


def group_by_task(results_list: list[Results]) -> dict[str, list[Results]]:
    groups: dict[str, list[Results]] = {}
    for r in results_list:
        groups.setdefault(r.task, []).append(r)
    return groups


def numeric_frame(results_list: list[Results]) -> pd.DataFrame:
    """Rows ``(task, row label)``; per metric a value column and a ``stderr`` column (NaN when unknown).

    Column names are the display labels with their arrow (``FID ↓``, ``FID ↓ stderr``;
    ``FID ↓ [nano]`` for nano-space numbers), so the CSV carries the direction of every metric.
    """
    records, index = [], []
    for task, group in group_by_task(results_list).items():
        columns = _columns(group)
        for label, r, mode in _rows(group):
            rec = {}
            for name, hib, nano in columns:
                key = column_label(name, hib, nano)
                m = r.metrics[mode].get(name)
                hit = m is not None and m.nano == nano
                rec[key] = m.value if hit else math.nan
                rec[f"{key} stderr"] = m.stderr if hit and m.stderr is not None else math.nan
            index.append((task, label))
            records.append(rec)
    frame = pd.DataFrame.from_records(records, index=pd.MultiIndex.from_tuples(index, names=["task", "row"]))
    return frame


def display_frame(results: list[Results]) -> pd.DataFrame:
    """One task's table as strings: index = row labels, columns = ``FID ↓`` style labels."""
    if len({r.task for r in results}) != 1:
        raise ReportError(f"display_frame takes results of one task, got {sorted({r.task for r in results})}")
    columns = _columns(results)
    data = {}
    for label, r, mode in _rows(results):
        cells = []
        for name, _, nano in columns:
            m = r.metrics[mode].get(name)
            cells.append(format_metric(m) if m is not None and m.nano == nano else "")
        data[label] = cells
    frame = pd.DataFrame.from_dict(data, orient="index", columns=[column_label(*c) for c in columns])
    frame.index.name = "method"
    return frame


def unreliable_notes(results: list[Results]) -> list[str]:
    notes = []
    for label, r, mode in _rows(results):
        for m in r.metrics[mode].values():
            if not m.reliable:
                notes.append(f"{UNRELIABLE_MARK} {label}, {metric_label(m.name)}: {m.note or 'marked unreliable'}")
    return notes


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of a string frame (index as the first column); ``|`` in cells escaped."""
    def cell(x) -> str:
        return str(x).replace("|", "\\|")

    head = [frame.index.name or ""] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cell(h) for h in head) + " |",
             "| " + " | ".join(["---"] + ["---:"] * len(frame.columns)) + " |"]
    for label, row in frame.iterrows():
        lines.append("| " + " | ".join([cell(label)] + [cell(v) for v in row]) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "↑": r"$\uparrow$", "↓": r"$\downarrow$", "±": r"$\pm$", "†": r"$^\dagger$",
                  "→": r"$\rightarrow$", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def latex_table(frame: pd.DataFrame, caption: str | None = None) -> str:
    """A booktabs ``tabular`` (inside ``table`` when a caption is given); needs ``\\usepackage{booktabs}``."""
    head = [frame.index.name or ""] + [str(c) for c in frame.columns]
    body = [r"\begin{tabular}{l" + "r" * len(frame.columns) + "}", r"\toprule",
            " & ".join(latex_escape(h) for h in head) + r" \\", r"\midrule"]
    for label, row in frame.iterrows():
        body.append(" & ".join([latex_escape(label)] + [latex_escape(v) for v in row]) + r" \\")
    body += [r"\bottomrule", r"\end{tabular}"]
    if caption is None:
        return "\n".join(body) + "\n"
    return "\n".join([r"\begin{table}[t]", r"\centering", *body,
                      rf"\caption{{{latex_escape(caption)}}}", r"\end{table}"]) + "\n"


def render(results_list: list[Results], fmt: str) -> str:
    """All tables of ``results_list`` (one per task, in first-seen order) in ``fmt`` (md, latex, csv)."""
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not results_list:
        raise ReportError("no results to render")
    if fmt == "csv":
        return numeric_frame(results_list).to_csv(float_format="%.10g", lineterminator="\n")
    parts = []
    for task, group in group_by_task(results_list).items():
        frame = display_frame(group)
        notes = unreliable_notes(group)
        if fmt == "md":
            parts.append(f"### {task}\n\n" + markdown_table(frame) + "".join(f"\n{n}\n" for n in notes))
        else:
            caption = " ".join(n if n.endswith(".") else n + "." for n in [task] + notes)
            parts.append(latex_table(frame, caption=caption))
    return "\n".join(parts)


def load_labelled(paths: list[str], labels: list[str]) -> list[Results]:
    """Load results files; ``labels`` (empty, or one per file) name their rows."""
    if labels and len(labels) != len(paths):
        raise ReportError(f"{len(labels)} --label given for {len(paths)} results files; give one per file or none")
    results = [load_results(p) for p in paths]
    return [replace(r, label=lab) for r, lab in zip(results, labels)] if labels else results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results JSON files (schema codi-results/1)")
    parser.add_argument("--format", choices=FORMATS, default="md")
    parser.add_argument("--label", action="append", default=[], help="row name, one per results file, in order")
    parser.add_argument("--out", help="write here (atomically) instead of printing")
    args = parser.parse_args(argv)
    return emit(lambda: render(load_labelled(args.results, args.label), args.format), args.out)


if __name__ == "__main__":
    sys.exit(main())
