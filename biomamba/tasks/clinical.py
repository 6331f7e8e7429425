"""Clinical generation on MIMIC-IV-Note discharge summaries (``discharge.csv`` / ``.csv.gz``).

* Reader: the csv module (note text is quoted and spans many lines), columns checked; a row
  without ``note_id`` or ``subject_id`` is an error naming the file and the record.
* Section parser: headers in their usual order (``../shared/data/README.md``), matched at the
  start of a line and followed by a colon, case-insensitive; masked variants where words read
  ``___`` (``___ Complaint:``) match when at least one word is real and the match is
  unambiguous (``Discharge ___:`` could be five headers: it still ends the previous section,
  named ``masked``). Repeated headers are kept as separate sections, in order; text before
  the first header is the ``preamble``. "Brief Hospital Course:" is its own (discharge)
  section, so it is never part of the pertinent results.
* Split by patient: the sorted unique ``subject_id`` s are shuffled with seed 42; 10 % are
  test, and 10 % of the rest are validation (carved from training patients); a patient's
  notes all land in one split. A training or validation example whose note text, or whose
  (context, response), equals a test one is dropped and counted (``dropped_same_as_test``),
  so train and test never share an item even across patients.
* Note completion: the first half of a note (cut at the first whitespace at or after the
  middle) → the rest. Discharge generation: admission sections → discharge sections
  (hospital course, assessment and plan, diagnosis, medications, condition, instructions).
* Limits (paper 2, appendix A5.2): a note is dropped (counted by reason) when its context is
  under 100 characters or its response under 50; a longer context is cut to 3,000
  characters and a longer response to 2,000, never dropped; cuts are counted
  (``context_cut``, ``response_cut``, among the examples returned). Which end is kept:
  ``KEEP``.
* Sampling: ``max_samples`` caps a split, ``test_max_samples`` the test split (500 notes a
  task at evaluation, paper 2, appendix A5.2), both seeded and independent of the file's row
  order (sampled in ``note_id`` order, returned in file order).
* ``load_clinical_mix``: both tasks in one SFT set (paper 2, appendix A5.2: 20,000 completion
  + ~12,893 discharge = 32,893 samples), one patient split for both, a cap per task, counts
  per task (``completion_*``, ``discharge_*``). Each example carries the ``cue`` ending its
  task's prompt and the ``lead`` starting its task's target, read from that task's YAML, so
  the mixture renders every example exactly as its own task does.

Nothing here logs or returns note text except inside the examples themselves.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from biomamba.tasks.common import Example, count, resolve_paths
from biomamba.tasks.prompts import Template

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
    ("assessment_and_plan", "Assessment and Plan"),  # often inside the hospital course; "&" matches "and"
    ("medications_on_admission", "Medications on Admission"),
    ("discharge_medications", "Discharge Medications"),
    ("discharge_disposition", "Discharge Disposition"),
    ("facility", "Facility"),
    ("discharge_diagnosis", "Discharge Diagnosis"),
    ("discharge_condition", "Discharge Condition"),
    ("discharge_instructions", "Discharge Instructions"),
    ("followup_instructions", "Followup Instructions"),
)
# paper 2, appendix A5.2: chief complaint, HPI, past medical history, medications, allergies,
# social and family history, physical exam, labs → hospital course, assessment and plan,
# discharge diagnosis, discharge medications, discharge instructions, discharge condition
ADMISSION_SECTIONS = ("chief_complaint", "history_of_present_illness", "past_medical_history",
                      "medications_on_admission", "allergies", "social_history", "family_history",
                      "physical_exam", "pertinent_results")
DISCHARGE_SECTIONS = ("brief_hospital_course", "assessment_and_plan", "discharge_diagnosis", "discharge_medications",
                      "discharge_condition", "discharge_instructions")

MASK = "___"


_FUNCTION_WORDS = {"of", "on", "or", "and"}  # a masked header needs a real content word ("___ of ___ ___:" is nothing)


def _header_word(word: str) -> str:
    if word.lower() == "and":
        return f"(?:and|&|{MASK})"
    if word.lower() in _FUNCTION_WORDS:
        return f"(?:{re.escape(word)}|{MASK})"
    return f"(?:({re.escape(word)})|{MASK})"


def _header_pattern(header: str) -> re.Pattern[str]:
    words = r"[ \t]+".join(_header_word(w) for w in header.split())
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
        for n, row in enumerate(reader, 1):
            if row.get("text") is None:
                raise ValueError(f"{path}: record {n} (ending at line {reader.line_num}): row has too few fields")
            for key in ("note_id", "subject_id"):  # the split and every count rest on these
                if not (row[key] or "").strip():
                    raise ValueError(f"{path}: record {n} (ending at line {reader.line_num}, note_id "
                                     f"{row['note_id']!r}): empty {key}")
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

# Which end of (context, response) a cut keeps, per mode. Responses keep their start: a target
# must begin where its prompt stops, and evaluation scores only 128 generated tokens. The
# completion context keeps its END: the continuation must follow the text just before it (a
# context cut at its end would leave a gap between prompt and target), and the eval template
# cuts the same side (truncate_side: left). The discharge context keeps its START: in note
# order allergies, chief complaint and HPI come first, labs last; its eval template also
# keeps the start.
KEEP: dict[str, tuple[str, str]] = {"completion": ("end", "start"), "discharge": ("start", "start")}

# paper 2, appendix A5.2
MIN_CONTEXT_CHARS, MIN_RESPONSE_CHARS = 100, 50
MAX_CONTEXT_CHARS, MAX_RESPONSE_CHARS = 3000, 2000
COMPLETION_SAMPLES = 20_000  # completion samples kept for SFT (discharge: all, ~12,893)
TEST_NOTES = 500  # random test notes a task at evaluation

# the task YAML whose template renders each mode inside clinical_mix
MIX_TASKS = {"completion": "clinical_completion", "discharge": "clinical_discharge"}


def cut_chars(text: str, max_chars: int | None, keep: str) -> str:
    """``text`` cut to at most ``max_chars`` characters, keeping its "start" or its "end"."""
    if max_chars is None or len(text) <= max_chars:
        return text
    if keep == "start":
        return text[:max_chars]
    if keep == "end":
        return text[len(text) - max_chars:]
    raise ValueError(f"keep must be 'start' or 'end', not {keep!r}")


@dataclass(frozen=True)
class Limits:
    """Length rules of an example, in characters (paper 2, appendix A5.2)."""

    min_context_chars: int = MIN_CONTEXT_CHARS
    min_response_chars: int = MIN_RESPONSE_CHARS
    max_context_chars: int | None = MAX_CONTEXT_CHARS
    max_response_chars: int | None = MAX_RESPONSE_CHARS

    def __post_init__(self) -> None:
        for part in ("context", "response"):
            lo, hi = getattr(self, f"min_{part}_chars"), getattr(self, f"max_{part}_chars")
            if not isinstance(lo, int) or lo < 0:
                raise ValueError(f"min_{part}_chars must be an integer >= 0, not {lo!r}")
            if hi is not None and (not isinstance(hi, int) or hi < max(lo, 1)):
                raise ValueError(f"max_{part}_chars must be null or an integer >= min_{part}_chars ({lo}), not {hi!r}")


@dataclass(frozen=True)
class _Candidate:
    """One note's example for one mode, before the split is chosen."""

    index: int  # the note's position in the files read
    note_id: str
    subject_id: str
    context: str
    response: str
    context_cut: bool
    response_cut: bool
    note_key: bytes  # digest of the note's text
    pair_key: bytes  # digest of (mode, context, response)

    def example(self) -> Example:
        return {"id": self.note_id, "subject_id": self.subject_id, "context": self.context,
                "response": self.response}


def _digest(*parts: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.digest()


def make_example(text: str, mode: str, limits: Limits) -> tuple[str, str, bool, bool] | str:
    """(context, response, context was cut, response was cut) of a note, or the reason it is
    dropped ("context_too_short" | "response_too_short"). The minimums apply before any cut."""
    context, response = MODES[mode](text)
    if len(context.strip()) < limits.min_context_chars:
        return "context_too_short"
    if len(response.strip()) < limits.min_response_chars:
        return "response_too_short"
    keep_context, keep_response = KEEP[mode]
    cut_context = cut_chars(context, limits.max_context_chars, keep_context)
    cut_response = cut_chars(response, limits.max_response_chars, keep_response)
    return cut_context, cut_response, cut_context != context, cut_response != response


@dataclass
class _Scan:
    subjects: list[str]  # per note read, in order
    note_keys: list[bytes]
    candidates: dict[str, list[_Candidate]]  # per mode


def _scan(notes: Any, modes: Sequence[str], limits: Limits, stats: dict[str, int],
          mode_stats: dict[str, dict[str, int]]) -> _Scan:
    """Read every note once; build each mode's candidate; count drops per mode."""
    scan = _Scan([], [], {m: [] for m in modes})
    for path in resolve_paths(notes):
        for row in read_discharge_notes(path):
            index = len(scan.subjects)
            count(stats, "notes")
            note_key = _digest(row["text"].strip())
            scan.subjects.append(row["subject_id"])
            scan.note_keys.append(note_key)
            for mode in modes:
                made = make_example(row["text"], mode, limits)
                if isinstance(made, str):
                    count(mode_stats[mode], f"dropped_{made}")
                    continue
                context, response, context_cut, response_cut = made
                scan.candidates[mode].append(_Candidate(index, row["note_id"], row["subject_id"], context, response,
                                                        context_cut, response_cut, note_key,
                                                        _digest(mode, context, response)))
    return scan


def _seeded_sample(items: Sequence[_Candidate], n: int | None, seed: int) -> list[_Candidate]:
    """At most ``n`` items: a seeded sample drawn in ``note_id`` order, so the same notes are
    chosen whatever the order of the file's rows or shards; returned in file order."""
    if n is None or len(items) <= n:
        return list(items)
    if n < 0:
        raise ValueError(f"a sample size must be null or >= 0, not {n}")
    ordered = sorted(items, key=lambda c: (c.note_id, c.index))
    picked = random.Random(seed).sample(ordered, n)
    return sorted(picked, key=lambda c: c.index)


def _drop_test_copies(items: Sequence[_Candidate], scan: _Scan, assignment: dict[str, str],
                      test_pairs: set[bytes], stats: dict[str, int]) -> list[_Candidate]:
    """Training/validation candidates minus those whose note text or (context, response) is
    also a test item (the same text under another subject_id)."""
    test_notes = {k for s, k in zip(scan.subjects, scan.note_keys) if assignment[s] == "test"}
    out = [c for c in items if c.note_key not in test_notes and c.pair_key not in test_pairs]
    count(stats, "dropped_same_as_test", len(items) - len(out))
    return out


def _count_cuts(chosen: Sequence[_Candidate], stats: dict[str, int]) -> None:
    stats["kept"] = len(chosen)
    stats["context_cut"] = sum(c.context_cut for c in chosen)
    stats["response_cut"] = sum(c.response_cut for c in chosen)


def _check_split(split: str) -> None:
    if split not in ("train", "validation", "test"):
        raise ValueError(f"clinical split must be train, validation or test, not {split!r}")


def load_clinical(notes: str | Path | Sequence[str | Path], mode: str, split: str, seed: int = 42,
                  test_fraction: float = 0.1, val_fraction: float = 0.1, min_context_chars: int = MIN_CONTEXT_CHARS,
                  min_response_chars: int = MIN_RESPONSE_CHARS, max_context_chars: int | None = MAX_CONTEXT_CHARS,
                  max_response_chars: int | None = MAX_RESPONSE_CHARS, max_samples: int | None = None,
                  test_max_samples: int | None = TEST_NOTES, stats: dict[str, int] | None = None) -> list[Example]:
    """Examples ``{"id": note_id, "subject_id", "context", "response"}`` of one patient-level split.
    ``stats``: notes, dropped_<reason> (over every note read), patients, eligible, kept,
    context_cut and response_cut (among those kept)."""
    if mode not in MODES:
        raise ValueError(f"clinical mode must be one of {sorted(MODES)}, not {mode!r}")
    _check_split(split)
    limits = Limits(min_context_chars, min_response_chars, max_context_chars, max_response_chars)
    stats = {} if stats is None else stats
    scan = _scan(notes, [mode], limits, stats, {mode: stats})
    assignment = patient_split(scan.subjects, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
    stats["patients"] = len(assignment)
    stats[f"patients_{split}"] = sum(v == split for v in assignment.values())
    candidates = scan.candidates[mode]
    chosen = [c for c in candidates if assignment[c.subject_id] == split]
    if split != "test":
        test_pairs = {c.pair_key for c in candidates if assignment[c.subject_id] == "test"}
        chosen = _drop_test_copies(chosen, scan, assignment, test_pairs, stats)
    stats["eligible"] = len(chosen)
    chosen = _seeded_sample(chosen, max_samples, seed)
    if split == "test":
        chosen = _seeded_sample(chosen, test_max_samples, seed)
    _count_cuts(chosen, stats)
    return [c.example() for c in chosen]


# ---- both tasks in one SFT set ---------------------------------------------------------------
def template_parts(task: str, template: Template, target: str) -> tuple[str, str]:
    """(cue, lead) of a task whose prompt is ``{context}`` + cue and whose target is lead +
    ``{response}`` (the clinical tasks' shape): what the mixture needs to render like it."""
    if template.fields != ["context"] or not template.text.startswith("{context}") or template.truncate != "context":
        raise ValueError(f"task {task}: clinical_mix needs a template '{{context}}<cue>' truncating context, "
                         f"not {template.text!r} (truncate: {template.truncate})")
    fields = [name for _, name, _, _ in string.Formatter().parse(target) if name]
    if fields != ["response"] or not target.endswith("{response}"):
        raise ValueError(f"task {task}: clinical_mix needs a target '<lead>{{response}}', not {target!r}")
    # .format() turns escaped braces ("{{") into the characters the task renders
    return template.text[len("{context}"):].format(), target[:-len("{response}")].format()


def load_clinical_mix(notes: str | Path | Sequence[str | Path], split: str,
                      parts: dict[str, tuple[str, Template, str]], seed: int = 42, test_fraction: float = 0.1,
                      val_fraction: float = 0.1, min_context_chars: int = MIN_CONTEXT_CHARS,
                      min_response_chars: int = MIN_RESPONSE_CHARS, max_context_chars: int | None = MAX_CONTEXT_CHARS,
                      max_response_chars: int | None = MAX_RESPONSE_CHARS,
                      completion_max_samples: int | None = COMPLETION_SAMPLES, discharge_max_samples: int | None = None,
                      test_max_samples: int | None = TEST_NOTES, stats: dict[str, int] | None = None) -> list[Example]:
    """Note completion and discharge generation together, for one SFT run (paper 2, appendix
    A5.2). ``parts``: mode → (task name, its template, its target); every example carries
    ``task`` (that name), ``cue`` and ``lead`` so the mixture renders it as that task does.

    One patient split serves both tasks. The per-task caps (``completion_max_samples``,
    ``discharge_max_samples``) apply to the training pool (train + validation patients, the
    paper's 32,893 before its 90/10 split), then the pool is divided by patient; the test
    split is ``test_max_samples`` seeded notes a task, the same ones the single tasks evaluate.
    The result is shuffled with ``seed``, so the tasks are interleaved in training.
    ``stats``: notes, patients, and per task ``<mode>_dropped_<reason>``, ``<mode>_pool`` and
    ``<mode>_pool_kept`` (train/validation), ``<mode>_eligible``, ``<mode>_kept``,
    ``<mode>_context_cut``, ``<mode>_response_cut``."""
    _check_split(split)
    unknown = sorted(set(parts) - set(MODES))
    if unknown or not parts:
        raise ValueError(f"clinical_mix: tasks must map modes {sorted(MODES)} to task names, got {sorted(parts)}")
    limits = Limits(min_context_chars, min_response_chars, max_context_chars, max_response_chars)
    forms = {}
    for mode, (name, template, target) in parts.items():
        cap = template.max_field_chars
        if cap is not None and (max_context_chars is None or max_context_chars > cap):
            # the mixture's template cannot know each task's cut side: contexts must fit both
            raise ValueError(f"clinical_mix: max_context_chars {max_context_chars} exceeds task {name}'s "
                             f"max_field_chars {cap}, so its rendering would cut contexts the mixture keeps")
        forms[mode] = (name, *template_parts(name, template, target))
    caps = {"completion": completion_max_samples, "discharge": discharge_max_samples}
    stats = {} if stats is None else stats
    per_mode: dict[str, dict[str, int]] = {m: {} for m in parts}
    scan = _scan(notes, list(parts), limits, stats, per_mode)
    assignment = patient_split(scan.subjects, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
    stats["patients"] = len(assignment)
    stats[f"patients_{split}"] = sum(v == split for v in assignment.values())
    out: list[Example] = []
    for mode, candidates in scan.candidates.items():
        s = per_mode[mode]
        if split == "test":
            chosen = [c for c in candidates if assignment[c.subject_id] == "test"]
            s["eligible"] = len(chosen)
            chosen = _seeded_sample(chosen, test_max_samples, seed)
        else:
            test_pairs = {c.pair_key for c in candidates if assignment[c.subject_id] == "test"}
            pool = [c for c in candidates if assignment[c.subject_id] != "test"]
            pool = _drop_test_copies(pool, scan, assignment, test_pairs, s)
            s["pool"] = len(pool)
            pool = _seeded_sample(pool, caps[mode], seed)
            s["pool_kept"] = len(pool)
            chosen = [c for c in pool if assignment[c.subject_id] == split]
            s["eligible"] = len(chosen)
        _count_cuts(chosen, s)
        name, cue, lead = forms[mode]
        out.extend({**c.example(), "id": f"{c.note_id}/{mode}", "note_id": c.note_id, "task": name, "cue": cue,
                    "lead": lead} for c in chosen)
    for mode, s in per_mode.items():
        stats.update({f"{mode}_{k}": v for k, v in s.items()})
    random.Random(seed).shuffle(out)
    return out
