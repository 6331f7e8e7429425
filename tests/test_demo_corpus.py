"""The shipped demo corpus is exactly what the generator writes (so it cannot drift from the code)."""

from __future__ import annotations

import csv
import gzip
import io
import json

from biomamba.demo_corpus import DEMO_DATA, write_demo_corpus


def test_shipped_demo_corpus_equals_a_fresh_generation(tmp_path):
    fresh = write_demo_corpus(tmp_path / "demo")
    shipped = sorted(p.relative_to(DEMO_DATA) for p in DEMO_DATA.rglob("*") if p.is_file())
    generated = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert shipped == generated and len(shipped) == 9
    for rel in shipped:
        assert (DEMO_DATA / rel).read_bytes() == (fresh / rel).read_bytes(), rel


def test_demo_corpus_formats():
    notes = list(csv.DictReader(io.StringIO(gzip.decompress((DEMO_DATA / "mimic/discharge.csv.gz").read_bytes()).decode())))
    assert set(notes[0]) == {"note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"}
    assert all("Brief Hospital Course:" in n["text"] and "Discharge Instructions:" in n["text"] for n in notes)
    assert any("___ Complaint:" in n["text"] for n in notes)  # masked headers as in MIMIC
    questions = json.loads((DEMO_DATA / "bioasq/demo-training.json").read_text())["questions"]
    golden = json.loads((DEMO_DATA / "bioasq/demo-golden.json").read_text())["questions"]
    assert not {q["id"] for q in questions} & {q["id"] for q in golden}
    answers = {q["exact_answer"] for q in questions}
    assert answers == {"yes", "no"} and all(q["type"] == "yesno" and q["snippets"] for q in questions)
