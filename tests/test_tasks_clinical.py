"""MIMIC-IV-Note discharge notes: reader, section parser, patient split, the two generation
tasks and their filters, on our synthetic notes (tests/fixtures/mimic; never real ones)."""

from __future__ import annotations

import gzip
import logging
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from biomamba.tasks import get_task
from biomamba.tasks.clinical import (completion_pair, discharge_pair, parse_sections, patient_split,
                                     read_discharge_notes)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mimic"
NOTES = FIXTURE / "discharge.csv"


def test_fixture_is_what_its_script_writes():
    sys.path.insert(0, str(FIXTURE))
    try:
        import make_notes
    finally:
        sys.path.pop(0)
    assert make_notes.render() == NOTES.read_text()


def test_reader_plain_and_gzip(tmp_path):
    rows = list(read_discharge_notes(NOTES))
    assert len(rows) == 30 and len({r["subject_id"] for r in rows}) == 12
    assert all("\n" in r["text"] for r in rows)  # multi-line quoted text read whole
    assert any('"heart problems"' in r["text"] for r in rows)  # quotes inside the text
    gz = tmp_path / "discharge.csv.gz"
    with open(NOTES, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert list(read_discharge_notes(gz)) == rows
    bad = tmp_path / "bad.csv"
    bad.write_text("note_id,text\n1,x\n")
    with pytest.raises(ValueError, match="columns .*subject_id"):
        list(read_discharge_notes(bad))


NOTE = """Name:  ___                     Unit No:   ___
 
Admission Date:  ___              Discharge Date:   ___
 
Service: MEDICINE
 
Allergies: Penicillins
 
Attending: ___.
 
___ Complaint:
chest pain
 
History of Present Illness:
A made-up patient with chest pain.
Past Medical ___:
- hypertension
Physical Exam:
ADMISSION EXAM: regular rate.
Physical Exam:
DISCHARGE EXAM: comfortable.
Pertinent Results:
Troponin negative x2.
Brief Hospital Course:
Ruled out for MI.
Discharge ___:
Home
Discharge Diagnosis:
Chest pain, non-cardiac
"""


def test_section_parser():
    sections = parse_sections(NOTE)
    names = [s.name for s in sections]
    assert names == ["preamble", "allergies", "attending", "chief_complaint", "history_of_present_illness",
                     "past_medical_history", "physical_exam", "physical_exam", "pertinent_results",
                     "brief_hospital_course", "masked", "discharge_diagnosis"]
    by = {s.name: s for s in sections}
    assert by["allergies"].text == "Penicillins"  # text on the header's own line
    assert by["chief_complaint"].header == "___ Complaint:" and by["chief_complaint"].text == "chest pain"
    exams = [s.text for s in sections if s.name == "physical_exam"]
    assert exams == ["ADMISSION EXAM: regular rate.", "DISCHARGE EXAM: comfortable."]  # kept, not overwritten
    assert by["pertinent_results"].text == "Troponin negative x2."  # the hospital course is not a result
    assert by["brief_hospital_course"].text == "Ruled out for MI."
    assert "Service: MEDICINE" in by["preamble"].text
    # a line that merely mentions a header word mid-line is no header
    assert [s.name for s in parse_sections("Chief Complaint:\nsee Allergies: none\n")] == ["chief_complaint"]


def test_discharge_pair_and_completion_pair():
    context, response = discharge_pair(NOTE)
    assert context.startswith("Allergies:\nPenicillins\n\n___ Complaint:\nchest pain") and "History of Present Illness:" in context
    assert "ADMISSION EXAM" in context and "DISCHARGE EXAM" in context and "Troponin" in context
    assert "Ruled out" not in context and "Attending" not in context
    assert response.startswith("Brief Hospital Course:\nRuled out for MI.")
    assert response.endswith("Discharge Diagnosis:\nChest pain, non-cardiac")
    assert "Home" not in response  # the ambiguous masked header is in neither part
    text = "alpha beta gamma delta epsilon"
    prefix, rest = completion_pair(text)
    assert prefix + rest == text and prefix == "alpha beta gamma" and rest == " delta epsilon"


def test_patient_split_is_seeded_and_by_patient():
    subjects = [str(s) for s in range(1000, 1100)]
    split = patient_split(subjects, seed=42)
    assert Counter(split.values()) == {"train": 81, "validation": 9, "test": 10}
    assert patient_split(list(reversed(subjects)), seed=42) == split  # order of reading does not matter
    assert patient_split(subjects, seed=1) != split


@pytest.mark.parametrize("name", ["clinical_completion", "clinical_discharge"])
def test_clinical_tasks_on_synthetic_notes(name, caplog):
    task = get_task(name)
    caplog.set_level(logging.DEBUG)
    splits, stats = {}, {}
    for split in ("train", "validation", "test"):
        stats[split] = {}
        splits[split] = task.load(split, paths={"notes": str(NOTES)}, stats=stats[split])
    s = stats["test"]
    dropped = sum(v for k, v in s.items() if k.startswith("dropped_"))
    assert s["notes"] == 30 and dropped > 0
    assert sum(len(v) for v in splits.values()) + dropped == 30  # every note is in a split or counted
    subjects = {k: {ex["subject_id"] for ex in v} for k, v in splits.items()}
    assert not subjects["train"] & subjects["test"] and not subjects["validation"] & subjects["test"]
    assert not subjects["train"] & subjects["validation"]
    for ex in splits["train"]:
        assert 100 <= len(ex["context"]) <= 3000 and 50 <= len(ex["response"].strip()) <= 2000
    assert not any(ex["context"][:40] in rec.getMessage() for rec in caplog.records for ex in splits["train"])
    capped = task.load("train", paths={"notes": str(NOTES)}, max_samples=5)
    assert len(capped) == 5 and all(ex in splits["train"] for ex in capped)
    prompt, target = task.render(splits["train"][0])
    if name == "clinical_discharge":
        assert prompt.endswith("\n\nDischarge Summary:") and target.startswith("\nBrief Hospital Course:")
    else:
        notes = {r["note_id"]: r["text"].strip() for r in read_discharge_notes(NOTES)}
        for ex in splits["train"]:  # the prefix and the rest are the whole note, split in the middle
            assert ex["context"] + ex["response"] == notes[ex["id"]]
            assert abs(len(ex["context"]) - len(notes[ex["id"]]) / 2) < 20
        assert (prompt, target) == (splits["train"][0]["context"], splits["train"][0]["response"])


def test_eval_context_cap_keeps_the_cue():
    task = get_task("clinical_discharge")
    ex = {"context": "x" * 5000, "response": "r"}
    prompt, _ = task.render(ex)
    assert task.context_cut(ex) and prompt == "x" * 4000 + "\n\nDischarge Summary:"
    completion = get_task("clinical_completion")
    ex = {"context": "a" * 1000 + "b" * 4000, "response": " rest"}
    assert completion.render(ex)[0] == "b" * 4000  # note completion keeps the end of its prefix
