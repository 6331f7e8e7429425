"""Clinical generation on MIMIC-IV-Note discharge summaries (``discharge.csv`` / ``.csv.gz``).

* Reader: the csv module (note text is quoted and spans many lines), columns checked.
* Section parser: headers in their usual order (``../shared/data/README.md``), matched at the
  start of a line and followed by a colon, case-insensitive; masked variants where words read
  ``___`` (``___ Complaint:``) match when at least one word is real and the match is
  unambiguous (``Discharge ___:`` could be five headers: it still ends the previous section,
  named ``masked``). Repeated headers are kept as separate sections, in order; text before
  the first header is the ``preamble``. "Brief Hospital Course:" is its own (discharge)
  section, so it is never part of the pertinent results.
* Split by patient: the sorted unique ``subject_id`` s are shuffled with seed 42; 10 % are
  test, and 10 % of the rest are validation (carved from training patients); a patient's
  notes all land in one split.
* Note completion: the first half of a note (cut at the first whitespace at or after the
  middle) → the rest. Discharge generation: admission sections → discharge sections.
  Filters: context ≥ 100 chars, response ≥ 50, context ≤ 3,000, response ≤ 2,000; every
  dropped note is counted by reason; ``max_samples`` caps a split (seeded sample).

Nothing here logs or returns note text except inside the examples themselves.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from biomamba.tasks.common import Example, cap_samples, count, resolve_paths

COLUMNS = ("note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text")

# (key, header as written), in their usual order in a note
SECTION_HEADERS: tuple[tuple[str, str], ...] = (
    ("allergies", "Allergies"),
    ("attending", "Attending"),
    ("chief_complaint", "Chief Complaint"),
    ("procedures", "Major Surgical or Invasive Procedure"),
    ("history_of_present_illness", "History of Present Illness"),
    ("past_medical_history", "Past Medical History"),
    ("social_history", "Social History"),
    ("family_history", "Family History"),
    ("physical_exam", "Physical Exam"),
    ("pertinent_results", "Pertinent Results"),
    ("brief_hospital_course", "Brief Hospital Course"),
    ("medications_on_admission", "Medications on Admission"),
    ("discharge_medications", "Discharge Medications"),
    ("discharge_disposition", "Discharge Disposition"),
    ("facility", "Facility"),
    ("discharge_diagnosis", "Discharge Diagnosis"),
    ("discharge_condition", "Discharge Condition"),
    ("discharge_instructions", "Discharge Instructions"),
    ("followup_instructions", "Followup Instructions"),
)
ADMISSION_SECTIONS = ("chief_complaint", "history_of_present_illness", "past_medical_history",
                      "medications_on_admission", "allergies", "social_history", "family_history",
                      "physical_exam", "pertinent_results")
DISCHARGE_SECTIONS = ("brief_hospital_course", "discharge_diagnosis", "discharge_medications",
                      "discharge_condition", "discharge_instructions")

MASK = "___"


_FUNCTION_WORDS = {"of", "on", "or"}  # a masked header needs a real content word ("___ of ___ ___:" is nothing)


def _header_pattern(header: str) -> re.Pattern[str]:
    words = r"[ \t]+".join(f"(?:{re.escape(w)}|{MASK})" if w.lower() in _FUNCTION_WORDS
                           else f"(?:({re.escape(w)})|{MASK})" for w in header.split())
    return re.compile(rf"^[ \t]*{words}[ \t]*:", re.IGNORECASE)


_PATTERNS = [(key, _header_pattern(header)) for key, header in SECTION_HEADERS]


@dataclass(frozen=True)
class Section:
    name: str  # a key of SECTION_HEADERS, "preamble", or "masked" (an ambiguous masked header)
    header: str  # the header as written in the note ("___ Complaint:"), "" for the preamble
    text: str


def _match_header(line: str) -> tuple[str, int] | None:
    """(section key, end of the header in the line) or None."""
    best: list[tuple[int, str, int]] = []
    for key, pattern in _PATTERNS:
        m = pattern.match(line)
        if m:
            real = sum(g is not None for g in m.groups())
            if real:
                best.append((real, key, m.end()))
    if not best:
        return None
    best.sort(reverse=True)
    if len(best) > 1 and best[0][0] == best[1][0]:
        return "masked", best[0][2]
    return best[0][1], best[0][2]


def parse_sections(text: str) -> list[Section]:
    """The note's sections in order (repeated headers kept); text on a header's own line after
    the colon belongs to that section."""
    sections: list[Section] = []
    name, header, body = "preamble", "", []
    for line in text.splitlines():
        hit = _match_header(line)
        if hit is None:
            body.append(line)
            continue
        sections.append(Section(name, header, "\n".join(body).strip()))
        name, end = hit
        header, body = line[:end].strip(), [line[end:]]
    sections.append(Section(name, header, "\n".join(body).strip()))
    if not sections[0].text:
        sections = sections[1:]  # an empty preamble is no section
    return sections


def join_sections(sections: Sequence[Section], names: Sequence[str]) -> str:
    """The sections of ``names`` in note order, each as ``header\\nbody``; empty ones skipped."""
    wanted = set(names)
    return "\n\n".join(f"{s.header}\n{s.text}" for s in sections if s.name in wanted and s.text)


# ---- reading ---------------------------------------------------------------------------------
def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_discharge_notes(path: str | Path) -> Iterator[dict[str, str]]:
    """Rows of ``discharge.csv(.gz)`` as dicts of the MIMIC-IV-Note columns."""
    path = Path(path)
    csv.field_size_limit(2**31 - 1)  # a note can exceed csv's 128 KiB default
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a MIMIC-IV-Note discharge file: columns {missing} missing "
                             f"(has {reader.fieldnames})")
        for row in reader:
            if row.get("text") is None:
                raise ValueError(f"{path}: line {reader.line_num}: row has too few fields")
            yield row


def patient_split(subject_ids: Sequence[str], seed: int = 42, test_fraction: float = 0.1,
                  val_fraction: float = 0.1) -> dict[str, str]:
    """subject_id → "train" | "validation" | "test": sorted unique ids shuffled with ``seed``;
    the first ``test_fraction`` are test, then ``val_fraction`` of the remaining are validation."""
    subjects = sorted(set(subject_ids), key=lambda s: (len(s), s))
    random.Random(seed).shuffle(subjects)
    n_test = round(len(subjects) * test_fraction)
    n_val = round((len(subjects) - n_test) * val_fraction)
    out = {s: "test" for s in subjects[:n_test]}
    out.update({s: "validation" for s in subjects[n_test:n_test + n_val]})
    out.update({s: "train" for s in subjects[n_test + n_val:]})
    return out


# ---- examples -------------------------------------------------------------------------------
def completion_pair(text: str) -> tuple[str, str]:
    """(first half, rest): cut at the first whitespace at or after the middle, so no word is
    split; the rest keeps its leading whitespace."""
    text = text.strip()
    mid = len(text) // 2
    m = re.compile(r"\s").search(text, mid)
    cut = m.start() if m else len(text)
    return text[:cut], text[cut:]


def discharge_pair(text: str) -> tuple[str, str]:
    """(admission sections, discharge sections) of a note."""
    sections = parse_sections(text)
    return join_sections(sections, ADMISSION_SECTIONS), join_sections(sections, DISCHARGE_SECTIONS)


MODES = {"completion": completion_pair, "discharge": discharge_pair}


def load_clinical(notes: str | Path, mode: str, split: str, seed: int = 42, test_fraction: float = 0.1,
                  val_fraction: float = 0.1, min_context_chars: int = 100, min_response_chars: int = 50,
                  max_context_chars: int = 3000, max_response_chars: int = 2000, max_samples: int | None = None,
                  stats: dict[str, int] | None = None) -> list[Example]:
    """Examples ``{"id": note_id, "subject_id", "context", "response"}`` of one patient-level split."""
    if mode not in MODES:
        raise ValueError(f"clinical mode must be one of {sorted(MODES)}, not {mode!r}")
    if split not in ("train", "validation", "test"):
        raise ValueError(f"clinical split must be train, validation or test, not {split!r}")
    stats = {} if stats is None else stats
    make = MODES[mode]
    subjects: list[str] = []
    candidates: list[Example] = []
    for path in resolve_paths(notes):
        for row in read_discharge_notes(path):
            count(stats, "notes")
            subjects.append(row["subject_id"])
            context, response = make(row["text"])
            n_context, n_response = len(context.strip()), len(response.strip())
            reason = None
            if n_context < min_context_chars:
                reason = "context_too_short"
            elif n_response < min_response_chars:
                reason = "response_too_short"
            elif n_context > max_context_chars:
                reason = "context_too_long"
            elif n_response > max_response_chars:
                reason = "response_too_long"
            if reason:
                count(stats, f"dropped_{reason}")
                continue
            candidates.append({"id": row["note_id"], "subject_id": row["subject_id"], "context": context,
                               "response": response})
    assignment = patient_split(subjects, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
    stats["patients"] = len(assignment)
    stats[f"patients_{split}"] = sum(v == split for v in assignment.values())
    chosen = [ex for ex in candidates if assignment[ex["subject_id"]] == split]
    stats["eligible"] = len(chosen)
    chosen = cap_samples(chosen, max_samples, seed=seed)
    stats["kept"] = len(chosen)
    return chosen
