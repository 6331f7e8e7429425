"""The PubMed baseline downloader against a loopback HTTP server (listing, md5, resume, corruption, offline)."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from biomamba.config import from_dict
from biomamba.data.build import build
from biomamba.data.config import DataConfig, DownloadConfig
from biomamba.data.download import DownloadError, download_file, download_hf, download_nlm, list_nlm

FIX = Path(__file__).parent / "fixtures" / "data" / "medline"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        if rng and srv.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.ranges = {}, [], True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def publish(httpd, name: str, body: bytes, md5: str | None = None, directory: str = "/pubmed/baseline/") -> None:
    httpd.files[directory + name] = body
    httpd.files[directory + name + ".md5"] = f"MD5({name})= {md5 or hashlib.md5(body).hexdigest()}\n".encode()
    names = sorted(k.rsplit("/", 1)[1] for k in httpd.files if k.startswith(directory) and k.endswith(".gz"))
    links = "".join(f'<a href="{n}">{n}</a> <a href="{n}.md5">{n}.md5</a><br>\n' for n in names)
    httpd.files[directory] = f"<html><body><pre>{links}</pre></body></html>".encode()


def url(httpd, path="/pubmed/baseline/") -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}{path}"


def test_baseline_listing_md5_parallel_resume_then_build(server, tmp_path, neox_tokenizer_path):
    baseline = (FIX / "baseline.xml").read_bytes()
    import gzip

    first = gzip.compress(baseline, mtime=0)
    second = (FIX / "update.xml.gz").read_bytes()
    publish(server, "pubmed25n0001.xml.gz", first)
    publish(server, "pubmed25n0002.xml.gz", second)
    assert list_nlm(url(server)) == ["pubmed25n0001.xml.gz", "pubmed25n0002.xml.gz"]
    dest = tmp_path / "dl" / "pubmed"
    (dest / "baseline").mkdir(parents=True)
    (dest / "baseline" / "pubmed25n0001.xml.gz.part").write_bytes(first[:100])  # an interrupted download
    cfg = from_dict(DataConfig, {
        "tokenizer": str(neox_tokenizer_path), "seq_len": 16, "val_sequences": 1, "max_val_fraction": 0.5,
        "workers": 1, "download_dir": str(tmp_path / "dl"),
        "sources": [{"name": "pubmed", "format": "medline",
                     "download": {"kind": "nlm_baseline", "url": url(server), "workers": 2}}]})
    manifest = build(cfg, tmp_path / "out")
    files = [Path(f["path"]) for f in manifest["sources"]["pubmed"]["files"]]
    assert [f.name for f in files] == ["pubmed25n0001.xml.gz", "pubmed25n0002.xml.gz"]
    assert files[0].read_bytes() == first and files[1].read_bytes() == second
    assert manifest["sources"]["pubmed"]["files"][0]["md5"] == hashlib.md5(first).hexdigest()
    assert ("/pubmed/baseline/pubmed25n0001.xml.gz", "bytes=100-") in server.requests  # resumed, not restarted
    assert (files[0].parent / "pubmed25n0001.xml.gz.md5").is_file() and not list(dest.rglob("*.part"))
    assert manifest["sources"]["pubmed"]["counts"]["kept"] == 4  # update semantics applied across the two files
    # already downloaded and verified: a re-run fetches only the listing and the md5 files
    server.requests.clear()
    download_nlm(cfg.sources[0].download, dest)
    assert {p for p, _ in server.requests} == {"/pubmed/baseline/", "/pubmed/baseline/pubmed25n0001.xml.gz.md5",
                                               "/pubmed/baseline/pubmed25n0002.xml.gz.md5"}


def test_corrupted_file_fails_md5_and_leaves_nothing(server, tmp_path):
    body = b"\x1f\x8b" + b"not the file the checksum describes" * 10
    publish(server, "pubmed25n0003.xml.gz", body, md5=hashlib.md5(b"the real file").hexdigest())
    spec = DownloadConfig(kind="nlm_baseline", url=url(server), retries=1, workers=1)
    with pytest.raises(DownloadError, match=r"pubmed25n0003\.xml\.gz: failed after 2 attempt\(s\): md5 mismatch: "
                                            r"expected [0-9a-f]{32}, got [0-9a-f]{32}"):
        download_nlm(spec, tmp_path / "pubmed")
    assert not list((tmp_path / "pubmed").rglob("pubmed25n0003*"))
    hits = [r for r in server.requests if r[0].endswith("0003.xml.gz")]
    assert len(hits) == 2  # retried once from scratch, then gave up


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    server.ranges = False
    body = bytes(range(256)) * 40
    server.files["/f.bin"] = body
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"garbage-prefix")
    download_file(url(server, "/f.bin"), dest, hashlib.md5(body).hexdigest())
    assert dest.read_bytes() == body
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(url(server, "/missing.bin"), tmp_path / "m.bin")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_errors_say_what_to_pass_instead(tmp_path):
    spec = DownloadConfig(kind="nlm_baseline", url=f"http://127.0.0.1:{_closed_port()}/pubmed/baseline/", retries=0)
    with pytest.raises(DownloadError, match=r"cannot reach http://127\.0\.0\.1:\d+/pubmed/baseline/ .*Offline\? .*"
                                            r"--sources\.pubmed\.paths="):
        download_nlm(spec, tmp_path / "pubmed", "pubmed")
    # a complete earlier download is used as it is
    (tmp_path / "pubmed" / "baseline").mkdir(parents=True)
    (tmp_path / "pubmed" / "baseline" / "a.xml.gz").write_bytes(b"x")
    (tmp_path / "pubmed" / ".complete").write_text('{"files": ["baseline/a.xml.gz"]}')
    assert download_nlm(spec, tmp_path / "pubmed", "pubmed") == [tmp_path / "pubmed" / "baseline" / "a.xml.gz"]
    hf = DownloadConfig(kind="hf", dataset="allenai/c4", pattern="en/c4-train.*.json.gz",
                        endpoint=f"http://127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"could not list Hugging Face dataset 'allenai/c4' .*Offline\? .*"
                                            r"en/c4-train\.\*\.json\.gz.*--sources\.c4\.paths="):
        download_hf(hf, tmp_path / "c4", "c4")
    assert time.monotonic() - start < 20


def test_cli_download(server, tmp_path, capsys):
    from biomamba.cli import main as cli

    publish(server, "pubmed25n0001.xml.gz", (FIX / "update.xml.gz").read_bytes())
    config = tmp_path / "d.yaml"
    config.write_text(f"sources:\n  - name: pubmed\n    format: medline\n    download:\n      kind: nlm_baseline\n"
                      f"      url: {url(server)}\n  - name: local\n    paths: [{FIX / 'baseline.xml'}]\n")
    assert cli(["data", "download", "--config", str(config), f"--download_dir={tmp_path / 'dl'}", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"pubmed: 1 file(s) under {tmp_path / 'dl' / 'pubmed' / 'baseline'}" in out
    assert "local: local paths, nothing to download" in out
    assert (tmp_path / "dl" / "pubmed" / ".complete").is_file()
