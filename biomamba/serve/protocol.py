"""The OpenAI wire format: request validation, response bodies, errors and the chat template.

Everything a client sends is checked here, before any work is queued: an unknown field, a
wrong type, a non-finite or out-of-range number or a limit exceeded is a 4xx whose JSON body
has OpenAI's error shape (``{"error": {"message", "type", "param", "code"}}``) and names the
field. Nothing is accepted and silently ignored: a parameter we cannot honour (``n`` > 1,
penalties, ``logit_bias``, ``suffix``, logprobs on a stream) is refused with a message that
says so.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biomamba.generate import SamplingConfig

MAX_SEED = 2**63 - 1
MIN_TEMPERATURE = 1e-3  # below it sampling is greedy in effect, and at 1e-300 logits / T is inf: a NaN softmax
MAX_TEMPERATURE = 2.0  # OpenAI's range
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_MESSAGES = 512

# A plain role-prefixed transcript, used when neither the checkpoint (``chat_template`` in its
# tokenizer_config.json) nor ``--chat_template`` gives one. It is Jinja, like Hugging Face
# templates, so ``/tokenizer_info`` can hand it to clients (lm-evaluation-harness renders it
# itself): "System: …\nUser: …\nAssistant: …\nUser: …\nAssistant:".
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
# With the default template a base model would go on to write the user's next turn: stop there.
DEFAULT_CHAT_STOP = ["\nUser:", "\nSystem:"]


@dataclass
class ServeSettings:
    """The server's limits and timeouts (``biomamba serve --key=value``)."""

    model_name: str = "biomamba"  # the id clients pass as ``model``; /v1/models lists it
    max_batch: int = 64  # rows decoded together; a new request joins at the next step
    max_waiting: int = 4096  # prompts queued beyond the running batch before requests get 503
    prefill_tokens_per_step: int = 8192  # prompt tokens admitted between two decode steps
    # decode in the fixed slots of a captured step (CUDA graphs); None: on CUDA only (on the CPU
    # a step is not launch-bound, and the packed batch skips the unused slots' work)
    fixed_slots: bool | None = None
    max_prompt_tokens: int = 4096
    max_new_tokens: int = 2048  # the largest max_tokens a request may ask for
    max_prompts_per_request: int = 128
    max_body_bytes: int = 8 * 2**20
    max_logprobs: int = 20
    read_timeout_s: float = 30.0  # to send a request's head, and again its body
    idle_timeout_s: float = 30.0  # a keep-alive connection with no request is closed after this
    chat_template: str | None = None  # Jinja text or a file holding it; None: the checkpoint's, else the default

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_waiting", "prefill_tokens_per_step", "max_prompt_tokens", "max_new_tokens",
                     "max_prompts_per_request", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1")
        if self.max_logprobs < 0:
            raise ValueError("max_logprobs must be ≥ 0")
        for name in ("read_timeout_s", "idle_timeout_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds")


class APIError(Exception):
    """A request the server answers with ``status`` and OpenAI's error body; ``close`` ends the
    connection after the answer (the body was not read, so keep-alive cannot continue)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.close = status, message, param, code, close
        self.kind = kind or ("server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


# ---- field readers: each names the field in its error ------------------------------------------
class _Fields:
    """Reads typed fields out of a JSON object; ``unknown()`` lists the keys never read."""

    def __init__(self, body: Any, allowed: set[str]):
        if not isinstance(body, dict):
            raise bad("the request body must be a JSON object")
        self.body = body
        extra = sorted(set(body) - allowed)
        if extra:
            raise bad(f"unsupported parameter '{extra[0]}' (this server accepts: {', '.join(sorted(allowed))})",
                      extra[0])

    def get(self, name: str, default: Any = None) -> Any:
        value = self.body.get(name)
        return default if value is None else value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise bad(f"'{name}' must be true or false", name)
        return value

    def integer(self, name: str, default: int | None, lo: int, hi: int) -> int | None:
        value = self.get(name, default)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"'{name}' must be an integer", name)
        if not lo <= value <= hi:
            raise bad(f"'{name}' must be between {lo} and {hi}, got {value}", name)
        return value

    def number(self, name: str, default: float) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"'{name}' must be a number", name)
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float
            raise bad(f"'{name}' must be a finite number", name) from None
        if not math.isfinite(value):
            raise bad(f"'{name}' must be a finite number, got {value}", name)
        return value

    def zero_only(self, name: str) -> None:
        """Parameters we do not implement: accepted only at their no-op value."""
        value = self.get(name)
        if value is None:
            return
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            return
        raise bad(f"'{name}' is not supported by this server (only 0)", name)


@dataclass
class Sampling:
    """What both endpoints share: the decoding settings of a request."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: list[str]
    ignore_eos: bool
    stream: bool
    include_usage: bool

    def config(self) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, seed=self.seed, stop=list(self.stop))


_SAMPLING_FIELDS = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream",
                    "stream_options", "n", "presence_penalty", "frequency_penalty", "logit_bias", "user",
                    "ignore_eos"}


def _sampling(f: _Fields, settings: ServeSettings, max_tokens_name: str = "max_tokens",
              default_max_tokens: int = 16) -> Sampling:
    if f.integer("n", 1, 1, 2**31 - 1) != 1:
        raise bad("only n = 1 is supported (send the request again for more completions)", "n")
    f.zero_only("presence_penalty")
    f.zero_only("frequency_penalty")
    if f.get("logit_bias"):
        raise bad("'logit_bias' is not supported by this server", "logit_bias")
    user = f.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("'user' must be a string", "user")
    max_tokens = f.integer(max_tokens_name, min(default_max_tokens, settings.max_new_tokens), 0,
                           settings.max_new_tokens)
    temperature = f.number("temperature", 1.0)
    if temperature != 0 and not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        raise bad(f"'temperature' must be 0 (greedy) or between {MIN_TEMPERATURE} and {MAX_TEMPERATURE}, "
                  f"got {temperature}", "temperature")
    top_p = f.number("top_p", 1.0)
    if not 0 < top_p <= 1:
        raise bad(f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    top_k = f.integer("top_k", 0, -1, 2**31 - 1)
    seed = f.integer("seed", None, 0, MAX_SEED)
    stop = f.get("stop", [])
    stop = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop)):
        raise bad(f"'stop' must be a string or a list of at most {MAX_STOP_STRINGS} non-empty strings of at most "
                  f"{MAX_STOP_CHARS} characters", "stop")
    stream = f.boolean("stream", False)
    options = f.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad("'stream_options' is only allowed with stream: true", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise bad("'stream_options' may only hold 'include_usage'", "stream_options")
        include_usage = _Fields(options, {"include_usage"}).boolean("include_usage", False)
    return Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=max(top_k, 0),
                    # no seed: a fresh one, so that repeated sampled requests differ, as OpenAI's do
                    seed=secrets.randbits(63) if seed is None else seed, stop=stop,
                    ignore_eos=f.boolean("ignore_eos", False), stream=stream, include_usage=include_usage)


def check_model(f: _Fields, settings: ServeSettings) -> None:
    model = f.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise bad("'model' must be a string", "model")
    if model != settings.model_name:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{settings.model_name}'",
                       param="model", code="model_not_found")


@dataclass
class CompletionRequest:
    prompts: list[list[int]]  # token ids, one list per prompt
    sampling: Sampling
    logprobs: int | None  # top alternatives per token, or None for no logprobs
    echo: bool


def parse_completion(body: Any, settings: ServeSettings, encode: Callable[[str], list[int]],
                     vocab_size: int) -> CompletionRequest:
    """Validate a ``/v1/completions`` body; prompts are encoded (or checked, when given as ids)."""
    f = _Fields(body, _SAMPLING_FIELDS | {"prompt", "logprobs", "echo", "best_of", "suffix"})
    check_model(f, settings)
    if f.integer("best_of", 1, 1, 2**31 - 1) != 1:
        raise bad("only best_of = 1 is supported", "best_of")
    if f.get("suffix") is not None:
        raise bad("'suffix' is not supported by this server", "suffix")
    sampling = _sampling(f, settings)
    logprobs = f.integer("logprobs", None, 0, settings.max_logprobs)
    echo = f.boolean("echo", False)
    if sampling.stream and logprobs is not None:
        raise bad("'logprobs' is not supported with stream: true; ask without streaming", "logprobs")
    prompts = _prompts(f.body.get("prompt"), settings, encode, vocab_size)
    if sampling.stream and len(prompts) > 1:
        raise bad("streaming supports a single prompt per request", "prompt")
    return CompletionRequest(prompts=prompts, sampling=sampling, logprobs=logprobs, echo=echo)


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _prompts(prompt: Any, settings: ServeSettings, encode: Callable[[str], list[int]],
             vocab_size: int) -> list[list[int]]:
    """``prompt`` as OpenAI allows it: a string, a list of strings, a list of token ids, or a list
    of such lists."""
    if isinstance(prompt, str):
        items: list = [prompt]
    elif _is_ids(prompt) and prompt:
        items = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or (_is_ids(p) and p) for p in prompt):
        items = prompt
    else:
        raise bad("'prompt' must be a string, a non-empty list of strings, a list of token ids, or a list of "
                  "such lists", "prompt")
    if len(items) > settings.max_prompts_per_request:
        raise bad(f"{len(items)} prompts in one request; the limit is {settings.max_prompts_per_request}", "prompt")
    out = []
    for i, item in enumerate(items):
        ids = encode(item) if isinstance(item, str) else item
        if not isinstance(item, str) and not all(0 <= t < vocab_size for t in ids):
            raise bad(f"prompt {i} has a token id outside [0, {vocab_size})", "prompt")
        if len(ids) > settings.max_prompt_tokens:
            raise bad(f"prompt {i} has {len(ids)} tokens; the limit is {settings.max_prompt_tokens}", "prompt")
        out.append(ids)
    return out


# ---- chat ---------------------------------------------------------------------------------------
def load_chat_template(value: str | None, checkpoint_dir: Path | None = None) -> str:
    """The template text: ``value`` (Jinja, or a path to a file of it), else the checkpoint's
    ``tokenizer_config.json`` ``chat_template``, else ``DEFAULT_CHAT_TEMPLATE``."""
    import json

    if value:
        path = Path(value)
        if "{" not in value and path.is_file():
            return path.read_text()
        return value
    config = checkpoint_dir / "tokenizer_config.json" if checkpoint_dir is not None else None
    if config is not None and config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        if isinstance(template, str) and template:
            return template
    return DEFAULT_CHAT_TEMPLATE


class ChatTemplate:
    """A Jinja chat template, rendered in a sandbox (a template is data and must not run code),
    with the variables Hugging Face templates expect."""

    def __init__(self, text: str, eos_token: str):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise bad(f"the chat template refused the messages: {message}", "messages")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        self.text = text
        self.is_default = text == DEFAULT_CHAT_TEMPLATE
        self.template = env.from_string(text)
        self.eos_token = eos_token

    def render(self, messages: list[dict]) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=True, bos_token=self.eos_token,
                                        eos_token=self.eos_token)
        except APIError:
            raise
        except Exception as exc:  # noqa: BLE001 - a template error is the request's, not the server's
            raise bad(f"the chat template failed on these messages: {type(exc).__name__}: {exc}", "messages") from None


@dataclass
class ChatRequest:
    prompt: list[int]
    sampling: Sampling


def parse_chat(body: Any, settings: ServeSettings, template: ChatTemplate,
               encode: Callable[[str], list[int]]) -> ChatRequest:
    """Validate a ``/v1/chat/completions`` body and render its messages with the template."""
    f = _Fields(body, _SAMPLING_FIELDS | {"messages", "max_completion_tokens", "logprobs", "top_logprobs"})
    check_model(f, settings)
    if f.get("max_tokens") is not None and f.get("max_completion_tokens") is not None:
        raise bad("give 'max_tokens' or 'max_completion_tokens', not both", "max_completion_tokens")
    name = "max_completion_tokens" if f.get("max_completion_tokens") is not None else "max_tokens"
    # chat has no 16-token default: OpenAI runs to the end of the answer, bounded here by the limit
    sampling = _sampling(f, settings, name, default_max_tokens=settings.max_new_tokens)
    if f.boolean("logprobs", False) or f.get("top_logprobs") is not None:
        raise bad("logprobs are supported on /v1/completions only", "logprobs")
    messages = f.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", "messages")
    if len(messages) > MAX_MESSAGES:
        raise bad(f"{len(messages)} messages; the limit is {MAX_MESSAGES}", "messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content", "name"}:
            raise bad(f"messages[{i}] must be an object with 'role', 'content' (and optionally 'name')", "messages")
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "developer", "user", "assistant"):
            raise bad(f"messages[{i}].role must be system, developer, user or assistant, got {role!r}", "messages")
        if isinstance(content, list):  # the parts form: only text parts
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise bad(f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content must be a string", "messages")
        clean.append({"role": "system" if role == "developer" else role, "content": content})
    ids = encode(template.render(clean))
    if len(ids) > settings.max_prompt_tokens:
        raise bad(f"the rendered conversation has {len(ids)} tokens; the limit is {settings.max_prompt_tokens}",
                  "messages")
    if template.is_default:
        sampling.stop = sampling.stop + [s for s in DEFAULT_CHAT_STOP if s not in sampling.stop]
    return ChatRequest(prompt=ids, sampling=sampling)


# ---- response bodies ----------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class TokenScores:
    """Per-token log-probabilities to render as OpenAI's ``logprobs`` object."""

    ids: list[int]
    logprobs: list[float | None]
    top: list[list[tuple[int, float]] | None]


def completion_logprobs(tokens: TokenScores, token_text: Callable[[int], str], text_limit: int | None) -> dict:
    """OpenAI's legacy ``logprobs`` object (``tokens``, ``token_logprobs``, ``top_logprobs``,
    ``text_offset``); when a stop string cut the text at ``text_limit`` characters, the tokens
    starting at or after it are left out. An ending EOS is listed (its text is empty), as
    lm-evaluation-harness drops the last listed token as the generated one. ``top_logprobs`` always holds the chosen token too, so "was it the greedy
    choice?" is ``logprob == max(top.values())``, as lm-evaluation-harness asks it."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = 0
    for token, lp, top in zip(tokens.ids, tokens.logprobs, tokens.top):
        if text_limit is not None and offset >= text_limit:
            break
        text = token_text(token)
        out["tokens"].append(text)
        out["token_logprobs"].append(lp)
        if top is None:
            out["top_logprobs"].append(None)
        else:
            alternatives: dict[str, float] = {}
            for alt, alt_lp in top + [(token, lp)]:
                key = token_text(alt)
                alternatives[key] = max(alt_lp, alternatives.get(key, -math.inf))  # two ids may print alike
            out["top_logprobs"].append(alternatives)
        out["text_offset"].append(offset)
        offset += len(text)
    return out
