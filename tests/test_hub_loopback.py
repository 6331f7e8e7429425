"""Hub ids are downloaded through the real huggingface_hub code path, against a loopback
server that speaks the few endpoints it uses (repo info, HEAD + GET of resolved files)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from biomamba.data.tokenizer import load_tokenizer
from biomamba.model import MambaLM, export_hf, load_model, model_preset
from helpers import randomize_weights

SHA = "0123456789abcdef0123456789abcdef01234567"


def _serve(repos: dict[str, Path]):
    """A minimal Hugging Face hub: repo id → local directory whose files it serves."""

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _file(self):
            for repo, root in repos.items():
                for prefix in (f"/{repo}/resolve/main/", f"/{repo}/resolve/{SHA}/"):
                    if self.path.startswith(prefix):
                        path = root / self.path[len(prefix):]
                        return path if path.is_file() else None
            return None

        def _send(self, body: bytes, content_type: str, head: bool = False, etag: str | None = None):
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Repo-Commit", SHA)
            self.send_header("ETag", f'"{etag or hashlib.sha256(body).hexdigest()}"')
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def do_HEAD(self):
            path = self._file()
            if path is None:
                self.send_response(404 if self.path != "/" else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send(path.read_bytes(), "application/octet-stream", head=True)

        def do_GET(self):
            route = self.path.split("?")[0]
            for repo, root in repos.items():
                files = sorted(root.iterdir())
                if route in (f"/api/models/{repo}/revision/main", f"/api/models/{repo}"):
                    info = {"id": repo, "sha": SHA, "siblings": [{"rfilename": p.name} for p in files]}
                    return self._send(json.dumps(info).encode(), "application/json")
                if route in (f"/api/models/{repo}/tree/{SHA}", f"/api/models/{repo}/tree/main"):
                    tree = [{"type": "file", "path": p.name, "size": p.stat().st_size,
                             "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in files]
                    return self._send(json.dumps(tree).encode(), "application/json")
            path = self._file()
            if path is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send(path.read_bytes(), "application/octet-stream")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_hub_id_downloads_model_and_tokenizer_from_the_endpoint(tmp_path, monkeypatch, neox_tokenizer_path):
    model = randomize_weights(MambaLM(model_preset("tiny")), seed=2)
    export_hf(model, tmp_path / "repo", tokenizer=load_tokenizer(neox_tokenizer_path))
    server = _serve({"state-spaces/mamba2-demo": tmp_path / "repo"})
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        import huggingface_hub.constants as hub_constants

        monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False, raising=False)
        loaded = load_model("state-spaces/mamba2-demo")
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        tok = load_tokenizer("state-spaces/mamba2-demo")
        assert tok.fingerprint() == load_tokenizer(neox_tokenizer_path).fingerprint()
        assert any((tmp_path / "cache").rglob("model.safetensors"))
    finally:
        server.shutdown()
