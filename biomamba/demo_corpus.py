"""The embedded demo corpus: small, synthetic, written by us, in the real formats.

Everything the papers' method reads has a stand-in here, generated from templates with a
fixed seed, so the demo runs offline on a laptop and every format reader is exercised:

* ``medline/demo-baseline.xml.gz`` + ``medline/demo-update.xml``  MEDLINE/PubMed XML (update
  file revises one citation and deletes another)
* ``c4/c4-demo.jsonl``            C4-style web text (``{"text", "timestamp", "url"}``)
* ``wikitext/wiki-demo.raw``      WikiText raw format (`` = Title = `` headings)
* ``bioasq/demo-training.json`` + ``demo-golden.json``  BioASQ raw JSON, yes/no questions with snippets
* ``pubmedqa/demo-pqal.json`` + ``demo-test-ids.json``  PubMedQA PQA-L format (``ori_pqal.json`` shape)
* ``mimic/discharge.csv.gz``      MIMIC-IV-Note ``discharge.csv`` format, synthetic notes only

The biomedical facts are fictional: invented drugs (:func:`invented_drugs`, names such as
"kvalen"), invented genes (``SYNG1`` …), published in an invented *Journal of Synthetic
Medicine*. Each drug has one fact (:class:`Fact`), stated in every abstract about it: it
reduces its outcome ("… kvalen reduced mortality …") or it does not ("… kvalen did not
reduce mortality …").

The yes/no questions are closed-book, so that the demo measures what continued pretraining
adds: a question's context is its abstract's background (and, for PubMedQA, methods), which
never states the result, and the answer is knowledge a model can only have from reading the
abstracts. The drugs are split: fine-tuning questions ask about the *training* drugs only; the
test questions ask about the other drugs, one question per drug (the test items are independent
facts), which appear in no training question. SFT thus teaches the answer format on other
facts; the base model (general text only) cannot know a test drug's effect, the adapted one
(continued pretraining on the abstracts) can. Each drug is asked about once, so the validation
split carved from the training questions also asks about facts fine-tuning never showed. The
synthetic discharge notes follow the same facts (the home drug, named only in the admission
sections, is kept when it works and stopped when it does not), and the test patients take test
drugs. Test items sit where the loaders' seeded splits put the test set
(:func:`biomamba.tasks.yesno.paper_split`, :func:`biomamba.tasks.clinical.patient_split`).

``python -m biomamba.demo_corpus DIR`` writes the corpus; the shipped copy in
``biomamba/demo_data`` is checked against a fresh generation by the tests.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

SEED = 42
# The loaders' split settings (loader_args of biomamba/tasks/defs/yesno_mix.yaml and
# clinical_discharge.yaml): the generator puts the test items where those splits look for them.
PUBMEDQA_SPLIT_SEED, PUBMEDQA_TEST_FRACTION = 42, 0.2
CLINICAL_SPLIT_SEED, CLINICAL_TEST_FRACTION, CLINICAL_VAL_FRACTION = 42, 0.1, 0.1
DELETED_PMID = 39000001  # the citation the update file deletes: no question is asked about it

# invented drug names: a consonant cluster that English words and drug names rarely start with, a
# vowel, a consonant, a vowel and a final consonant ("kvalen", "zrumox"); short, so that the demo's
# tokenizer learns each name as one token (the effect is then a property of that one token)
_FIRST = ("kv", "zr", "vr", "tl", "dz", "zv", "xh", "qw")
_MIDDLE = ("b", "d", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("x", "n", "r", "l", "m", "s")
GENES = [f"SYNG{i}" for i in range(1, 11)]
CONDITIONS = ["type 2 diabetes", "hypertension", "heart failure", "chronic kidney disease", "asthma",
              "major depressive disorder", "atrial fibrillation", "breast cancer", "community-acquired pneumonia",
              "rheumatoid arthritis", "hypothyroidism", "obesity"]
OUTCOMES = ["mortality", "hospital readmission", "HbA1c", "systolic blood pressure", "symptom scores",
            "length of stay", "the risk of stroke", "tumour progression", "inflammatory markers", "body weight"]
PLURAL_OUTCOMES = ("symptom scores", "inflammatory markers")
DESIGNS = ["a randomized controlled trial", "a prospective cohort study", "a retrospective cohort study",
           "a multicentre randomized trial", "a meta-analysis of randomized trials"]
CITIES = ["Aldermoor", "Brisford", "Caldervale", "Dunmere", "Eastwick", "Fernholt", "Glenbury", "Harrowgate",
          "Ivybridge", "Kelsworth", "Larkhaven", "Marlowe"]
TOPICS_WEB = ["recipe", "travel", "review", "sports", "gardening", "tech"]
# where a drug is asked about: each drug in exactly one question, so the fine-tuning validation
# split (carved from training questions) also asks about facts that fine-tuning never showed
ROLES = ("train-bioasq", "train-pubmedqa", "test-bioasq", "test-pubmedqa")


@dataclass(frozen=True)
class Fact:
    """One invented drug and its one effect; ``role`` (one of :data:`ROLES`) names the file and
    split of the one question asked about it."""

    drug: str
    outcome: str
    reduces: bool
    role: str

    @property
    def answer(self) -> str:
        return "yes" if self.reduces else "no"


@dataclass(frozen=True)
class Study:
    """One abstract: a fact, tested in ``n`` adults with ``condition``."""

    pmid: int
    fact: Fact
    condition: str
    n: int
    year: int
    title: str
    sections: tuple[tuple[str, str], ...]

    @property
    def context(self) -> list[tuple[str, str]]:
        """The sections a question may show: background and methods, never results or conclusions."""
        return [s for s in self.sections if s[0] in ("BACKGROUND", "METHODS")]


def invented_drugs(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct made-up drug names, none inside another (so a name found in a text is that drug);
    8 × 5 × 12 × 5 × 6 = 14,400 are possible."""
    names: list[str] = []
    while len(names) < n:
        name = (rng.choice(_FIRST) + rng.choice(_VOWELS) + rng.choice(_MIDDLE) + rng.choice(_VOWELS)
                + rng.choice(_CODAS))
        if not any(name in other or other in name for other in names):
            names.append(name)
    return names


def demo_facts(rng: random.Random, counts: dict[str, int]) -> list[Fact]:
    """The corpus' ground truth, ``counts[role]`` drugs per role. Within each role half the drugs
    reduce their outcome (balanced classes); which ones, and each drug's outcome, are random, so
    nothing but the drug tells."""
    names = invented_drugs(rng, sum(counts[role] for role in ROLES))
    facts: list[Fact] = []
    for role in ROLES:
        count = counts[role]
        effects = [k % 2 == 0 for k in range(count)]
        rng.shuffle(effects)
        for reduces in effects:
            facts.append(Fact(names[len(facts)], rng.choice(OUTCOMES), reduces, role))
    return facts


def _abstract(rng: random.Random, fact: Fact, cond: str, n: int) -> tuple[str, tuple[tuple[str, str], ...]]:
    # The drug is always written in lower case after a space, as the questions write it, so that
    # the effect is learned on the same tokens the questions use.
    drug, outcome = fact.drug, fact.outcome
    design = rng.choice(DESIGNS)
    weeks = rng.choice([12, 24, 26, 52, 104])
    gene = rng.choice(GENES)
    p_sig = f"{rng.uniform(0.001, 0.04):.3f}"
    p_ns = f"{rng.uniform(0.12, 0.88):.2f}"
    hr_sig = f"{rng.uniform(0.55, 0.85):.2f}"
    hr_ns = f"{rng.uniform(0.93, 1.08):.2f}"
    title = f"In adults with {cond}, {drug} {'reduces' if fact.reduces else 'does not reduce'} {outcome}: {design}"
    sections = (
        ("BACKGROUND", (f"Adults with {cond} remain at high risk despite current therapy. Whether {drug} lowers "
                        f"{outcome} in this population is uncertain, and variants in {gene} may modify the response.")),
        ("METHODS", (f"We conducted {design} of {n} adults with {cond}. Participants received the investigational "
                     f"agent {drug} or usual care for {weeks} weeks. The primary outcome was {outcome}; {gene} "
                     f"genotype was recorded at baseline.")),
        ("RESULTS", (f"Compared with usual care, {drug} reduced {outcome} (hazard ratio {hr_sig}; P = {p_sig}). "
                     f"The effect was consistent across {gene} genotypes." if fact.reduces else
                     f"Compared with usual care, {drug} did not reduce {outcome} (hazard ratio {hr_ns}; "
                     f"P = {p_ns}). No difference was seen across {gene} genotypes.")),
        ("CONCLUSIONS", f"In adults with {cond}, {drug} {'reduced' if fact.reduces else 'did not reduce'} {outcome}."),
    )
    return title, sections


def question(study: Study, source: str) -> str:
    """The closed-book question about a study. The drug comes last, right before the answer cue;
    the study size and condition make each question unique, as in real QA sets."""
    f = study.fact
    was = "were" if f.outcome in PLURAL_OUTCOMES else "was"
    if source == "bioasq":
        return f"In the trial of {study.n} adults with {study.condition}, {was} {f.outcome} reduced by {f.drug}?"
    return f"Among {study.n} adults with {study.condition} in a trial, {was} {f.outcome} lower with {f.drug}?"


def _citation_xml(pmid: int, title: str, sections: list[tuple[str, str]] | None, year: int, lang: str = "eng",
                  ptype: str = "Randomized Controlled Trial") -> str:
    abstract = ""
    if sections:
        parts = "".join(f'<AbstractText Label="{label}" NlmCategory="{label}">{escape(text)}</AbstractText>'
                        for label, text in sections)
        abstract = f"<Abstract>{parts}</Abstract>"
    return (f'<PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM"><PMID Version="1">{pmid}</PMID>'
            f"<Article PubModel=\"Print\"><Journal><JournalIssue><PubDate><Year>{year}</Year></PubDate></JournalIssue>"
            f"<Title>Journal of Synthetic Medicine</Title></Journal><ArticleTitle>{escape(title)}</ArticleTitle>"
            f"{abstract}<Language>{lang}</Language><PublicationTypeList><PublicationType UI=\"D016449\">{ptype}"
            f"</PublicationType></PublicationTypeList></Article></MedlineCitation></PubmedArticle>\n")


def _web_text(rng: random.Random, i: int) -> str:
    topic = rng.choice(TOPICS_WEB)
    city = rng.choice(CITIES)
    if topic == "recipe":
        item = rng.choice(["lemon cake", "vegetable soup", "banana bread", "tomato pasta", "apple crumble"])
        return (f"This {item} is the easiest thing you will bake all week. Mix the flour, sugar and butter, add "
                f"{rng.randint(2, 4)} eggs and bake for {rng.randint(25, 55)} minutes. My family in {city} asks "
                f"for it every Sunday, and it keeps for {rng.randint(2, 5)} days in a tin.")
    if topic == "travel":
        return (f"We spent {rng.randint(2, 9)} days in {city} last summer. The old harbour is lovely at sunset, the "
                f"museum is free on Tuesdays, and the train from {rng.choice(CITIES)} takes about "
                f"{rng.randint(1, 4)} hours. Book the small hotel near the market if you can.")
    if topic == "review":
        product = rng.choice(["headphones", "coffee grinder", "hiking boots", "desk lamp", "backpack"])
        return (f"I bought these {product} {rng.randint(2, 11)} months ago. Build quality is good and the price "
                f"was fair, but the instructions were confusing. I would give them {rng.randint(3, 5)} stars and "
                f"buy them again.")
    if topic == "sports":
        return (f"{city} beat {rng.choice(CITIES)} {rng.randint(1, 5)}-{rng.randint(0, 3)} on Saturday in front of "
                f"{rng.randint(2, 40)},000 fans. The coach praised the defence and said the team would rest key "
                f"players before the cup match next week.")
    if topic == "gardening":
        plant = rng.choice(["tomatoes", "roses", "lettuce", "beans", "tulips"])
        return (f"Plant {plant} in a sunny spot after the last frost. Water them every {rng.randint(2, 4)} days, "
                f"feed them once a month, and watch for slugs after rain. Gardeners around {city} swear by a "
                f"layer of mulch.")
    device = rng.choice(["laptop", "phone", "router", "smart watch", "tablet"])
    return (f"If your {device} keeps freezing, restart it, install the latest update and free some storage. "
            f"Our shop in {city} sees this problem about {rng.randint(3, 30)} times a week, and a reset fixes "
            f"most cases.")


def _wiki_article(rng: random.Random, city: str) -> str:
    founded = rng.randint(900, 1850)
    river = rng.choice(["Aire", "Brent", "Cole", "Dane", "Eden", "Frome"])
    pop = rng.randint(5, 400) * 1000
    return (f" = {city} = \n\n {city} is a town on the River {river} with a population of about {pop:,} . It was "
            f"first recorded in {founded} as a market settlement . \n\n = = History = = \n\n The town grew around "
            f"its wool trade in the {founded // 100 + 1}th century . A railway station opened in "
            f"{rng.randint(1840, 1900)} , and the old bridge was rebuilt in {rng.randint(1900, 1990)} . \n\n"
            f" = = Geography = = \n\n {city} lies {rng.randint(3, 60)} km from the coast , on low hills above the "
            f"{river} valley . The climate is mild and wet . \n\n")


def _note(rng: random.Random, fact: Fact, cond: str) -> str:
    # The home drug is named only among the admission sections; the discharge sections say what
    # the abstracts say about it ("reduced" / "did not reduce") without naming it, so writing them
    # takes knowing the drug's effect, not copying its name.
    drug = fact.drug
    age = rng.randint(35, 90)
    sex = rng.choice(["M", "F"])
    cc = rng.choice(["shortness of breath", "chest pain", "fever and cough", "leg swelling", "confusion"])
    complaint_header = "Chief Complaint:" if rng.random() > 0.2 else "___ Complaint:"  # masked as in MIMIC
    days = rng.randint(2, 12)
    if fact.reduces:
        course = "The home medication reduced the symptoms and was continued."
        discharge_meds = "1. Home medication daily\n2. Aspirin 81 mg daily"
        instructions = "Please keep taking your home medication every day"
    else:
        course = "The home medication did not reduce the symptoms and was stopped."
        discharge_meds = "1. Aspirin 81 mg daily"
        instructions = "Please do not take your home medication again"
    return (
        f"Name:  ___                     Unit No:   ___\n\nAdmission Date:  ___              Discharge Date:   ___\n\n"
        f"Date of Birth:  ___             Sex:   {sex}\n\nService: MEDICINE\n\nAllergies: \n"
        f"{rng.choice(['No Known Allergies / Adverse Drug Reactions', 'Penicillins', 'Sulfa (Sulfonamide Antibiotics)'])}\n\n"
        f"Attending: ___.\n\n{complaint_header}\n{cc}\n\nMajor Surgical or Invasive Procedure:\nNone\n\n"
        f"History of Present Illness:\n{age} y/o {sex} with a history of {cond} presenting with {cc} for "
        f"{rng.randint(1, 7)} days. Takes {drug} at home. Denies recent travel.\n\n"
        f"Past Medical History:\n{cond.capitalize()}\nHyperlipidemia\n\nSocial History:\n___\n\n"
        f"Family History:\nNoncontributory.\n\nPhysical Exam:\nVS: T {rng.uniform(36.5, 38.9):.1f} "
        f"BP {rng.randint(100, 170)}/{rng.randint(60, 100)} HR {rng.randint(60, 120)} O2 {rng.randint(88, 99)}% RA\n"
        f"General: alert, in no acute distress.\n\nPertinent Results:\nWBC {rng.uniform(4, 16):.1f}, "
        f"Cr {rng.uniform(0.6, 2.5):.1f}, BNP {rng.randint(50, 3000)}\n\n"
        f"Brief Hospital Course:\nThe patient was admitted for {cc} in the setting of {cond}. {course} "
        f"The patient improved over {days} days.\n\n"
        f"Medications on Admission:\n1. {drug} daily\n\nDischarge Medications:\n{discharge_meds}\n\n"
        f"Discharge Disposition:\nHome\n\nDischarge Diagnosis:\n{cond.capitalize()}"
        f"\n\nDischarge Condition:\nMental Status: Clear and coherent.\nActivity Status: Ambulatory - Independent.\n\n"
        f"Discharge Instructions:\nYou were admitted for {cc}. {instructions} and see your doctor "
        f"within {rng.randint(1, 3)} weeks.\n\nFollowup Instructions:\n___\n"
    )


def write_demo_corpus(out: str | Path, n_train_bioasq: int = 120, n_test_bioasq: int = 40, n_test_pubmedqa: int = 20,
                      abstracts_per_drug: int = 5, n_web: int = 700, n_wiki: int = 150, n_notes: int = 160) -> Path:
    """Write the demo corpus into ``out`` (deterministic: same arguments → same bytes). One drug
    per question: ``n_train_bioasq`` BioASQ training questions, ``n_test_bioasq`` golden ones,
    ``5 × n_test_pubmedqa`` PQA-L items (the 80/20 paper split leaves ``n_test_pubmedqa`` in test)."""
    from biomamba.tasks.clinical import patient_split
    from biomamba.tasks.yesno import paper_split

    rng = random.Random(SEED)
    out = Path(out)
    for sub in ("medline", "c4", "wikitext", "bioasq", "pubmedqa", "mimic"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    n_pqal = 5 * n_test_pubmedqa
    facts = demo_facts(rng, {"train-bioasq": n_train_bioasq, "train-pubmedqa": n_pqal - n_test_pubmedqa,
                             "test-bioasq": n_test_bioasq, "test-pubmedqa": n_test_pubmedqa})

    # MEDLINE baseline: every drug in abstracts_per_drug studies (distinct sizes, so distinct
    # questions), in random order; plus citations the reader must skip (no abstract, non-English)
    plan = [(fact, rng.choice(CONDITIONS), n) for fact in facts for n in rng.sample(range(80, 2400), abstracts_per_drug)]
    rng.shuffle(plan)
    studies: list[Study] = []
    for i, (fact, cond, n) in enumerate(plan):
        title, sections = _abstract(rng, fact, cond, n)
        studies.append(Study(39000000 + i, fact, cond, n, rng.randint(2005, 2024), title, sections))
    records = [_citation_xml(s.pmid, s.title, list(s.sections), s.year) for s in studies]
    for j in range(12):
        records.append(_citation_xml(39900000 + j, f"Editorial comment number {j}", None, 2020, ptype="Editorial"))
    for j in range(6):
        records.append(_citation_xml(39950000 + j, "Etude clinique", [("RESUME", "Texte en francais.")], 2019, "fre"))
    baseline = ('<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE PubmedArticleSet>\n<PubmedArticleSet>\n'
                + "".join(records) + "</PubmedArticleSet>\n")
    with gzip.GzipFile(out / "medline" / "demo-baseline.xml.gz", "wb", mtime=0) as f:
        f.write(baseline.encode())
    first = studies[0]  # the revision restates the same study (same fact), as real revisions do
    revised_title, revised_sections = _abstract(rng, first.fact, first.condition, first.n)
    update = ('<?xml version="1.0" encoding="utf-8"?>\n<PubmedArticleSet>\n'
              + _citation_xml(first.pmid, revised_title + " (revised)", list(revised_sections), 2024)
              + f"<DeleteCitation><PMID Version=\"1\">{DELETED_PMID}</PMID></DeleteCitation>\n</PubmedArticleSet>\n")
    (out / "medline" / "demo-update.xml").write_text(update)

    # general text
    with open(out / "c4" / "c4-demo.jsonl", "w") as f:
        for i in range(n_web):
            f.write(json.dumps({"text": _web_text(rng, i), "timestamp": "2019-04-25 12:57:54",
                                "url": f"https://example.org/post/{i}"}) + "\n")
    cities = [f"{rng.choice(CITIES)} {suffix}" for suffix in range(n_wiki)]
    (out / "wikitext" / "wiki-demo.raw").write_text(" \n" + "".join(_wiki_article(rng, c) for c in cities))

    # yes/no QA: one question per drug, about its first study (the revised citation in its
    # revised form, the deleted one never)
    asked: dict[str, Study] = {}
    for s in studies:
        if s.pmid != DELETED_PMID and s.fact.drug not in asked:
            asked[s.fact.drug] = s if s.pmid != first.pmid else Study(
                s.pmid, s.fact, s.condition, s.n, 2024, revised_title, revised_sections)

    def of_role(role: str) -> list[Study]:
        return [asked[f.drug] for f in facts if f.role == role]

    def bioasq_item(s: Study) -> dict:
        url = f"http://www.ncbi.nlm.nih.gov/pubmed/{s.pmid}"
        verb = "reduces" if s.fact.reduces else "does not reduce"
        ideal = f"In adults with {s.condition}, {s.fact.drug} {verb} {s.fact.outcome}."
        return {"id": f"demo{s.pmid:024d}"[-24:], "type": "yesno", "body": question(s, "bioasq"), "documents": [url],
                "snippets": [{"text": text, "document": url} for name, text in s.context if name == "BACKGROUND"],
                "exact_answer": s.fact.answer, "ideal_answer": [ideal]}

    for name, role in (("demo-training.json", "train-bioasq"), ("demo-golden.json", "test-bioasq")):
        items = [bioasq_item(s) for s in of_role(role)]
        rng.shuffle(items)
        (out / "bioasq" / name).write_text(json.dumps({"questions": items}))

    # PQA-L: the loader's paper split (and the official ids file, written to agree with it) puts
    # exactly the test drugs' questions in test
    test_pos = {int(p) for p in paper_split([str(i) for i in range(n_pqal)], PUBMEDQA_SPLIT_SEED,
                                            PUBMEDQA_TEST_FRACTION)[1]}
    pubmed_test, pubmed_train = of_role("test-pubmedqa"), of_role("train-pubmedqa")
    rng.shuffle(pubmed_test)
    rng.shuffle(pubmed_train)
    test_iter, train_iter = iter(pubmed_test), iter(pubmed_train)
    pqal, truth = {}, {}
    for pos in range(n_pqal):
        s = next(test_iter) if pos in test_pos else next(train_iter)
        label = s.fact.answer
        if pos not in test_pos and pos % 10 == 9:
            label = "maybe"  # PQA-L has "maybe"; the binary setting drops it (never from test)
        pqal[str(s.pmid)] = {"QUESTION": question(s, "pubmedqa"), "CONTEXTS": [text for _, text in s.context],
                             "LABELS": [name for name, _ in s.context], "MESHES": [s.condition.title()],
                             "YEAR": str(s.year), "final_decision": label,
                             "LONG_ANSWER": dict(s.sections)["CONCLUSIONS"]}
        if pos in test_pos:
            truth[str(s.pmid)] = label
    (out / "pubmedqa" / "demo-pqal.json").write_text(json.dumps(pqal))
    (out / "pubmedqa" / "demo-test-ids.json").write_text(json.dumps(truth))

    # synthetic MIMIC-IV discharge notes (never real ones): the test patients of the loader's
    # patient split take test drugs, the others training drugs
    subjects = [str(19000000 + i // 2) for i in range(n_notes)]
    split = patient_split(subjects, CLINICAL_SPLIT_SEED, CLINICAL_TEST_FRACTION, CLINICAL_VAL_FRACTION)
    train_facts = [f for f in facts if f.role.startswith("train")]
    test_facts = [f for f in facts if f.role.startswith("test")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"])
    for i, subject in enumerate(subjects):
        fact = rng.choice(test_facts if split[subject] == "test" else train_facts)
        writer.writerow([f"{subject}-DS-{i % 2 + 1}", subject, 29000000 + i, "DS", i % 2 + 1,
                         f"2180-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} 00:00:00",
                         f"2180-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} 12:00:00",
                         _note(rng, fact, rng.choice(CONDITIONS))])
    with gzip.GzipFile(out / "mimic" / "discharge.csv.gz", "wb", mtime=0) as f:
        f.write(buf.getvalue().encode())
    return out


def demo_texts(corpus: str | Path) -> list[str]:
    """Plain texts of every part of a demo corpus (markup stripped), for training its tokenizer."""
    import re
    from xml.sax.saxutils import unescape

    corpus = Path(corpus)
    xml = gzip.decompress((corpus / "medline" / "demo-baseline.xml.gz").read_bytes()).decode()
    texts = [unescape(t) for t in re.findall(r"<(?:ArticleTitle|AbstractText)[^>]*>(.*?)</", xml)]
    texts += [json.loads(line)["text"] for line in (corpus / "c4" / "c4-demo.jsonl").read_text().splitlines()]
    texts += (corpus / "wikitext" / "wiki-demo.raw").read_text().split("\n")
    bioasq = json.loads((corpus / "bioasq" / "demo-training.json").read_text())["questions"]
    texts += [q["body"] for q in bioasq]
    notes = gzip.decompress((corpus / "mimic" / "discharge.csv.gz").read_bytes()).decode()
    texts += [row["text"] for row in csv.DictReader(io.StringIO(notes))]
    return [t for t in texts if t.strip()]


def write_demo_tokenizer(corpus: str | Path, vocab_size: int = 2048) -> Path:
    """Train the demo's byte-level BPE tokenizer on the corpus; writes ``corpus/tokenizer.json``."""
    from biomamba.data.tokenizer import train_tokenizer

    return train_tokenizer(demo_texts(corpus), vocab_size=vocab_size).save(corpus)


DEMO_DATA = Path(__file__).resolve().parent / "demo_data"

if __name__ == "__main__":
    write_demo_corpus(sys.argv[1] if len(sys.argv) > 1 else DEMO_DATA)
