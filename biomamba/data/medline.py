"""MEDLINE/PubMed XML (NLM baseline and update files, efetch output), streamed citation by citation.

One document per citation: the title, then the abstract; labelled sections are kept as
``LABEL: text`` lines, inline markup (``<i>``, ``<sub>``, ``<sup>``, ...) is flattened with
``itertext``. The record id is the citation's PMID: the ``PMID`` that is a direct child of
``MedlineCitation`` (comments, corrections and references carry PMIDs of other articles).

Update semantics are applied by the build, across files in their given order: a later
version of a PMID replaces the earlier one, and ``DeleteCitation`` removes it. This reader
reports every citation it sees (kept or skipped, with its PMID) and every deletion.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Iterator

from biomamba.data.records import DataError, Delete, Doc, Event, Skip, open_binary, squash_spaces

_YEAR = re.compile(r"(1[5-9]|20)\d\d")
_NOT_AVAILABLE = {"[not available].", "[not available]", "not available"}


_ATTACHED = frozenset({"sub", "sup"})  # inline tags whose content attaches to the word before
_GLUE = re.compile(r"\s*\x00\s*")


def _flatten(elem: ET.Element) -> str:
    """``itertext`` with ``<sub>``/``<sup>`` boundaries marked (\\x00), so layout around them can go."""
    out = [elem.text or ""]
    for child in elem:
        mark = "\x00" if child.tag in _ATTACHED else ""
        out += [mark, _flatten(child), mark, child.tail or ""]
    return "".join(out)


def _text(elem: ET.Element | None) -> str:
    """All text inside ``elem``, inline markup flattened, whitespace squashed.

    Pretty-printed efetch output breaks lines around inline tags (``β\\n<sub>2</sub>``): a
    line break next to ``<sub>``/``<sup>`` is layout and is dropped (→ ``β2``); next to other
    tags (``<i>``, ``<b>``) it becomes a space.
    """
    if elem is None:
        return ""
    if len(elem) == 0:  # no inline markup: the common case
        return squash_spaces(elem.text or "")
    text = _flatten(elem)
    if "\x00" in text:
        text = _GLUE.sub(lambda m: "" if "\n" in m.group(0) else m.group(0).replace("\x00", ""), text)
    return squash_spaces(text)


def _year(article: ET.Element | None) -> int:
    if article is None:
        return 0
    for path in ("Journal/JournalIssue/PubDate/Year", "Journal/JournalIssue/PubDate/MedlineDate",
                 "ArticleDate/Year"):
        found = article.find(path)
        if found is not None and found.text:
            m = _YEAR.search(found.text)
            if m:
                return int(m.group(0))
    return 0


def _abstract(parent: ET.Element | None) -> str:
    """Abstract sections, each as ``LABEL: text`` when labelled, one per line."""
    if parent is None:
        return ""
    parts = []
    for section in parent.findall("Abstract/AbstractText"):
        body = _text(section)
        if not body:
            continue
        label = (section.get("Label") or "").strip()
        parts.append(f"{label}: {body}" if label and label.upper() != "UNLABELLED" else body)
    return "\n".join(parts)


def parse_citation(elem: ET.Element, languages: frozenset[str], require_abstract: bool,
                   exclude_types: frozenset[str], ordinal: int) -> Event:
    """A ``PubmedArticle`` (or ``PubmedBookArticle``) element → Doc or Skip."""
    if elem.tag == "PubmedBookArticle":
        holder = elem.find("BookDocument")
        article = holder
        title = _text(holder.find("ArticleTitle")) or _text(holder.find("Book/BookTitle")) if holder is not None else ""
        langs = [_text(x).lower() for x in holder.findall("Language")] if holder is not None else []
        types = [_text(x) for x in holder.findall("PublicationType")] if holder is not None else []
        year = _year(holder.find("Book")) if holder is not None else 0
    else:
        holder = elem.find("MedlineCitation")
        article = holder.find("Article") if holder is not None else None
        title = _text(article.find("ArticleTitle")) if article is not None else ""
        langs = [_text(x).lower() for x in article.findall("Language")] if article is not None else []
        types = [_text(x) for x in article.findall("PublicationTypeList/PublicationType")] if article is not None else []
        year = _year(article)
    pmid_elem = holder.find("PMID") if holder is not None else None  # direct child only
    pmid_text = (pmid_elem.text or "").strip() if pmid_elem is not None else ""
    if not pmid_text.isdigit():
        where = f"citation #{ordinal}"
        what = "has no MedlineCitation/PMID" if not pmid_text else f"has a non-numeric PMID {pmid_text!r}"
        return Skip(-1, "missing_field", where, f"{where} {what}", True)
    pmid = int(pmid_text)
    where = f"PMID {pmid}"
    if languages and not any(lang in languages for lang in langs):
        return Skip(pmid, "non_english" if languages == {"eng"} else "excluded_language", where)
    if exclude_types and any(t in exclude_types for t in types):
        return Skip(pmid, "excluded_publication_type", where)
    abstract = _abstract(article)
    if not abstract and require_abstract:
        return Skip(pmid, "no_abstract", where)
    if title.lower() in _NOT_AVAILABLE:
        title = ""
    text = "\n".join(p for p in (title, abstract) if p)
    if not text:
        return Skip(pmid, "empty", where)
    return Doc(pmid, text, year)


def read_medline(path: str | Path, languages: Iterable[str] = ("eng",), require_abstract: bool = True,
                 exclude_publication_types: Iterable[str] = ()) -> Iterator[Event]:
    """Stream a MEDLINE XML file (``.xml`` or ``.xml.gz``): citations and deletions, in file order."""
    path = Path(path)
    langs = frozenset(x.lower() for x in languages)
    exclude = frozenset(exclude_publication_types)
    last = "the start of the file"
    n_events = 0
    with open_binary(path) as f:
        try:
            # "end" events only (half the Python-level work of start+end); top-level elements are
            # cleared once used, so memory stays at one citation plus an empty shell per citation.
            for _, elem in ET.iterparse(f, events=("end",)):
                tag = elem.tag
                if tag == "PubmedArticle" or tag == "PubmedBookArticle":
                    n_events += 1
                    out = parse_citation(elem, langs, require_abstract, exclude, n_events)
                    if out.record >= 0:
                        last = f"PMID {out.record}"
                    elem.clear()
                    yield out
                elif tag == "DeleteCitation":
                    for pm in elem.findall("PMID"):
                        value = (pm.text or "").strip()
                        if value.isdigit():
                            n_events += 1
                            yield Delete(int(value))
                    elem.clear()
        except ET.ParseError as exc:
            line, col = exc.position
            if n_events == 0 and line <= 1 and col == 0:
                raise DataError(f"{path}: empty file (no XML)", reason="empty_file", file=str(path)) from None
            raise DataError(f"{path}: malformed XML at line {line}, column {col} (after {last}): {exc}",
                            reason="malformed_xml", file=str(path), where=f"line {line}") from None
        except DataError as exc:  # decompression failure from the guarded stream
            raise DataError(f"{exc} (after {last})", reason=exc.reason, file=str(path), where=last) from None
    if n_events == 0:
        raise DataError(f"{path}: no PubmedArticle or DeleteCitation elements (is this MEDLINE XML?)",
                        reason="empty_file", file=str(path))
