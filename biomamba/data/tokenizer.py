"""Tokenizer loading: a local ``tokenizer.json`` (file or directory) or a Hugging Face hub id.

All ``state-spaces/mamba*`` checkpoints use the GPT-NeoX-20B tokenizer (50,277 tokens,
``<|endoftext|>`` = 0 serves as EOS and BOS, ``<|padding|>`` = 1).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer as _HFTokenizer

DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[EOS]")
_PAD_CANDIDATES = ("<|padding|>", "<pad>", "[PAD]")
_BOS_CANDIDATES = ("<s>", "<bos>", "[BOS]")  # none in GPT-NeoX: there EOS serves as BOS
_UNK_CANDIDATES = ("<unk>", "[UNK]")


class TokenizerNotFound(FileNotFoundError):
    pass


class Tokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer`` with the few things the toolkit needs."""

    def __init__(self, backend: _HFTokenizer, source: str, eos_token: str | None = None):
        # Plain text must never turn into special ids: the shared GPT-NeoX file registers words
        # such as "assistant" as added tokens, and a literal "<|endoftext|>" in a document is text.
        backend.encode_special_tokens = True
        self.backend = backend
        self.source = source
        vocab = backend.get_vocab(with_added_tokens=True)
        eos = eos_token or next((t for t in _EOS_CANDIDATES if t in vocab), None)
        if eos is None:
            raise ValueError(f"tokenizer {source} has no end-of-text token (looked for {_EOS_CANDIDATES})")
        self.eos_token = eos
        self.eos_id = vocab[eos]
        pad = next((t for t in _PAD_CANDIDATES if t in vocab), None)
        self.pad_token = pad if pad is not None else eos
        self.pad_id = vocab[self.pad_token]
        self.bos_token = next((t for t in _BOS_CANDIDATES if t in vocab), eos)
        self.bos_id = vocab[self.bos_token]
        self.unk_token = next((t for t in _UNK_CANDIDATES if t in vocab), eos)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (added tokens included)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def fingerprint(self) -> str:
        """SHA-256 of the canonical tokenizer JSON: two tokenizers with equal fingerprints tokenise alike."""
        return hashlib.sha256(self.backend.to_str().encode()).hexdigest()

    def save(self, directory: str | Path) -> Path:
        from biomamba.utils.io import atomic_path

        path = Path(directory) / "tokenizer.json"
        with atomic_path(path) as tmp:
            self.backend.save(str(tmp))
        return path

    def special_tokens(self) -> dict[str, str]:
        """The special tokens under the names ``transformers`` gives them."""
        return {"bos_token": self.bos_token, "eos_token": self.eos_token, "unk_token": self.unk_token,
                "pad_token": self.pad_token}

    def save_hf_config(self, directory: str | Path) -> None:
        """``tokenizer_config.json`` + ``special_tokens_map.json`` beside ``tokenizer.json``, so that
        ``AutoTokenizer.from_pretrained(directory)`` knows its special tokens (padding included)."""
        import json

        from biomamba.utils.io import atomic_write_text

        special = self.special_tokens()
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1_000_000, **special}
        atomic_write_text(Path(directory) / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        atomic_write_text(Path(directory) / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def _cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "tokenizer.json"), str)
    except Exception:  # noqa: BLE001
        return False


def load_tokenizer(name_or_path: str | Path = DEFAULT_TOKENIZER) -> Tokenizer:
    """Load from a ``tokenizer.json`` file, a directory holding one, or a hub id (downloaded)."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        try:
            return Tokenizer(_HFTokenizer.from_file(str(path)), str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path}: not a valid tokenizer.json ({exc})") from exc
    name = str(name_or_path)
    if not _looks_like_hub_id(name):
        raise TokenizerNotFound(f"tokenizer {name}: no such file or directory (expected tokenizer.json)")
    try:
        from huggingface_hub import hf_hub_download

        from biomamba.utils.net import hub_endpoint, unreachable_reason

        why = unreachable_reason()
        if why is not None and not _cached(name):
            raise ConnectionError(why)
        local = hf_hub_download(name, "tokenizer.json", endpoint=hub_endpoint())
    except Exception as exc:  # offline, unknown repo, no huggingface_hub
        raise TokenizerNotFound(
            f"could not download tokenizer {name!r} from the Hugging Face hub ({type(exc).__name__}). "
            f"Offline? Pass a local tokenizer.json or a directory holding one, e.g. "
            f"--tokenizer=/path/to/gpt-neox-20b/tokenizer.json"
        ) from exc
    return Tokenizer(_HFTokenizer.from_file(local), name)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer (GPT-NeoX style: ``<|endoftext|>`` = 0, ``<|padding|>`` = 1).

    Used by the offline demo, which cannot download the GPT-NeoX tokenizer; deterministic for
    the same texts and settings.
    """
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = _HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend, f"trained-bpe-{vocab_size}")
