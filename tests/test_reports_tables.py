"""reports.tables and reports.paper: golden renderings of fixed results JSON, and refusals of bad input.

Golden files live in tests/fixtures/reports/golden/. After a deliberate change
to the rendering, regenerate them with ``UPDATE_GOLDEN=1 pytest tests/test_reports_tables.py``
and review the diff before committing.
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from reports import paper, tables
from reports.load import ReportError, load_results, parse_results

FIXTURES = Path(__file__).parent / "fixtures" / "reports"
GOLDEN = FIXTURES / "golden"
RESULTS = ["t2va_codi.json", "t2i_codi.json", "t2i_nano.json"]
PAPER_RESULTS = ["i2t_codi.json", "t2i_codi.json", "t2i_nano.json", "t2va_codi.json"]


def load(*names):
    return [load_results(FIXTURES / n) for n in names]


def raw(name):
    return json.loads((FIXTURES / name).read_text())


def check_golden(name: str, text: str):
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"golden file {path} missing; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("fmt,ext", [("md", "md"), ("latex", "tex"), ("csv", "csv")])
def test_results_tables_match_golden(fmt, ext):
    check_golden(f"tables.{ext}", tables.render(load(*RESULTS), fmt))


@pytest.mark.parametrize("fmt,ext", [("md", "md"), ("latex", "tex")])
def test_paper_tables_match_golden(fmt, ext):
    check_golden(f"paper.{ext}", paper.render(load(*PAPER_RESULTS), fmt))


def md_rows(text: str, task: str) -> dict[str, dict[str, str]]:
    """Parse the Markdown table under ``### task`` into {row label: {column: cell}}."""
    block = text.split(f"### {task}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    head = [c.strip() for c in block[0].strip("|").split(" | ")]
    rows = {}
    for line in block[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows[cells[0]] = dict(zip(head, cells))
    return rows


def test_markdown_cells_carry_values_stderr_and_arrows():
    rows = md_rows(tables.render(load(*RESULTS), "md"), "text2video+audio")
    joint = rows["codi [codi_v1.safetensors] (joint)"]
    assert joint["CLIPSIM ↑"] == "0.2873 ± 0.0021"
    assert joint["FAD ↓"] == "2.45"  # no stderr known: none printed
    assert joint["SIM(video, audio) ↑"] == "0.184 ± 0.005"
    assert rows["codi [codi_v1.safetensors] (independent)"]["FAD ↓"] == "2.60†"


def test_nano_numbers_get_their_own_column():
    rows = md_rows(tables.render(load(*RESULTS), "md"), "text2image")
    assert rows["codi-nano"]["FID ↓"] == "" and rows["codi-nano"]["FID ↓ [nano]"] == "3.50 ± 0.25"
    assert rows["codi [codi_v1.safetensors]"]["FID ↓ [nano]"] == ""
    # a nano mark in a metric's note alone is enough
    doc = raw("t2i_codi.json")
    doc["metrics"]["default"]["fid"]["note"] = "computed with the nano extractor"
    assert parse_results(doc).metrics["default"]["fid"].nano
    assert not parse_results(raw("t2i_codi.json")).metrics["default"]["fid"].nano


def test_csv_is_numeric_and_round_trips_the_json():
    frame = pd.read_csv(io.StringIO(tables.render(load(*RESULTS), "csv")), index_col=[0, 1])
    row = frame.loc[("text2video+audio", "codi [codi_v1.safetensors] (joint)")]
    assert row["CLIPSIM ↑"] == pytest.approx(0.28731) and row["CLIPSIM ↑ stderr"] == pytest.approx(0.00212)
    assert math.isnan(row["FAD ↓ stderr"]) and math.isnan(row["FID ↓"])
    assert frame.loc[("text2image", "codi-nano")]["FID ↓ [nano]"] == pytest.approx(3.5)


def test_latex_escapes_special_characters():
    text = tables.render(load("t2i_codi.json"), "latex")
    assert r"codi [codi\_v1.safetensors]" in text and r"FID $\downarrow$" in text
    assert "_v1" not in text.replace(r"\_v1", "")


def test_paper_table_rescales_to_the_paper_and_cites_every_number():
    text = paper.render(load(*PAPER_RESULTS), "md")
    rows = md_rows(text, "image2text")
    assert rows["CoDi (paper)"]["CIDEr ↑ (×100)"] == "149.9 [1]"
    assert rows["CoDi (paper)"]["BLEU-4 ↑ (×100)"] == "40.2 [1]"
    ours = rows["codi [codi_v1.safetensors]"]
    assert ours["CIDEr ↑ (×100)"] == "143.4 ± 1.5"  # 1.43387 x 100, stderr 0.0151 x 100
    assert ours["BLEU-4 ↑ (×100)"] == "38.7" and ours["ROUGE-L ↑"] == "0.588"  # no published ROUGE-L: native
    assert rows["CoDi (paper)"]["ROUGE-L ↑"] == ""  # unknown cells stay empty
    assert "[1] CoDi paper (NeurIPS 2023), image captioning on COCO" in text and "arXiv:2305.11846" in text
    t2i = md_rows(text, "text2image")
    assert t2i["CoDi (paper)"]["FID ↓"] == "11.26 [1]"
    assert t2i["codi-nano"]["FID ↓"] == "" and t2i["codi-nano"]["FID ↓ [nano, not comparable]"] == "3.50 ± 0.25"
    assert "No published CoDi (paper) numbers are recorded for text2video+audio." in text


def test_reference_holds_exactly_the_sourced_numbers():
    """Guard against invented numbers: the reference holds these and only these, each with a source."""
    ref = paper.load_reference()
    got = {(n.task, n.metric): n.printed for n in ref.numbers}
    assert got == {
        ("text2image", "fid"): "11.26", ("text2video", "clipsim"): "0.2890",
        ("text2audio", "fd"): "22.90", ("text2audio", "is"): "8.77", ("text2audio", "fad"): "1.80",
        ("image2text", "bleu4"): "40.2", ("image2text", "meteor"): "31.0", ("image2text", "cider"): "149.9",
        ("audio2text", "spider"): "0.480", ("audio2text", "cider"): "0.789",
        ("video2text", "bleu4"): "52.1", ("video2text", "meteor"): "32.5", ("video2text", "cider"): "74.4",
    }
    assert all("CoDi paper" in n.source for n in ref.numbers)
    assert {n.scale for n in ref.numbers if n.task in ("image2text", "video2text")} == {100.0}
    assert {n.scale for n in ref.numbers if n.task == "audio2text"} == {1.0}


def test_paper_refuses_a_different_dataset_and_a_flipped_direction():
    doc = raw("t2i_codi.json")
    doc["task_config"]["dataset"] = "cc3m"
    with pytest.raises(ReportError, match="dataset 'cc3m' is not the paper's 'COCO'"):
        paper.render([parse_results(doc, "cand.json")])
    doc = raw("t2i_codi.json")
    doc["metrics"]["default"]["fid"]["higher_is_better"] = True
    with pytest.raises(ReportError, match="fid says higher_is_better=True"):
        paper.render([parse_results(doc, "cand.json")])


def test_reference_file_errors_name_the_problem(tmp_path):
    good = yaml.safe_load(paper.DEFAULT_REFERENCE.read_text())
    cases = [
        (lambda d: d["results"][0].pop("source"), "'source' is missing"),
        (lambda d: d["results"][0].update(value=11.26), "quoted"),
        (lambda d: d["results"][0].update(scale=0), "scale must be a positive number"),
        (lambda d: d["results"].append(dict(d["results"][0])), "recorded twice"),
        (lambda d: d["results"][0].update(metric="fidd"), "unknown metric 'fidd'"),
    ]
    for mutate, message in cases:
        doc = copy.deepcopy(good)
        mutate(doc)
        path = tmp_path / "ref.yaml"
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(ReportError, match=message):
            paper.load_reference(path)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(schema="codi-results/2"), "schema 'codi-results/2' is not supported"),
    (lambda d: d.pop("schema"), "neither a results JSON"),
    (lambda d: d.pop("task"), "missing required key 'task'"),
    (lambda d: d["metrics"]["default"]["fid"].pop("higher_is_better"), r"metrics.default.fid: missing 'higher_is_better'"),
    (lambda d: d["metrics"]["default"]["fid"].update(value="11.8"), r"metrics.default.fid.value: expected a number"),
    (lambda d: d["metrics"]["default"]["fid"].update(higher_is_better="no"), "expected true or false"),
    (lambda d: d["metrics"]["default"]["fid"].update(stderr=[1]), r"fid.stderr: expected a number or null"),
    (lambda d: d["metrics"].update(default={}), "metrics.default must be a non-empty object"),
    (lambda d: d.update(settings=[1]), "'settings' must be an object"),
])
def test_malformed_results_raise_clear_errors(mutate, message):
    doc = raw("t2i_codi.json")
    mutate(doc)
    with pytest.raises(ReportError, match=message) as err:
        parse_results(doc, "bad.json")
    assert str(err.value).startswith("bad.json")


def test_mismatched_results_are_refused():
    doc = raw("t2i_codi.json")
    doc["metrics"]["default"]["clip_score"]["higher_is_better"] = False
    doc["model"]["checkpoint"] = "/ckpt/other.safetensors"
    with pytest.raises(ReportError, match="clip_score.*higher_is_better=False but another results file says True"):
        tables.render(load("t2i_codi.json") + [parse_results(doc, "other.json")], "md")
    with pytest.raises(ReportError, match="appears twice"):
        tables.render(load("t2i_codi.json", "t2i_codi.json"), "md")
    with pytest.raises(ReportError, match="unknown format 'html'"):
        tables.render(load("t2i_codi.json"), "html")


def test_cli_writes_atomically_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "t.md"
    assert tables.main([str(FIXTURES / "t2i_codi.json"), "--out", str(out)]) == 0
    assert out.read_text() == tables.render(load("t2i_codi.json"), "md")
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "codi-results/1", ')
    assert tables.main([str(bad)]) == 2
    assert "not valid JSON (line 1" in capsys.readouterr().err
    assert paper.main([str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_labels_name_rows_and_resolve_clashes(tmp_path, capsys):
    path = str(FIXTURES / "t2i_codi.json")
    assert tables.main([path, path]) == 2
    assert "name them with --label" in capsys.readouterr().err
    assert tables.main([path, path, "--label", "run A", "--label", "run B"]) == 0
    rows = md_rows(capsys.readouterr().out, "text2image")
    assert set(rows) == {"run A", "run B"} and rows["run B"]["FID ↓"] == "11.84"
    assert paper.main([path, "--label", "a", "--label", "b"]) == 2
    assert "2 --label given for 1 results files" in capsys.readouterr().err
