"""Regression gate: compare a candidate's results (or benchmark) JSON with a blessed baseline.

    python -m reports.regress --baseline reports/baselines/main --candidate runs/new \\
        [--tolerance fid=0.5] [--tolerance 'clipsim=2%'] [--config reports/baselines/tolerances.yaml]

``--baseline`` and ``--candidate`` are each a JSON file or a folder of them
(results JSON, schema ``codi-results/1``, and/or pytest-benchmark JSON).
Every number becomes a keyed quantity:

- results: ``<task>/<mode>/<metric>``, e.g. ``text2image/default/fid``, with the
  metric's own ``higher_is_better``;
- benchmarks: ``bench/<test name>/<quantity>``, quantities ``mean_s`` (pytest-benchmark's
  mean round time, lower is better) and, from ``extra_info``, ``samples_per_s``,
  ``units_per_s``, ``mfu`` (higher is better), ``s_per_step``, ``peak_mem_bytes`` (lower).

A quantity **regressed** when it moved in its bad direction by more than its
tolerance, **improved** when it moved in its good direction by more than the
tolerance, and otherwise **held**. A tolerance is absolute (``fid=0.5``: FID may
rise by 0.5) or relative to the baseline (``clipsim=2%``). Rules come from the
config file, then from ``--tolerance`` options; a rule's left side is a metric
name (``fid``) or a glob over keys (``text2image/*/fid``, ``bench/*``); the
last rule that matches wins; unmatched quantities get ``--default-tolerance``
(0: any worsening fails). Config file (YAML or JSON)::

    default: 0
    tolerances:
      fid: 0.5
      clipsim: 2%
      "bench/*": 10%

A quantity in the baseline but not the candidate is **missing** and fails the
gate (``--allow-missing`` to accept); one only in the candidate is **new**.
Results whose task version, task config or sampling settings (sampler, steps,
guidance scale, seed, number of samples) differ are refused as not comparable,
unless ``--allow-settings-mismatch``. The metric directions must agree.
Benchmarks recorded on different machines (CPU model, GPUs, Python) are
compared but draw a warning: their timings say little about each other.

Exit status: 0 when nothing regressed, 1 on a regression (or a missing
quantity), 2 on bad or mismatched input.

CI recipe (checking a new checkpoint against the blessed baseline)::

    # 1. score the candidate checkpoint with the baseline's task settings (python -m metrics.run
    #    --task ...) and collect its results JSON files, one per task, in runs/candidate/
    # 2. gate it against the blessed baseline
    python -m reports.regress --baseline reports/baselines/main --candidate runs/candidate \\
        --config reports/baselines/tolerances.yaml --out runs/candidate/regress.md

The job fails (exit 1) on any regression and the Markdown table in
``regress.md`` says which metric moved by how much. See ``reports/baselines/README.md``
for how a baseline is blessed.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from reports.load import ReportError, atomic_write_text, document_kind, load_json, parse_results
from reports.tables import markdown_table

# settings that change the numbers: results differing in these are not comparable
COMPARABLE_SETTINGS = ("sampler", "steps", "guidance_scale", "seed", "num_samples")
BENCH_QUANTITIES = {"samples_per_s": True, "units_per_s": True, "mfu": True,
                    "s_per_step": False, "peak_mem_bytes": False}  # name -> higher_is_better
STATUS_ORDER = ("regressed", "missing", "improved", "new", "held")


@dataclass(frozen=True)
class Quantity:
    key: str
    value: float
    higher_is_better: bool
    source: str


@dataclass(frozen=True)
class Tolerance:
    """Allowed worsening: ``amount`` in the metric's units (``relative=False``) or a fraction of |baseline|."""

    amount: float
    relative: bool = False

    def allowed(self, baseline: float) -> float:
        return self.amount * abs(baseline) if self.relative else self.amount

    def __str__(self) -> str:
        return f"{self.amount * 100:g}%" if self.relative else f"{self.amount:g}"


@dataclass(frozen=True)
class Comparison:
    key: str
    baseline: float | None
    candidate: float | None
    higher_is_better: bool
    tolerance: Tolerance | None
    status: str

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.candidate is None:
            return None
        return self.candidate - self.baseline


def parse_tolerance(text: str, where: str = "tolerance") -> Tolerance:
    """``"0.5"`` -> absolute 0.5; ``"2%"`` -> relative 0.02. Negative or non-numeric values raise."""
    s = str(text).strip()
    relative = s.endswith("%")
    try:
        amount = float(s[:-1] if relative else s)
    except ValueError:
        raise ReportError(f"{where}: {text!r} is not a number or a percentage (e.g. 0.5 or 2%)") from None
    if not math.isfinite(amount) or amount < 0:
        raise ReportError(f"{where}: {text!r} must be a finite, non-negative number")
    return Tolerance(amount / 100 if relative else amount, relative)


def parse_rule(text: str) -> tuple[str, Tolerance]:
    """``"fid=0.5"`` / ``"bench/*=10%"`` -> (pattern, Tolerance)."""
    pattern, sep, value = text.partition("=")
    if not sep or not pattern.strip():
        raise ReportError(f"--tolerance {text!r}: expected METRIC=VALUE, e.g. fid=0.5 or clipsim=2%")
    return pattern.strip(), parse_tolerance(value, f"--tolerance {text!r}")


def load_config(path: str | Path) -> tuple[Tolerance | None, list[tuple[str, Tolerance]]]:
    """A tolerance config (YAML or JSON): ``{default: 0, tolerances: {pattern: value}}``."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: tolerance config not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ReportError(f"{path}: not valid YAML/JSON ({err})") from None
    if not isinstance(doc, dict) or set(doc) - {"default", "tolerances"}:
        raise ReportError(f"{path}: expected only the keys 'default' and 'tolerances', got {sorted(doc) if isinstance(doc, dict) else doc!r}")
    rules = doc.get("tolerances") or {}
    if not isinstance(rules, dict):
        raise ReportError(f"{path}: 'tolerances' must map metric names or key globs to values")
    default = parse_tolerance(doc["default"], f"{path}: default") if "default" in doc else None
    return default, [(str(k), parse_tolerance(v, f"{path}: tolerances.{k}")) for k, v in rules.items()]


def tolerance_for(key: str, rules: list[tuple[str, Tolerance]], default: Tolerance) -> Tolerance:
    """The last rule whose pattern equals or globs the key's metric name (last part) or the whole key."""
    name = key.rsplit("/", 1)[-1]
    chosen = default
    for pattern, tol in rules:
        if fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(name, pattern):
            chosen = tol
    return chosen


def results_quantities(doc: dict, source: str) -> tuple[dict[str, Quantity], dict]:
    """Quantities of one results document and its comparability signature."""
    r = parse_results(doc, source)
    out = {}
    for mode, metrics in r.metrics.items():
        for m in metrics.values():
            key = f"{r.task}/{mode}/{m.name}"
            out[key] = Quantity(key, m.value, m.higher_is_better, source)
    config = {k: v for k, v in r.task_config.items() if k != "description"}  # prose changes no number
    signature = {"task_version": r.task_version, "task_config": config,
                 **{f"settings.{k}": r.settings.get(k) for k in COMPARABLE_SETTINGS}}
    return out, {r.task: signature}


def benchmark_quantities(doc: dict, source: str) -> dict[str, Quantity]:
    """Quantities of a pytest-benchmark JSON (see the module docstring for the names)."""
    out = {}
    for i, b in enumerate(doc["benchmarks"]):
        if not isinstance(b, dict) or "stats" not in b or not isinstance(b["stats"], dict):
            raise ReportError(f"{source}: benchmarks[{i}] has no 'stats' object")
        name = b.get("fullname") or b.get("name")
        if not name:
            raise ReportError(f"{source}: benchmarks[{i}] has no name")
        mean = b["stats"].get("mean")
        if isinstance(mean, (int, float)) and not isinstance(mean, bool):
            out[f"bench/{name}/mean_s"] = Quantity(f"bench/{name}/mean_s", float(mean), False, source)
        for q, hib in BENCH_QUANTITIES.items():
            v = (b.get("extra_info") or {}).get(q)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"bench/{name}/{q}"] = Quantity(f"bench/{name}/{q}", float(v), hib, source)
    return out


def machine_signature(doc: dict) -> dict:
    """What makes timings comparable: CPU model, machine, Python; plus GPU names when recorded."""
    info = doc.get("machine_info") or {}
    cpu = info.get("cpu") if isinstance(info.get("cpu"), dict) else {}
    return {"cpu": cpu.get("brand_raw"), "machine": info.get("machine"),
            "python": info.get("python_version"), "gpus": info.get("gpus")}


def collect(path: str | Path) -> tuple[dict[str, Quantity], dict[str, dict]]:
    """All quantities of a JSON file or of every ``*.json`` in a folder; duplicate keys raise."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise ReportError(f"{path}: folder holds no *.json files")
    elif path.is_file():
        files = [path]
    else:
        raise ReportError(f"{path}: no such file or folder")
    quantities: dict[str, Quantity] = {}
    signatures: dict[str, dict] = {}
    for f in files:
        doc = load_json(f)
        if document_kind(doc, str(f)) == "results":
            found, sig = results_quantities(doc, str(f))
            signatures.update(sig)
        else:
            found = benchmark_quantities(doc, str(f))
            signatures["bench:machine"] = machine_signature(doc)
        for key, q in found.items():
            if key in quantities:
                raise ReportError(f"{key} appears in both {quantities[key].source} and {q.source}")
            quantities[key] = q
    return quantities, signatures


def check_comparable(base_sigs: dict[str, dict], cand_sigs: dict[str, dict]) -> None:
    """Refuse results of the same task whose task config or number-changing settings differ."""
    problems = []
    for task in sorted(set(base_sigs) & set(cand_sigs) - {"bench:machine"}):
        for field, b in base_sigs[task].items():
            c = cand_sigs[task].get(field)
            if json.dumps(b, sort_keys=True) != json.dumps(c, sort_keys=True):
                problems.append(f"{task}: {field} is {json.dumps(b, sort_keys=True)} in the baseline "
                                f"but {json.dumps(c, sort_keys=True)} in the candidate")
    if problems:
        raise ReportError("results are not comparable (pass --allow-settings-mismatch to compare anyway):\n  "
                          + "\n  ".join(problems))


def compare(baseline: dict[str, Quantity], candidate: dict[str, Quantity],
            rules: list[tuple[str, Tolerance]] = (), default: Tolerance = Tolerance(0.0)) -> list[Comparison]:
    """Direction-aware comparison of every key, sorted by status then key.

    gain = (candidate - baseline) if higher is better else (baseline - candidate);
    regressed when gain < -allowed, improved when gain > allowed, held otherwise; a NaN
    candidate against a finite baseline is a regression.
    """
    out = []
    for key in sorted(set(baseline) | set(candidate)):
        b, c = baseline.get(key), candidate.get(key)
        if b is None or c is None:
            q = b or c
            out.append(Comparison(key, b and b.value, c and c.value, q.higher_is_better, None,
                                  "missing" if c is None else "new"))
            continue
        if b.higher_is_better != c.higher_is_better:
            raise ReportError(f"{key}: higher_is_better is {b.higher_is_better} in {b.source} "
                              f"but {c.higher_is_better} in {c.source}")
        tol = tolerance_for(key, list(rules), default)
        if math.isnan(b.value):
            status = "held" if math.isnan(c.value) else "new"
        elif math.isnan(c.value):
            status = "regressed"
        else:
            gain = (c.value - b.value) if b.higher_is_better else (b.value - c.value)
            allowed = tol.allowed(b.value)
            status = "regressed" if gain < -allowed else "improved" if gain > allowed else "held"
        out.append(Comparison(key, b.value, c.value, b.higher_is_better, tol, status))
    return sorted(out, key=lambda r: (STATUS_ORDER.index(r.status), r.key))


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


def report_table(rows: list[Comparison]) -> str:
    """A Markdown table of the comparisons and a one-line summary."""
    frame = pd.DataFrame(
        [[r.status, "↑" if r.higher_is_better else "↓", _num(r.baseline), _num(r.candidate),
          "" if r.delta is None else f"{r.delta:+.6g}", "" if r.tolerance is None else str(r.tolerance)]
         for r in rows],
        index=pd.Index([r.key for r in rows], name="quantity"),
        columns=["status", "better", "baseline", "candidate", "change", "tolerance"])
    counts = {s: sum(r.status == s for r in rows) for s in STATUS_ORDER}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "nothing to compare"
    return markdown_table(frame) + f"\n{summary}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="blessed results/benchmark JSON file or folder")
    parser.add_argument("--candidate", required=True, help="candidate results/benchmark JSON file or folder")
    parser.add_argument("--tolerance", action="append", default=[], metavar="METRIC=VALUE",
                        help="absolute (fid=0.5) or relative (clipsim=2%%); repeatable; after the config's rules")
    parser.add_argument("--config", help="tolerance config, YAML or JSON: {default: 0, tolerances: {fid: 0.5}}")
    parser.add_argument("--default-tolerance", help="for quantities no rule matches (default 0, or the config's)")
    parser.add_argument("--allow-missing", action="store_true", help="a quantity absent from the candidate passes")
    parser.add_argument("--allow-settings-mismatch", action="store_true",
                        help="compare results even when task config or sampling settings differ")
    parser.add_argument("--out", help="also write the table here (Markdown, atomically)")
    args = parser.parse_args(argv)
    try:
        default, rules = load_config(args.config) if args.config else (None, [])
        rules += [parse_rule(t) for t in args.tolerance]
        if args.default_tolerance is not None:
            default = parse_tolerance(args.default_tolerance, "--default-tolerance")
        baseline, base_sigs = collect(args.baseline)
        candidate, cand_sigs = collect(args.candidate)
        if not args.allow_settings_mismatch:
            check_comparable(base_sigs, cand_sigs)
        machines = base_sigs.get("bench:machine"), cand_sigs.get("bench:machine")
        if None not in machines and machines[0] != machines[1]:
            print(f"warning: the benchmarks ran on different machines ({machines[0]} vs {machines[1]}); "
                  "timings are not comparable", file=sys.stderr)
        if not set(baseline) & set(candidate):
            raise ReportError(f"{args.baseline} and {args.candidate} share no quantity (different tasks or "
                              "benchmarks?); nothing to compare")
        rows = compare(baseline, candidate, rules, default or Tolerance(0.0))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = report_table(rows)
    sys.stdout.write(text)
    if args.out:
        atomic_write_text(args.out, text)
    failed = any(r.status == "regressed" or (r.status == "missing" and not args.allow_missing) for r in rows)
    if failed:
        print("regression gate: FAILED", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
