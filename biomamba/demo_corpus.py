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

The biomedical "facts" are invented and consistent within the corpus (each drug has a fixed
effect on each condition), so that a tiny model can learn something measurable: abstracts
state the effects, and yes/no questions ask about them with the abstract as context.
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
from pathlib import Path
from xml.sax.saxutils import escape

SEED = 42
DRUGS = ["metformin", "atorvastatin", "lisinopril", "amoxicillin", "warfarin", "insulin glargine", "sertraline",
         "omeprazole", "levothyroxine", "prednisone", "ibuprofen", "tamoxifen", "remdesivir", "dapagliflozin",
         "apixaban", "semaglutide"]
CONDITIONS = ["type 2 diabetes", "hypertension", "heart failure", "chronic kidney disease", "asthma",
              "major depressive disorder", "atrial fibrillation", "breast cancer", "community-acquired pneumonia",
              "rheumatoid arthritis", "hypothyroidism", "obesity"]
OUTCOMES = ["mortality", "hospital readmission", "HbA1c", "systolic blood pressure", "symptom scores",
            "length of stay", "the risk of stroke", "tumour progression", "inflammatory markers", "body weight"]
GENES = ["BRCA1", "TP53", "EGFR", "KRAS", "APOE", "CFTR", "HER2", "PCSK9", "IL6", "TNF"]
DESIGNS = ["a randomized controlled trial", "a prospective cohort study", "a retrospective cohort study",
           "a multicentre randomized trial", "a meta-analysis of randomized trials"]
CITIES = ["Aldermoor", "Brisford", "Caldervale", "Dunmere", "Eastwick", "Fernholt", "Glenbury", "Harrowgate",
          "Ivybridge", "Kelsworth", "Larkhaven", "Marlowe"]
TOPICS_WEB = ["recipe", "travel", "review", "sports", "gardening", "tech"]


def _effects(rng: random.Random) -> dict[tuple[str, str], tuple[str, str]]:
    """The corpus' ground truth: each (drug, condition) pair either reduces an outcome or does not."""
    return {(d, c): (rng.choice(OUTCOMES), rng.choice(["reduces", "does not reduce"]))
            for d in DRUGS for c in CONDITIONS}


def _abstract(rng: random.Random, drug: str, cond: str, outcome: str, effect: str,
              n: int) -> tuple[str, list[tuple[str, str]]]:
    design = rng.choice(DESIGNS)
    weeks = rng.choice([12, 24, 26, 52, 104])
    gene = rng.choice(GENES)
    p_sig = f"{rng.uniform(0.001, 0.04):.3f}"
    p_ns = f"{rng.uniform(0.12, 0.88):.2f}"
    hr_sig = f"{rng.uniform(0.55, 0.85):.2f}"
    hr_ns = f"{rng.uniform(0.93, 1.08):.2f}"
    reduced = effect == "reduces"
    title = (f"{drug.capitalize()} {'reduces' if reduced else 'does not reduce'} {outcome} in patients with "
             f"{cond}: {design}")
    sections = [
        ("BACKGROUND", f"Patients with {cond} remain at high risk despite current therapy. Whether {drug} "
                       f"lowers {outcome} in this population is uncertain, and variants in {gene} may modify the response."),
        ("METHODS", f"We conducted {design} of {n} adults with {cond}. Participants received {drug} or usual care "
                    f"for {weeks} weeks. The primary outcome was {outcome}; {gene} genotype was recorded at baseline."),
        ("RESULTS", (f"{drug.capitalize()} reduced {outcome} compared with usual care (hazard ratio {hr_sig}; "
                     f"P = {p_sig}). The effect was consistent across {gene} genotypes." if reduced else
                     f"{drug.capitalize()} did not reduce {outcome} compared with usual care (hazard ratio {hr_ns}; "
                     f"P = {p_ns}). No difference was seen across {gene} genotypes.")),
        ("CONCLUSIONS", (f"In patients with {cond}, {drug} reduced {outcome}." if reduced else
                         f"In patients with {cond}, {drug} did not reduce {outcome}.")),
    ]
    return title, sections


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


def _note(rng: random.Random, subject_id: int, seq: int, drug: str, cond: str) -> str:
    age = rng.randint(35, 90)
    sex = rng.choice(["M", "F"])
    cc = rng.choice(["shortness of breath", "chest pain", "fever and cough", "leg swelling", "confusion"])
    complaint_header = "Chief Complaint:" if rng.random() > 0.2 else "___ Complaint:"  # masked as in MIMIC
    days = rng.randint(2, 12)
    return (
        f"Name:  ___                     Unit No:   ___\n\nAdmission Date:  ___              Discharge Date:   ___\n\n"
        f"Date of Birth:  ___             Sex:   {sex}\n\nService: MEDICINE\n\nAllergies: \n"
        f"{rng.choice(['No Known Allergies / Adverse Drug Reactions', 'Penicillins', 'Sulfa (Sulfonamide Antibiotics)'])}\n\n"
        f"Attending: ___.\n\n{complaint_header}\n{cc}\n\nMajor Surgical or Invasive Procedure:\nNone\n\n"
        f"History of Present Illness:\n{age} y/o {sex} with a history of {cond} presenting with {cc} for "
        f"{rng.randint(1, 7)} days. Patient reports poor adherence to {drug}. Denies recent travel.\n\n"
        f"Past Medical History:\n{cond.capitalize()}\nHyperlipidemia\n\nSocial History:\n___\n\n"
        f"Family History:\nNoncontributory.\n\nPhysical Exam:\nVS: T {rng.uniform(36.5, 38.9):.1f} "
        f"BP {rng.randint(100, 170)}/{rng.randint(60, 100)} HR {rng.randint(60, 120)} O2 {rng.randint(88, 99)}% RA\n"
        f"General: alert, in no acute distress.\n\nPertinent Results:\nWBC {rng.uniform(4, 16):.1f}, "
        f"Cr {rng.uniform(0.6, 2.5):.1f}, BNP {rng.randint(50, 3000)}\n\n"
        f"Brief Hospital Course:\nThe patient was admitted for {cc} in the setting of {cond}. {drug.capitalize()} "
        f"was restarted and the patient improved over {days} days.\n\n"
        f"Medications on Admission:\n{drug.capitalize()} daily\n\nDischarge Medications:\n1. {drug.capitalize()} "
        f"daily\n2. Aspirin 81 mg daily\n\nDischarge Disposition:\nHome\n\nDischarge Diagnosis:\n{cond.capitalize()}"
        f"\n\nDischarge Condition:\nMental Status: Clear and coherent.\nActivity Status: Ambulatory - Independent.\n\n"
        f"Discharge Instructions:\nYou were admitted for {cc}. Please take {drug} every day and see your doctor "
        f"within {rng.randint(1, 3)} weeks.\n\nFollowup Instructions:\n___\n"
    )


def write_demo_corpus(out: str | Path, n_abstracts: int = 1200, n_web: int = 700, n_wiki: int = 150,
                      n_notes: int = 160) -> Path:
    """Write the demo corpus into ``out`` (deterministic: same arguments → same bytes)."""
    rng = random.Random(SEED)
    out = Path(out)
    for sub in ("medline", "c4", "wikitext", "bioasq", "pubmedqa", "mimic"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    effects = _effects(rng)
    pairs = sorted(effects)

    # MEDLINE baseline: abstracts, plus a few citations the reader must skip (no abstract, non-English)
    records, qa_items = [], []
    for i in range(n_abstracts):
        drug, cond = pairs[rng.randrange(len(pairs))]
        outcome, effect = effects[(drug, cond)]
        n = rng.randint(80, 2400)
        title, sections = _abstract(rng, drug, cond, outcome, effect, n)
        pmid = 39000000 + i
        year = rng.randint(2005, 2024)
        records.append(_citation_xml(pmid, title, sections, year))
        qa_items.append((pmid, f"{drug}|{n}", cond, outcome, effect, " ".join(text for _, text in sections), year))
    for j in range(12):
        records.append(_citation_xml(39900000 + j, f"Editorial comment number {j}", None, 2020, ptype="Editorial"))
    for j in range(6):
        records.append(_citation_xml(39950000 + j, "Etude clinique", [("RESUME", "Texte en francais.")], 2019, "fre"))
    baseline = ('<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE PubmedArticleSet>\n<PubmedArticleSet>\n'
                + "".join(records) + "</PubmedArticleSet>\n")
    with gzip.GzipFile(out / "medline" / "demo-baseline.xml.gz", "wb", mtime=0) as f:
        f.write(baseline.encode())
    revised_title, revised_sections = _abstract(rng, *pairs[0], *effects[pairs[0]], n=500)
    update = ('<?xml version="1.0" encoding="utf-8"?>\n<PubmedArticleSet>\n'
              + _citation_xml(39000000, revised_title + " (revised)", revised_sections, 2024)
              + "<DeleteCitation><PMID Version=\"1\">39000001</PMID></DeleteCitation>\n</PubmedArticleSet>\n")
    (out / "medline" / "demo-update.xml").write_text(update)

    # general text
    with open(out / "c4" / "c4-demo.jsonl", "w") as f:
        for i in range(n_web):
            f.write(json.dumps({"text": _web_text(rng, i), "timestamp": "2019-04-25 12:57:54",
                                "url": f"https://example.org/post/{i}"}) + "\n")
    cities = [f"{rng.choice(CITIES)} {suffix}" for suffix in range(n_wiki)]
    (out / "wikitext" / "wiki-demo.raw").write_text(" \n" + "".join(_wiki_article(rng, c) for c in cities))

    # yes/no QA: questions about the abstracts; the BioASQ part and the PubMedQA part use different abstracts
    rng.shuffle(qa_items)
    half = len(qa_items) // 2

    def question(drug_n: str, cond: str, outcome: str) -> str:
        drug, n = drug_n.split("|")  # the study size makes each question unique, as in real QA sets
        return f"In the study of {n} adults with {cond}, did {drug} reduce {outcome}?"

    bioasq = [
        {"id": f"demo{pmid:024d}"[-24:], "type": "yesno", "body": question(drug, cond, outcome),
         "documents": [f"http://www.ncbi.nlm.nih.gov/pubmed/{pmid}"],
         "snippets": [{"text": ctx, "document": f"http://www.ncbi.nlm.nih.gov/pubmed/{pmid}"}],
         "exact_answer": "yes" if effect == "reduces" else "no",
         "ideal_answer": [f"{drug.split('|')[0].capitalize()} {effect} {outcome} in {cond}."]}
        for pmid, drug, cond, outcome, effect, ctx, _ in qa_items[:half]]
    cut = len(bioasq) * 4 // 5  # BioASQ ships training sets and golden test batches separately
    (out / "bioasq" / "demo-training.json").write_text(json.dumps({"questions": bioasq[:cut]}))
    (out / "bioasq" / "demo-golden.json").write_text(json.dumps({"questions": bioasq[cut:]}))
    pqal, truth = {}, {}
    for k, (pmid, drug, cond, outcome, effect, ctx, year) in enumerate(qa_items[half:]):
        label = "yes" if effect == "reduces" else "no"
        if k % 10 == 9:
            label = "maybe"  # PQA-L has "maybe"; the binary setting drops it
        pqal[str(pmid)] = {"QUESTION": question(drug, cond, outcome), "CONTEXTS": [ctx],
                           "LABELS": ["RESULTS"], "MESHES": [cond.title()], "YEAR": str(year),
                           "final_decision": label, "LONG_ANSWER": f"{drug.split('|')[0].capitalize()} {effect} {outcome}."}
        if k % 3 == 0:
            truth[str(pmid)] = label
    (out / "pubmedqa" / "demo-pqal.json").write_text(json.dumps(pqal))
    (out / "pubmedqa" / "demo-test-ids.json").write_text(json.dumps(truth))

    # synthetic MIMIC-IV discharge notes (never real ones)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"])
    for i in range(n_notes):
        subject = 19000000 + i // 2
        drug, cond = rng.choice(DRUGS), rng.choice(CONDITIONS)
        writer.writerow([f"{subject}-DS-{i % 2 + 1}", subject, 29000000 + i, "DS", i % 2 + 1,
                         f"2180-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} 00:00:00",
                         f"2180-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} 12:00:00", _note(rng, subject, i, drug, cond)])
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
