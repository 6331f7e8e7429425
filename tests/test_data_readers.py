"""Readers on the real public samples (MEDLINE XML, C4 JSONL, WikiText raw) and on our fixtures."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from biomamba.data.medline import read_medline
from biomamba.data.readers import (DataError, Delete, Doc, Skip, detect_format, is_wikitext_title, normalize_text,
                                   read_jsonl, read_parquet, read_records, read_text, read_wikitext)

FIX = Path(__file__).parent / "fixtures" / "data"


def docs(events):
    return [e for e in events if isinstance(e, Doc)]


# ----------------------------------------------------------------------------- MEDLINE, real files

def test_medline_gz_baseline_sample(shared_data):
    events = list(read_medline(shared_data / "medline" / "test_current_medline.xml.gz"))
    assert [e.record for e in events] == [36400559, 2930949, 11446611, 28786991]
    kinds = {e.record: (type(e).__name__, getattr(e, "reason", None)) for e in events}
    assert kinds[11446611] == ("Skip", "no_abstract")  # "Acute back pain." has no abstract
    first = events[0]
    assert first.year == 2023
    assert first.text.startswith("Back Pain: Differential Diagnosis and Management.\nBack pain is a common")
    assert "6 weeks" in first.text  # &#xa0; (no-break space) normalised to a plain space
    labelled = events[3].text.split("\n")
    assert labelled[1].startswith("OBJECTIVE: To synthesize") and labelled[-1].startswith("CONCLUSIONS: We observed")
    assert "Copyright" not in first.text  # CopyrightInformation is not abstract text


def test_medline_pmid_is_the_citations_own(shared_data):
    # the file has three PMID elements (CommentsCorrections); only MedlineCitation/PMID counts
    (doc,) = read_medline(shared_data / "medline" / "pubmed-29768149.xml")
    assert doc.record == 29768149 and doc.year == 2018
    lines = doc.text.split("\n")
    assert lines[0] == "Inhaled Combined Budesonide-Formoterol as Needed in Mild Asthma."
    assert [ln.split(":")[0] for ln in lines[1:]] == ["BACKGROUND", "METHODS", "RESULTS", "CONCLUSIONS"]
    # pretty-printed "β\n\t\t<sub>2</sub>-agonist": the layout around <sub> is not text
    assert "fast-acting β2-agonist may be" in lines[1]
    assert "200 μg of budesonide" in doc.text


def test_medline_inline_markup_flattened(shared_data):
    (doc,) = read_medline(shared_data / "medline" / "efetch-pubmed4.xml")
    assert doc.record == 27797938
    assert doc.text.startswith("Leucocyte telomere length, genetic variants at the TERT gene region")
    assert "(TERT) gene region" in doc.text and "ptrend=0.048" in doc.text and "r2<0.25" in doc.text
    assert "<i>" not in doc.text and "\t" not in doc.text
    events = list(read_medline(shared_data / "medline" / "efetch-pubmed1.xml"))
    assert [(type(e).__name__, e.record) for e in events] == [("Skip", 12091962), ("Doc", 9997)]
    assert [e.record for e in docs(read_medline(shared_data / "medline" / "efetch-pubmed2.xml"))] == [11748933, 11700088]


# ----------------------------------------------------------------------------- MEDLINE, fixtures

def test_medline_filters_and_deletions():
    events = list(read_medline(FIX / "medline" / "baseline.xml"))
    by = {e.record: e for e in events}
    assert isinstance(by[1005], Skip) and by[1005].reason == "non_english"
    assert isinstance(by[1006], Skip) and by[1006].reason == "no_abstract"
    assert by[1001].text.split("\n")[1].startswith("BACKGROUND: Iron deficiency is common in adolescents infected "
                                                   "with H. pylori.")
    assert "12 μg/L" in by[1001].text and "CO2 breath" in by[1001].text and by[1001].year == 2020
    # all languages / publication-type exclusion
    every = {e.record: e for e in read_medline(FIX / "medline" / "baseline.xml", languages=())}
    assert isinstance(every[1005], Doc) and every[1005].text.startswith("Eisenstatus")
    excl = {e.record: e for e in read_medline(FIX / "medline" / "baseline.xml",
                                              exclude_publication_types=["Retracted Publication"])}
    assert excl[1008].reason == "excluded_publication_type"
    update = list(read_medline(FIX / "medline" / "update.xml.gz"))
    assert [e.record for e in update if isinstance(e, Delete)] == [1003, 99999999]
    assert [e.record for e in update if not isinstance(e, Delete)] == [1002, 1004, 1010]


@pytest.mark.parametrize("name,reason,where", [
    ("truncated.xml.gz", "truncated_gzip", "after PMID"),
    ("malformed.xml", "malformed_xml", "line 5"),
    ("empty.xml", "empty_file", "empty file"),
])
def test_medline_broken_files_name_file_and_record(name, reason, where):
    got = []
    with pytest.raises(DataError) as info:
        for event in read_medline(FIX / "broken" / name):
            got.append(event)
    assert info.value.reason == reason
    assert name in str(info.value) and where in str(info.value)
    if name == "malformed.xml":
        assert [e.record for e in got] == [1001]  # what came before the break was read
        assert "(after PMID 1001)" in str(info.value)


def test_medline_citation_without_pmid_is_a_record_error():
    events = list(read_medline(FIX / "broken" / "no_pmid.xml"))
    assert isinstance(events[0], Skip) and events[0].error and events[0].reason == "missing_field"
    assert events[0].where == "citation #1" and "no MedlineCitation/PMID" in events[0].detail
    assert events[1].record == 1002


# ----------------------------------------------------------------------------- JSONL / Parquet / text

def test_jsonl_real_c4(shared_data):
    events = list(read_jsonl(shared_data / "c4" / "c4-en-sample-500.jsonl"))
    assert len(events) == 500 and all(isinstance(e, Doc) for e in events)
    assert [e.record for e in events[:3]] == [1, 2, 3]
    assert events[0].text.startswith("Beginners BBQ Class Taking Place in Missoula!\nDo you want")


def test_jsonl_record_errors_and_gzip(tmp_path):
    events = list(read_jsonl(FIX / "broken" / "bad.jsonl"))
    assert [(e.record, type(e).__name__, getattr(e, "reason", "")) for e in events] == [
        (1, "Doc", ""), (2, "Skip", "invalid_json"), (3, "Skip", "missing_field"), (4, "Skip", "blank_line"),
        (5, "Skip", "missing_field"), (6, "Doc", "")]
    assert "missing field 'text'" in events[2].detail and "NoneType" in events[4].detail
    gz = tmp_path / "x.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "a b"}\r\n{"text": "c"}\n'))
    assert [e.text for e in read_jsonl(gz)] == ["a b", "c"]
    with pytest.raises(DataError, match="empty.jsonl: empty file"):
        list(read_jsonl(FIX / "broken" / "empty.jsonl"))


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "wiki.parquet"
    pq.write_table(pa.table({"id": ["1", "2", "3"], "text": ["First  article.", None, "Third\r\narticle"]}), path)
    events = list(read_parquet(path))
    assert [(e.record, type(e).__name__) for e in events] == [(0, "Doc"), (1, "Skip"), (2, "Doc")]
    assert events[0].text == "First article." and events[2].text == "Third\narticle"
    assert events[1].where == "row 1" and events[1].error
    with pytest.raises(DataError, match=r"missing column 'body' \(columns: id, text\)"):
        list(read_parquet(path, text_field="body"))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="bad.parquet: not a readable Parquet file"):
        list(read_parquet(bad))


def test_parquet_without_pyarrow_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"reading Parquet needs pyarrow: pip install 'biomamba\[data\]'"):
        list(read_parquet(tmp_path / "x.parquet"))


def test_wikitext_real_articles(shared_data):
    events = list(read_wikitext(shared_data / "wikitext" / "wiki.test.raw"))
    assert all(isinstance(e, Doc) for e in events)
    titles = [e.text.split("\n")[0] for e in events]
    assert titles[:3] == ["= Robert Boulter =", "= Du Fu =", "= Kiss You ( One Direction song ) ="]
    assert titles[-1] == "= The Hustler ( film ) ="
    # 60 articles; two formula lines inside "Constant k filter" have the title form and split it
    assert len(events) == 62 and "= 1 rad / s and a nominal impedance k =" in titles
    boulter = events[0].text
    assert "= = = Theatre = = =" in boulter and "\r" not in boulter  # sections stay, CRLF goes
    assert events[0].record == 1 and events[1].record == 15
    assert "= Qualified for the next round" in events[titles.index("= Chad at the 2008 Summer Olympics =")].text


def test_wikitext_title_rule():
    assert is_wikitext_title(" = Robert Boulter = \r\n")
    assert not is_wikitext_title(" = = Career = = \r\n")
    assert not is_wikitext_title(" = = = Film = = = ")
    assert not is_wikitext_title(" Robert Boulter is an English actor . ")


def test_text_units_and_normalisation(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("First\tparagraph  line one\r\nline two\n\n\n\nSecond paragraph\n")
    assert [e.text for e in read_text(path)] == ["First paragraph line one\nline two\n\nSecond paragraph"]
    assert [(e.record, e.text) for e in read_text(path, "paragraph")] == [
        (1, "First paragraph line one\nline two"), (6, "Second paragraph")]
    assert [type(e).__name__ for e in read_text(path, "line")] == ["Doc", "Doc", "Skip", "Skip", "Skip", "Doc"]
    assert normalize_text("  a\u00a0 b \x07\r\n\r\n\r\n\r\nc  ") == "a b\n\nc"
    assert detect_format("x/pubmed25n0001.xml.gz") == "medline" and detect_format("a.jsonl.gz") == "jsonl"
    assert detect_format("wiki.test.raw") == "wikitext" and detect_format("w.parquet") == "parquet"
    with pytest.raises(DataError, match="cannot tell the format"):
        detect_format("data.bin")
    assert [e.text for e in read_records(path, "auto")][0].startswith("First")
    with pytest.raises(DataError, match="cannot open"):
        list(read_jsonl(tmp_path / "missing.jsonl"))
    assert json.loads('"ok"') == "ok"


def test_line_normalizer_equals_normalize_text_on_the_joined_lines():
    """Text and WikiText documents are normalised line by line (bounded copies of a huge document):
    the result must be exactly ``normalize_text`` of the joined lines, stray carriage returns included."""
    import random

    from biomamba.data.records import LineNormalizer

    alphabet = ["a", "b", " ", "\t", "\r", "\x00", "\x0b", "\x0c", "\x1c", "\u00a0", "\u2028", "\x85", "é"]
    rng = random.Random(7)
    for _ in range(20000):
        lines = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(0, 6))]
        norm = LineNormalizer()
        for line in lines:
            norm.add(line)
        assert norm.text() == normalize_text("\n".join(lines)), lines
        assert norm.added == len(lines)
    norm = LineNormalizer()
    for line in ["  Title \r", "", "", "a\r\r b", "\x00"]:
        norm.add(line)
    assert norm.text() == "Title\n\na\n\nb"
