"""MIMIC-IV-Note discharge notes: reader, section parser, patient split, the two generation
tasks, their limits and cuts (paper 2, appendix A5.2), the two-task SFT set clinical_mix and
the 500-note test sample, on synthetic notes (tests/fixtures/mimic and notes written here;
never real ones)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import random
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from biomamba.tasks import get_task
from biomamba.tasks.clinical import (COLUMNS, Limits, completion_pair, discharge_pair, make_example,
                                     parse_sections, patient_split, read_discharge_notes)

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
    # only the addendum (and, for discharge, the note without discharge sections) is dropped:
    # the long notes the old filters dropped (4 contexts, 3-7 responses over the limits) are kept, cut
    assert s["notes"] == 30 and dropped == {"clinical_completion": 1, "clinical_discharge": 2}[name]
    assert not any("too_long" in k for k in s)
    assert sum(len(v) for v in splits.values()) + dropped == 30  # every note is in a split or counted
    subjects = {k: {ex["subject_id"] for ex in v} for k, v in splits.items()}
    assert not subjects["train"] & subjects["test"] and not subjects["validation"] & subjects["test"]
    assert not subjects["train"] & subjects["validation"]
    notes = {r["note_id"]: r["text"] for r in read_discharge_notes(NOTES)}
    pair = completion_pair if name == "clinical_completion" else discharge_pair
    for ex in splits["train"]:
        assert 100 <= len(ex["context"]) <= 3000 and 50 <= len(ex["response"].strip()) <= 2000
        full_context, full_response = pair(notes[ex["id"]])
        assert full_response.startswith(ex["response"])  # a response keeps its start
        if name == "clinical_completion":
            assert full_context.endswith(ex["context"])  # the prefix keeps the text next to the continuation
        else:
            assert full_context.startswith(ex["context"])
    train_stats = stats["train"]
    cut = {part: sum(len(ex[part]) == limit for ex in splits["train"]) for part, limit in (("context", 3000),
                                                                                          ("response", 2000))}
    assert (train_stats["context_cut"], train_stats["response_cut"]) == (cut["context"], cut["response"])
    assert train_stats["response_cut"] > 0 and train_stats["kept"] == len(splits["train"])
    if name == "clinical_completion":
        assert train_stats["context_cut"] > 0
    assert not any(ex["context"][:40] in rec.getMessage() for rec in caplog.records for ex in splits["train"])
    capped = task.load("train", paths={"notes": str(NOTES)}, max_samples=5)
    assert len(capped) == 5 and all(ex in splits["train"] for ex in capped)
    prompt, target = task.render(splits["train"][0])
    if name == "clinical_discharge":
        assert prompt.endswith("\n\nDischarge Summary:") and target.startswith("\nBrief Hospital Course:")
    else:
        for ex in splits["train"]:  # uncut: the prefix and the rest are the whole note, split in the middle
            whole = notes[ex["id"]].strip()
            if len(ex["context"]) < 3000 and len(ex["response"]) < 2000:
                assert ex["context"] + ex["response"] == whole
                assert abs(len(ex["context"]) - len(whole) / 2) < 20
        assert (prompt, target) == (splits["train"][0]["context"], splits["train"][0]["response"])


def test_eval_context_cap_keeps_the_cue():
    task = get_task("clinical_discharge")
    ex = {"context": "x" * 5000, "response": "r"}
    prompt, _ = task.render(ex)
    assert task.context_cut(ex) and prompt == "x" * 4000 + "\n\nDischarge Summary:"
    completion = get_task("clinical_completion")
    ex = {"context": "a" * 1000 + "b" * 4000, "response": " rest"}
    assert completion.render(ex)[0] == "b" * 4000  # note completion keeps the end of its prefix


# ---- notes written here: long ones the old filters dropped, the paper's cuts, clinical_mix ----
# Every word below is invented for these tests; no real note was used.
WORDS = ["patient", "reported", "worsening", "dyspnea", "over", "three", "days", "with", "orthopnea", "and",
         "mild", "edema", "denied", "fever", "chest", "pain", "was", "started", "on", "diuresis"]


def _sentences(rng: random.Random, n: int) -> str:
    return " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))).capitalize() + "."
                    for _ in range(n))


def make_note(i: int, hpi: int = 2, course: int = 2, instructions: int = 1, ap: str = "ASSESSMENT AND PLAN:") -> str:
    """A MIMIC-shaped discharge note; ``hpi``/``course``/``instructions`` set section sizes (in
    sentences) and note ``i`` is unique (its number appears in the text)."""
    rng = random.Random(i)
    return (f"Name:  ___                     Unit No:   ___\n \nAdmission Date:  ___   Discharge Date:   ___\n \n"
            f"Service: MEDICINE\n \nAllergies: \nNo Known Allergies / Adverse Drug Reactions\n \nAttending: ___.\n \n"
            f"Chief Complaint:\ndyspnea, case {i}\n \nHistory of Present Illness:\n{_sentences(rng, hpi)}\n \n"
            f"Past Medical History:\n- invented condition {i % 7}\n \nSocial History:\n___\n"
            f"Physical Exam:\nVS: T 37.{i % 10} HR {60 + i % 40}\n \nPertinent Results:\n___ WBC-{5 + i % 9}.1\n \n"
            f"Brief Hospital Course:\n{_sentences(rng, course)}\n{ap}\n{_sentences(rng, 2)}\n \n"
            f"Medications on Admission:\n1. Furosemide 40 mg PO daily\n \nDischarge Medications:\n"
            f"1. Furosemide 40 mg PO daily\n \nDischarge Disposition:\nHome\n \nDischarge Diagnosis:\n"
            f"invented condition {i % 7}\n \nDischarge Condition:\nAlert and interactive.\n \n"
            f"Discharge Instructions:\nDear ___, {_sentences(rng, instructions)}\n \nFollowup Instructions:\n___\n")


def write_notes(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """``discharge.csv`` of (note_id, subject_id, text) rows, in MIMIC-IV-Note columns."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for k, (note_id, subject, text) in enumerate(rows):
            w.writerow([note_id, subject, str(20000000 + k), "DS", "1", "2180-01-01 00:00:00",
                        "2180-01-01 12:00:00", text])
    return path


def test_long_note_is_cut_at_the_papers_ends_not_dropped(tmp_path):
    note = make_note(7, hpi=60, course=3, instructions=60)
    prefix, rest = completion_pair(note)
    admission, discharge = discharge_pair(note)
    # over every old limit: the old filters dropped this note from both tasks
    assert len(prefix) > 3000 and len(rest) > 2000 and len(admission) > 3000 and len(discharge) > 2000
    limits = Limits()
    context, response, context_cut, response_cut = make_example(note, "completion", limits)
    assert len(context) == 3000 and context == prefix[-3000:]  # the END of the first half is kept
    assert not prefix.startswith(context) and context_cut
    assert len(response) == 2000 and response == rest[:2000] and response_cut  # the continuation's start
    context, response, context_cut, response_cut = make_example(note, "discharge", limits)
    assert len(context) == 3000 and context == admission[:3000]
    assert context.startswith("Allergies:\n") and "\n\nChief Complaint:\ndyspnea, case 7\n" in context[:200]
    assert len(response) == 2000 and response == discharge[:2000] and context_cut and response_cut
    assert response.startswith("Brief Hospital Course:\n") and "\n\nASSESSMENT AND PLAN:\n" in response
    # through the task: 20 patients of such notes, every note kept (cut), the cuts counted
    path = write_notes(tmp_path / "discharge.csv", [(f"{100 + i}-DS-1", str(100 + i),
                                                     make_note(i, hpi=60, course=3, instructions=60))
                                                    for i in range(20)])
    for name, mode in (("clinical_completion", "completion"), ("clinical_discharge", "discharge")):
        stats: dict[str, int] = {}
        train = get_task(name).load("train", paths={"notes": str(path)}, stats=stats)
        assert stats["notes"] == 20 and not any(k.startswith("dropped_") and v for k, v in stats.items())
        assert len(train) == stats["kept"] == stats["context_cut"] == stats["response_cut"] == 16
        assert {(len(ex["context"]), len(ex["response"])) for ex in train} == {(3000, 2000)}
        note_of = {f"{100 + i}-DS-1": make_note(i, hpi=60, course=3, instructions=60) for i in range(20)}
        for ex in train:
            assert make_example(note_of[ex["id"]], mode, limits)[:2] == (ex["context"], ex["response"])


def test_assessment_and_plan_is_a_discharge_section():
    for header in ("ASSESSMENT AND PLAN:", "Assessment & Plan:", "___ and Plan:"):
        note = make_note(3, ap=header)
        sections = parse_sections(note)
        plan = [s for s in sections if s.name == "assessment_and_plan"]
        assert len(plan) == 1 and plan[0].header == header, header
        admission, discharge = discharge_pair(note)
        assert f"\n\n{header}\n" in discharge and header not in admission
        at = discharge.index
        assert at("Brief Hospital Course:") < at(header) < at("Discharge Medications:")
    # "and" alone is no header; a masked word plus "and" needs a real word
    assert [s.name for s in parse_sections("Chief Complaint:\nx\n___ and ___:\ny\n")] == ["chief_complaint"]


def test_bad_rows_and_bad_settings_name_the_problem(tmp_path):
    path = write_notes(tmp_path / "d.csv", [("1-DS-1", "1", make_note(1)), ("2-DS-1", "", make_note(2))])
    with pytest.raises(ValueError, match=r"d\.csv: record 2 .*note_id '2-DS-1'.*empty subject_id"):
        list(read_discharge_notes(path))
    good = write_notes(tmp_path / "ok.csv", [("1-DS-1", "1", make_note(1))])
    with pytest.raises(ValueError, match="max_context_chars must be null or an integer >= min_context_chars"):
        get_task("clinical_completion").load("train", paths={"notes": str(good)}, max_context_chars=50)
    mix = get_task("clinical_mix")
    with pytest.raises(ValueError, match="exceeds task clinical_completion's max_field_chars 4000"):
        mix.load("train", paths={"notes": str(good)}, max_context_chars=5000)
    with pytest.raises(ValueError, match="tasks must map modes"):
        mix.load("train", paths={"notes": str(good)}, tasks={"summary": "clinical_discharge"})
    with pytest.raises(ValueError, match="task pubmedqa: clinical_mix needs a template"):
        mix.load("train", paths={"notes": str(good)}, tasks={"completion": "pubmedqa"})


def _mix_notes(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """40 patients, 3 notes each: a long one (cut), a short one (kept whole) and an addendum
    (dropped by both tasks); one training patient's short note is a copy of a test patient's note."""
    rows = []
    for p in range(40):
        subject = str(5000 + p)
        rows.append((f"{subject}-DS-1", subject, make_note(p, hpi=60, course=3, instructions=60)))
        rows.append((f"{subject}-DS-2", subject, make_note(1000 + p)))
        rows.append((f"{subject}-DS-3", subject, f"Addendum {p}: agree with plan."))
    split = patient_split([r[1] for r in rows])
    test_subject = min(s for s, v in split.items() if v == "test")
    train_subject = min(s for s, v in split.items() if v == "train")
    copied = next(r[2] for r in rows if r[1] == test_subject)
    rows = [(n, s, copied if n == f"{train_subject}-DS-2" else t) for n, s, t in rows]
    return write_notes(tmp_path / "discharge.csv", rows), {n: t for n, s, t in rows}


def test_clinical_mix_holds_both_tasks_with_caps_counts_and_their_own_templates(tmp_path):
    path, _ = _mix_notes(tmp_path)
    mix = get_task("clinical_mix")
    splits, stats = {}, {}
    for split in ("train", "validation", "test"):
        stats[split] = {}
        splits[split] = mix.load(split, paths={"notes": str(path)}, completion_max_samples=50, stats=stats[split])
    st = stats["train"]
    for mode in ("completion", "discharge"):
        # 36 training+validation patients x 2 notes, minus the copy of a test note
        assert st[f"{mode}_pool"] == 71 and st[f"{mode}_dropped_same_as_test"] == 1
        assert st[f"{mode}_dropped_context_too_short"] == 40  # every addendum, counted per task
    assert st["completion_pool_kept"] == 50 and st["discharge_pool_kept"] == 71  # caps 50 / all
    for split in ("train", "validation"):
        by_task = Counter(ex["task"] for ex in splits[split])
        s = stats[split]
        assert by_task == {"clinical_completion": s["completion_kept"], "clinical_discharge": s["discharge_kept"]}
        assert s["examples"] == len(splits[split]) == s["completion_kept"] + s["discharge_kept"]
    assert stats["train"]["completion_kept"] + stats["validation"]["completion_kept"] == 50
    assert stats["train"]["discharge_kept"] + stats["validation"]["discharge_kept"] == 71
    assert stats["validation"]["discharge_kept"] > 0 and stats["validation"]["completion_kept"] > 0
    assert stats["test"]["completion_kept"] == stats["test"]["discharge_kept"] == 8  # 4 test patients x 2 notes
    long_in_train = sum(ex["id"].endswith("-DS-1/completion") for ex in splits["train"])
    assert st["completion_context_cut"] == st["completion_response_cut"] == long_in_train > 0
    # the tasks are interleaved, and each example is rendered exactly as its own task renders it
    order = [ex["task"] for ex in splits["train"]]
    assert order != sorted(order) and order != sorted(order, reverse=True)
    for split_examples in splits.values():
        for ex in split_examples:
            own = get_task(ex["task"])
            assert mix.render(ex) == own.render({k: ex[k] for k in ("id", "subject_id", "context", "response")})
    discharge = [ex for ex in splits["train"] if ex["task"] == "clinical_discharge"]
    assert all("ASSESSMENT AND PLAN:" in mix.render(ex)[1] for ex in discharge)
    # the test split is the single tasks' test split, note for note
    for name in ("clinical_completion", "clinical_discharge"):
        single = get_task(name).load("test", paths={"notes": str(path)})
        assert sorted(ex["note_id"] for ex in splits["test"] if ex["task"] == name) == sorted(ex["id"] for ex in single)


def test_clinical_mix_train_and_test_share_no_patient_and_no_note_text(tmp_path):
    path, text_of = _mix_notes(tmp_path)
    mix = get_task("clinical_mix")
    splits = {split: mix.load(split, paths={"notes": str(path)}) for split in ("train", "validation", "test")}
    subjects = {k: {ex["subject_id"] for ex in v} for k, v in splits.items()}
    texts = {k: {text_of[ex["note_id"]].strip() for ex in v} for k, v in splits.items()}
    for other in ("train", "validation"):
        assert subjects[other] and not subjects[other] & subjects["test"]
        assert texts[other] and not texts[other] & texts["test"]
    assert not subjects["train"] & subjects["validation"]
    # the planted copy is real: a test note's text also sits under a training patient
    assert len(set(text_of.values())) == len(text_of) - 1


def test_sft_counts_per_task_reach_the_sft_statistics(tmp_path):
    path, _ = _mix_notes(tmp_path)

    class CharTokenizer:  # one token a character: enough to check masks and counts
        eos_id = 0

        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

        def decode(self, ids) -> str:
            return "".join(chr(i) for i in ids)

    mix = get_task("clinical_mix")
    stats: dict[str, int] = {}
    encoded = mix.sft_examples("train", CharTokenizer(), max_len=8192, paths={"notes": str(path)}, stats=stats)
    assert stats["encoded"] == len(encoded) == stats["completion_kept"] + stats["discharge_kept"]
    assert {"completion_context_cut", "discharge_response_cut", "completion_dropped_context_too_short",
            "discharge_pool_kept"} <= set(stats)
    examples = {ex["id"]: ex for ex in mix.load("train", paths={"notes": str(path)})}
    for enc in encoded:  # the loss covers the task's target (lead + response) and EOS, nothing else
        ex = examples[enc.meta["id"]]
        assert enc.response_tokens == len(mix.render(ex)[1]) + 1


def test_eval_samples_500_seeded_notes_per_task(tmp_path):
    rows = [(f"{7000 + p}-DS-{k}", str(7000 + p), make_note(p * 10 + k)) for p in range(1000) for k in range(6)]
    path = write_notes(tmp_path / "discharge.csv", rows)
    backwards = write_notes(tmp_path / "reversed.csv", rows[::-1])
    for name in ("clinical_completion", "clinical_discharge"):
        task = get_task(name)
        assert task.loader_args["test_max_samples"] == 500  # paper 2, appendix A5.2
        stats: dict[str, int] = {}
        test = task.load("test", paths={"notes": str(path)}, stats=stats)
        assert len(test) == 500 and stats["eligible"] == 600  # 100 test patients x 6 notes
        ids = [ex["id"] for ex in test]
        assert ids == [ex["id"] for ex in task.load("test", paths={"notes": str(path)})]  # stable
        assert sorted(ids) == sorted(ex["id"] for ex in task.load("test", paths={"notes": str(backwards)}))
        # pinned, so that results of different runs and versions are on the same 500 notes
        assert sorted(ids)[:3] == ["7001-DS-0", "7001-DS-1", "7001-DS-2"]
        assert hashlib.sha256(" ".join(sorted(ids)).encode()).hexdigest()[:16] == "0c202aab44576d40"
        other = task.load("test", paths={"notes": str(path)}, seed=7)
        assert len(other) == 500 and {ex["id"] for ex in other} != set(ids)


def test_recipes_use_the_mix_and_500_notes():
    from biomamba.config import read_yaml

    repo = Path(__file__).resolve().parents[1]
    sft = read_yaml(repo / "configs" / "sft" / "clinical.yaml")
    assert sft["task"] == "clinical_mix"
    assert sft["task_args"] == {"completion_max_samples": 20000, "discharge_max_samples": None}
    ev = read_yaml(repo / "configs" / "eval" / "clinical.yaml")
    assert ev["task"] in ("clinical_completion", "clinical_discharge") and ev["task_args"]["test_max_samples"] == 500
    assert ev["max_new_tokens"] == 128
