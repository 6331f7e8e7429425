"""The shipped demo corpus is exactly what the generator writes (so it cannot drift from the code),
and its yes/no test questions can only be answered from what the abstracts state."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re

from biomamba.data.medline import read_medline
from biomamba.data.records import Delete, Doc
from biomamba.demo_corpus import DEMO_DATA, write_demo_corpus
from biomamba.tasks import get_task
from biomamba.tasks.common import normalize_question


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


# ---- the closed-book design: test facts live in the abstracts only -----------------------------
YESNO_PATHS = {"train": "bioasq/demo-training.json", "test": "bioasq/demo-golden.json",
               "pqal": "pubmedqa/demo-pqal.json", "test_ids": "pubmedqa/demo-test-ids.json"}


def _drug(question: str) -> str:
    return re.search(r"(\w+)\?$", question).group(1)  # every demo question ends with its drug


def _mentions(drug: str, text: str) -> bool:
    return re.search(rf"\b{drug}\b", text) is not None


def _abstracts() -> dict[int, str]:
    """PMID → title + abstract after the update file, read by the pipeline's own MEDLINE reader."""
    docs: dict[int, str] = {}
    for path in ("medline/demo-baseline.xml.gz", "medline/demo-update.xml"):
        for event in read_medline(DEMO_DATA / path):
            if isinstance(event, Delete):
                docs.pop(event.record, None)
            elif isinstance(event, Doc):
                docs[event.record] = event.text
    return docs


def _yesno(split: str) -> list[dict]:
    return get_task("yesno_mix").load(split, paths=YESNO_PATHS, data_root=DEMO_DATA)


def test_generation_is_deterministic(tmp_path):
    a, b = write_demo_corpus(tmp_path / "a"), write_demo_corpus(tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / rel).read_bytes() == (b / rel).read_bytes() for rel in files)


def test_questions_are_distinct_one_per_drug():
    bioasq = [q["body"] for name in ("demo-training.json", "demo-golden.json")
              for q in json.loads((DEMO_DATA / "bioasq" / name).read_text())["questions"]]
    pqal = [item["QUESTION"] for item in json.loads((DEMO_DATA / "pubmedqa/demo-pqal.json").read_text()).values()]
    questions = bioasq + pqal
    assert len({normalize_question(q) for q in questions}) == len(questions) >= 200
    # one question per drug: a validation question carved from training never shares its fact
    assert len({_drug(q) for q in questions}) == len(questions)


# the real drugs an earlier demo corpus gave made-up effects: facts here are about invented drugs only
REAL_DRUGS = ("metformin", "atorvastatin", "lisinopril", "amoxicillin", "warfarin", "insulin glargine", "sertraline",
              "omeprazole", "levothyroxine", "prednisone", "ibuprofen", "tamoxifen", "remdesivir", "dapagliflozin",
              "apixaban", "semaglutide")


def test_no_real_drug_is_given_a_fictional_effect():
    notes = gzip.decompress((DEMO_DATA / "mimic/discharge.csv.gz").read_bytes()).decode().lower()
    texts = [t.lower() for t in _abstracts().values()] + [notes]
    assert not [d for d in REAL_DRUGS if any(d in t for t in texts)]


def _training_texts(test_ids: set[str]) -> list[str]:
    """Every question and context of the training files, sampled into the SFT mixture or not."""
    bioasq = json.loads((DEMO_DATA / "bioasq/demo-training.json").read_text())["questions"]
    pqal = json.loads((DEMO_DATA / "pubmedqa/demo-pqal.json").read_text())
    return ([q["body"] for q in bioasq] + [s["text"] for q in bioasq for s in q["snippets"]]
            + [text for pmid, item in pqal.items() if pmid not in test_ids
               for text in (item["QUESTION"], *item["CONTEXTS"])])


def test_each_test_fact_is_in_the_abstracts_only():
    train = _yesno("train") + _yesno("validation")
    test = _yesno("test")
    abstracts = _abstracts()
    training_texts = _training_texts({ex["id"] for ex in test})
    assert len(training_texts) > 2 * len(train)  # the raw files, beyond what the mixture sampled
    assert len(test) == 60 and len({_drug(ex["question"]) for ex in test}) == len(test)  # one question per fact
    for source in ("bioasq", "pubmedqa"):  # balanced, so majority-class guessing scores 0.5
        answers = [ex["answer"] for ex in test if ex["source"] == source]
        assert answers.count("yes") == answers.count("no") > 0
    for ex in test:
        drug = _drug(ex["question"])
        stated = {"yes": f"{drug} reduced", "no": f"{drug} did not reduce"}
        # in the abstracts: several studies, every one stating the gold answer and none the other
        texts = [t for t in abstracts.values() if _mentions(drug, t)]
        assert len(texts) >= 4, drug
        assert all(stated[ex["answer"]] in t and stated["no" if ex["answer"] == "yes" else "yes"] not in t
                   for t in texts), drug
        # not in its own context (background and methods only), not anywhere in the training items
        assert "reduc" not in ex["context"].lower(), ex["id"]
        assert not any(_mentions(drug, t["question"]) or _mentions(drug, t["context"]) for t in train), drug
        assert not any(_mentions(drug, t) for t in training_texts), drug
    # and the fine-tuning questions ask about facts the abstracts state too (SFT teaches the format)
    assert all(any(_mentions(_drug(t["question"]), a) for a in abstracts.values()) for t in train[:50])


def test_clinical_test_patients_take_drugs_no_training_note_mentions():
    task = get_task("clinical_discharge")

    def drugs(split: str) -> set[str]:
        notes = task.load(split, paths={"notes": "mimic/discharge.csv.gz"}, data_root=DEMO_DATA)
        return {re.search(r"Takes (\w+) at home", ex["context"]).group(1) for ex in notes}

    test = drugs("test")
    assert test and not test & (drugs("train") | drugs("validation"))
