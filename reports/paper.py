"""Paper-style tables: this project's results beside CoDi's published numbers, each with its source.

    python -m reports.paper runs/text2image.json [runs/...] --format md|latex [--out paper.md]

One table per task. The first row holds the published CoDi numbers from
``reports/reference/codi_paper.yaml`` (only those recorded there, each tagged
``[k]`` with its source listed under the table); the next rows are the
project's results, one per (checkpoint, mode). Every column is in the paper's
scale: where the paper prints a captioning score x100, the project's
native-scale value (and stderr) is multiplied by 100 and the header says
``(×100)``. Cells with no published number stay empty.

Numbers from the project's nano feature space (``feature_space: nano``) are
never put in a column beside a published number: they go to a separate column
labelled ``[nano, not comparable]``. A results file whose dataset does not
match the paper's dataset for that task is refused rather than compared.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from reports.load import ReportError, Results, emit
from reports.tables import (DECIMALS, DEFAULT_DECIMALS, format_metric, group_by_task, latex_table,
                            load_labelled, markdown_table, metric_label, metric_sort_key, row_label,
                            unreliable_notes)

DEFAULT_REFERENCE = Path(__file__).with_name("reference") / "codi_paper.yaml"
# Direction of every metric the reference may hold; a results file that disagrees is refused.
HIGHER_IS_BETTER = {"fid": False, "kid": False, "fad": False, "fd": False, "is": True, "clip_score": True,
                    "clipsim": True, "cider": True, "bleu4": True, "meteor": True, "rouge_l": True,
                    "spice": True, "spider": True}
NANO_SUFFIX = " [nano, not comparable]"


@dataclass(frozen=True)
class PaperNumber:
    """One published number: ``printed`` as in the paper; ``printed = scale * project value``."""

    task: str
    dataset: str
    metric: str
    printed: str
    scale: float
    source: str
    table: str | None

    @property
    def value(self) -> float:
        return float(self.printed)

    @property
    def decimals(self) -> int:
        return len(self.printed.split(".")[1]) if "." in self.printed else 0

    @property
    def citation(self) -> str:
        return self.source + (f", Table {self.table}" if self.table else "")


@dataclass(frozen=True)
class Reference:
    short: str
    citation: str
    url: str
    numbers: tuple[PaperNumber, ...]

    def for_task(self, task: str) -> dict[str, PaperNumber]:
        return {n.metric: n for n in self.numbers if n.task == task}


def parse_reference(doc: dict, source: str = "<reference>") -> Reference:
    """Check the reference YAML: every number has task, dataset, metric, printed value, scale and source."""
    if not isinstance(doc, dict) or not isinstance(doc.get("paper"), dict) or not isinstance(doc.get("results"), list):
        raise ReportError(f"{source}: expected top-level 'paper' (object) and 'results' (list)")
    paper = doc["paper"]
    for key in ("short", "citation", "url"):
        if not paper.get(key):
            raise ReportError(f"{source}: paper.{key} is missing")
    numbers, seen = [], set()
    for i, entry in enumerate(doc["results"]):
        where = f"{source}: results[{i}]"
        if not isinstance(entry, dict):
            raise ReportError(f"{where}: expected an object")
        for key in ("task", "dataset", "metric", "value", "scale", "source"):
            if entry.get(key) in (None, ""):
                raise ReportError(f"{where}: {key!r} is missing (a published number needs all of task, dataset, "
                                  "metric, value, scale and source)")
        printed = entry["value"]
        if not isinstance(printed, str) or not re.fullmatch(r"-?\d+(\.\d+)?", printed):
            raise ReportError(f"{where}: value must be the number as printed, quoted (e.g. \"0.2890\"), got {printed!r}")
        if entry["metric"] not in HIGHER_IS_BETTER:
            raise ReportError(f"{where}: unknown metric {entry['metric']!r}; known: {', '.join(HIGHER_IS_BETTER)}")
        scale = entry["scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
            raise ReportError(f"{where}: scale must be a positive number, got {scale!r}")
        key = (entry["task"], entry["metric"])
        if key in seen:
            raise ReportError(f"{where}: {entry['task']} {entry['metric']} is recorded twice")
        seen.add(key)
        table = entry.get("table")
        numbers.append(PaperNumber(task=entry["task"], dataset=str(entry["dataset"]), metric=entry["metric"],
                                   printed=printed, scale=float(scale), source=str(entry["source"]),
                                   table=None if table is None else str(table)))
    return Reference(short=paper["short"], citation=paper["citation"], url=paper["url"], numbers=tuple(numbers))


def load_reference(path: str | Path = DEFAULT_REFERENCE) -> Reference:
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: reference file not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ReportError(f"{path}: not valid YAML ({err})") from None
    return parse_reference(doc, str(path))


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _dataset_name(results: Results) -> str | None:
    d = results.task_config.get("dataset")
    if isinstance(d, dict):
        d = d.get("name")
    return d if isinstance(d, str) and d else None


def check_comparable(results: Results, published: dict[str, PaperNumber]) -> None:
    """Refuse a results file whose dataset or metric directions do not match the published numbers."""
    if results.nano or not published:
        return
    dataset = _dataset_name(results)
    paper_dataset = next(iter(published.values())).dataset
    if dataset is not None and _normalise(paper_dataset) not in _normalise(dataset):
        raise ReportError(f"{results.source}: dataset {dataset!r} is not the paper's {paper_dataset!r} for "
                          f"{results.task}; its numbers cannot stand beside the published ones")
    for mode, metrics in results.metrics.items():
        for m in metrics.values():
            if m.name in HIGHER_IS_BETTER and m.higher_is_better != HIGHER_IS_BETTER[m.name]:
                raise ReportError(f"{results.source}: metrics.{mode}.{m.name} says higher_is_better="
                                  f"{m.higher_is_better}, but {m.name} is {'higher' if HIGHER_IS_BETTER[m.name] else 'lower'}"
                                  "-is-better")


def paper_frame(results: list[Results], reference: Reference, task: str) -> tuple[pd.DataFrame, list[str]]:
    """One task's paper-style table as strings, and the source notes to print under it.

    Columns: the published metrics (paper scale), then the project's other metrics, then nano
    columns; a final ``source`` column. Index: the paper row (when numbers are recorded), then
    the project's rows.
    """
    published = reference.for_task(task)
    for r in results:
        if r.task != task:
            raise ReportError(f"{r.source}: task {r.task!r} in a {task!r} table")
        check_comparable(r, published)
    # (metric, nano) columns: published first, then whatever the results add
    columns: dict[tuple[str, bool], bool] = {(name, False): HIGHER_IS_BETTER[name] for name in published}
    for r in results:
        for metrics in r.metrics.values():
            for m in metrics.values():
                columns.setdefault((m.name, m.nano), m.higher_is_better)
    order = sorted(columns, key=lambda c: (c[1], metric_sort_key(c[0])))

    def header(name: str, nano: bool) -> str:
        arrow = "↑" if columns[(name, nano)] else "↓"
        label = f"{metric_label(name)} {arrow}"
        if not nano and name in published and published[name].scale != 1:
            label += f" (×{published[name].scale:g})"
        return label + (NANO_SUFFIX if nano else "")

    sources = list(dict.fromkeys(n.citation for n in published.values()))
    rows: dict[str, list[str]] = {}
    if published:
        cells = []
        for name, nano in order:
            n = published.get(name) if not nano else None
            cells.append(f"{n.printed} [{sources.index(n.citation) + 1}]" if n else "")
        rows[reference.short] = cells + [", ".join(f"[{i + 1}]" for i in range(len(sources)))]
    for r in results:
        for mode, metrics in r.metrics.items():
            label = row_label(r, mode)
            if label in rows:
                raise ReportError(f"{r.source}: row {label!r} appears twice in the {task} table")
            cells = []
            for name, nano in order:
                m = metrics.get(name)
                if m is None or m.nano != nano:
                    cells.append("")
                elif not nano and name in published:
                    cells.append(format_metric(m, scale=published[name].scale, decimals=published[name].decimals))
                else:
                    cells.append(format_metric(m, decimals=DECIMALS.get(name, DEFAULT_DECIMALS)))
            git = str(r.environment.get("git_hash") or "")[:7]
            rows[label] = cells + [Path(r.source).name + (f" @ {git}" if git else "")]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=[header(*c) for c in order] + ["source"])
    frame.index.name = "method"
    notes = [f"[{i + 1}] {s}. {reference.citation}. {reference.url}" for i, s in enumerate(sources)]
    notes += unreliable_notes(results)
    if not published:
        notes.append(f"No published {reference.short} numbers are recorded for {task}.")
    if any(nano for _, nano in order):
        notes.append("[nano, not comparable]: computed in the project's nano feature space, "
                     "not comparable with published numbers.")
    return frame, notes


def render(results: list[Results], fmt: str = "md", reference: Reference | None = None) -> str:
    """Paper-style tables for every task in ``results`` (first-seen order), Markdown or LaTeX."""
    if fmt not in ("md", "latex"):
        raise ReportError(f"unknown format {fmt!r}; choose md or latex")
    if not results:
        raise ReportError("no results to render")
    reference = reference or load_reference()
    parts = []
    for task, group in group_by_task(results).items():
        frame, notes = paper_frame(group, reference, task)
        if fmt == "md":
            parts.append(f"### {task}\n\n" + markdown_table(frame) + "".join(f"\n{n}\n" for n in notes))
        else:
            parts.append(latex_table(frame, caption=" ".join(n if n.endswith(".") else n + "." for n in [task] + notes)))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results JSON files (schema codi-results/1)")
    parser.add_argument("--format", choices=("md", "latex"), default="md")
    parser.add_argument("--reference", default=str(DEFAULT_REFERENCE), help="published numbers (YAML)")
    parser.add_argument("--label", action="append", default=[], help="row name, one per results file, in order")
    parser.add_argument("--out", help="write here (atomically) instead of printing")
    args = parser.parse_args(argv)
    return emit(lambda: render(load_labelled(args.results, args.label), args.format, load_reference(args.reference)), args.out)


if __name__ == "__main__":
    sys.exit(main())
