"""Fetching raw corpora: NLM's PubMed baseline (and update files) and Hugging Face dataset files.

NLM (``https://ftp.ncbi.nlm.nih.gov/pubmed/baseline/``): the directory listing gives the
``pubmedNNnXXXX.xml.gz`` files; each has a ``.md5`` beside it. Files are downloaded
``workers`` at a time into ``<download_dir>/<source>/``, resumed from a ``.part`` file with
an HTTP ``Range`` request, verified against their md5 (a mismatch is retried, then fails
naming the file and both checksums) and only then renamed into place. A completed download
leaves ``.complete``, so a later build can run offline from the local copy.

Hugging Face (``kind: hf``): the files of a dataset repository matching ``pattern`` (e.g.
``en/c4-train.*.json.gz`` of ``allenai/c4``), through ``huggingface_hub`` (which verifies
them). Offline, both fail with a message naming the files to fetch and the key to list them in.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from biomamba.data.config import DownloadConfig, SourceConfig
from biomamba.utils.io import file_digest
from biomamba.utils.net import hub_endpoint, unreachable_reason

log = logging.getLogger("biomamba.data")
_NLM_FILE = re.compile(r'href="(pubmed\d+n\d+\.xml\.gz)"')
_MD5 = re.compile(r"\b([0-9a-fA-F]{32})\b")
USER_AGENT = "biomamba-data/0.1"


class DownloadError(RuntimeError):
    """A download that cannot be completed; the message says what to do instead."""


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _get(url: str, timeout: float, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) URLs from the config


def list_nlm(url: str, timeout: float = 60.0) -> list[str]:
    """File names of an NLM directory listing (``pubmed*.xml.gz``), in natural order."""
    with _get(url, timeout) as resp:
        html = resp.read().decode("utf-8", "replace")
    return sorted(set(_NLM_FILE.findall(html)), key=_natural)


def fetch_md5(url: str, timeout: float = 60.0) -> str:
    """The md5 in an NLM ``.md5`` file (``MD5(name)= hex``, or ``hex  name``)."""
    with _get(url, timeout) as resp:
        text = resp.read().decode("ascii", "replace")
    m = _MD5.search(text.split("=")[-1]) or _MD5.search(text)
    if not m:
        raise DownloadError(f"{url}: no md5 checksum in {text[:80]!r}")
    return m.group(1).lower()


def download_file(url: str, dest: Path, md5: str | None = None, retries: int = 3, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``: resumable (``dest.part`` + Range), md5-verified, atomic rename."""
    dest = Path(dest)
    if dest.is_file() and (md5 is None or file_digest(dest, "md5") == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2 ** (attempt - 1), 30) * 0.5)
        have = part.stat().st_size if part.is_file() else 0
        try:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with _get(url, timeout, headers) as resp:
                resumed = have > 0 and resp.status == 206 and \
                    (resp.headers.get("Content-Range") or "").startswith(f"bytes {have}-")
                with open(part, "ab" if resumed else "wb") as f:
                    shutil.copyfileobj(resp, f, 1 << 20)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing left to fetch: the part is complete (or wrong: md5 decides)
                pass
            elif exc.code in (403, 404, 410):
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            else:
                last_error = f"HTTP {exc.code} {exc.reason}"
                continue
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            last_error = f"{type(exc).__name__}: {reason}"
            continue
        if md5 is not None:
            got = file_digest(part, "md5")
            if got != md5:
                part.unlink()
                last_error = f"md5 mismatch: expected {md5}, got {got}"
                continue
        os.replace(part, dest)
        return dest
    raise DownloadError(f"{url}: failed after {retries + 1} attempt(s): {last_error}")


def _offline_hint(source: str, what: str) -> str:
    return (f"Offline? Fetch {what} on a machine with network access and list the files in the config: "
            f"sources[{source}].paths (or --sources.{source}.paths=[/path/to/files/*])")


def _local_copy(dest: Path) -> list[Path] | None:
    marker = dest / ".complete"
    if not marker.is_file():
        return None
    names = json.loads(marker.read_text())["files"]
    paths = [dest / n for n in names]
    return paths if all(p.is_file() for p in paths) else None


def download_nlm(spec: DownloadConfig, dest: Path, source: str = "pubmed") -> list[Path]:
    """The PubMed baseline (+ update files) into ``dest``; returns the files in update order."""
    dirs = [("baseline", spec.url)] + ([("updatefiles", spec.updates_url)] if spec.include_updates else [])
    jobs: list[tuple[str, Path]] = []
    try:
        for sub, url in dirs:
            base = url if url.endswith("/") else url + "/"
            names = list_nlm(base, spec.timeout_s)
            if not names:
                raise DownloadError(f"{base}: the listing holds no pubmed*.xml.gz file")
            if spec.max_files is not None and sub == "baseline":
                names = names[: spec.max_files]
            jobs += [(base + n, dest / sub / n) for n in names]
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        local = _local_copy(dest)
        if local is not None:
            log.warning("cannot reach %s (%s); using the complete local copy in %s", spec.url, exc, dest)
            return local
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {spec.url} ({reason}). "
                            + _offline_hint(source, f"the PubMed baseline .xml.gz files from {spec.url}")) from None

    def one(job: tuple[str, Path]) -> Path:
        url, path = job
        checksum = fetch_md5(url + ".md5", spec.timeout_s)
        out = download_file(url, path, checksum, spec.retries, spec.timeout_s)
        out.with_name(out.name + ".md5").write_text(f"MD5({out.name})= {checksum}\n")
        return out

    log.info("downloading %d file(s) from %s into %s (%d at a time)", len(jobs), spec.url, dest, spec.workers)
    with ThreadPoolExecutor(spec.workers) as pool:
        results = list(pool.map(one, jobs))
    (dest / ".complete").write_text(json.dumps({"files": [str(p.relative_to(dest)) for p in results]}))
    return results


def download_hf(spec: DownloadConfig, dest: Path, source: str = "corpus") -> list[Path]:
    """Files of a Hugging Face dataset repository matching ``spec.pattern`` into ``dest``."""
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError:
        raise DownloadError("downloading Hugging Face datasets needs huggingface_hub: "
                            "pip install 'biomamba[hf]'") from None
    try:
        why = unreachable_reason(spec.endpoint or hub_endpoint(), min(spec.timeout_s, 10.0))
        if why is not None:  # fail fast: the hub client itself retries for ~20 s
            raise ConnectionError(why)
        names = HfApi(endpoint=spec.endpoint).list_repo_files(spec.dataset, repo_type="dataset",
                                                               revision=spec.revision)
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated: all end here
        local = _local_copy(dest)
        if local is not None:
            log.warning("cannot reach the Hugging Face hub (%s); using the complete local copy in %s",
                        type(exc).__name__, dest)
            return local
        raise DownloadError(
            f"could not list Hugging Face dataset {spec.dataset!r} ({type(exc).__name__}). "
            + _offline_hint(source, f"the files of {spec.dataset} matching {spec.pattern!r} (e.g. `hf download "
                                    f"{spec.dataset} --repo-type dataset --include '{spec.pattern}'`)")) from None
    matches = sorted(fnmatch.filter(names, spec.pattern), key=_natural)
    if spec.max_files is not None:
        matches = matches[: spec.max_files]
    if not matches:
        raise DownloadError(f"no file of dataset {spec.dataset} matches {spec.pattern!r} "
                            f"(it has e.g. {', '.join(names[:5])})")

    def one(name: str) -> Path:
        return Path(hf_hub_download(spec.dataset, name, repo_type="dataset", revision=spec.revision,
                                    local_dir=str(dest), endpoint=spec.endpoint))

    log.info("downloading %d file(s) of %s into %s", len(matches), spec.dataset, dest)
    with ThreadPoolExecutor(spec.workers) as pool:
        results = list(pool.map(one, matches))
    (dest / ".complete").write_text(json.dumps({"files": [str(p.relative_to(dest)) for p in results]}))
    return results


def download_source(src: SourceConfig, root: Path) -> list[Path]:
    """Download a source's files (per its download spec) under ``root/<source name>``."""
    if src.download.kind == "none":
        raise DownloadError(f"source {src.name} has no download spec")
    dest = Path(root).expanduser() / src.name
    if src.download.kind == "nlm_baseline":
        return download_nlm(src.download, dest, src.name)
    return download_hf(src.download, dest, src.name)
