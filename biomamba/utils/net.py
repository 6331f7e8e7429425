"""Fail fast when the network is not there: the Hugging Face client retries for ~20 s first."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

HF_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    """The Hugging Face endpoint in use (``HF_ENDPOINT``, read at call time: a mirror or a test server)."""
    return os.environ.get("HF_ENDPOINT", HF_ENDPOINT).rstrip("/")


def unreachable_reason(url: str | None = None, timeout_s: float = 5.0) -> str | None:
    """None when ``url``'s server (default: the hub) answers (any HTTP status counts), else why
    not. Honours ``HF_HUB_OFFLINE=1`` for hub URLs, read at call time."""
    url = url or hub_endpoint()
    if os.environ.get("HF_HUB_OFFLINE") == "1" and url.startswith(hub_endpoint()):
        return "HF_HUB_OFFLINE=1"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
