"""Continuous batching over the recurrent decoder.

One worker thread owns the model. It keeps a running batch of rows (one row per prompt), the
rows' recurrent states (``_Packed``: one cache exactly their size, on the CPU; ``_Slots``: the
fixed slots of a CUDA-graph ``StepRunner``, on CUDA), and the logits each row will choose its
next token from. Each iteration it

1. admits waiting rows (up to ``max_batch`` running, ``prefill_tokens_per_step`` prompt tokens):
   their prompts are prefilled (``biomamba.generate.prefill``) and their states added to the
   batch, so a request joins the decode that is already under way instead of waiting for it;
2. chooses one token per row (``biomamba.generate.next_tokens``, each row with its own sampling
   settings and seeded generator), detokenises it, checks EOS, stop strings and ``max_tokens``,
   and hands the text to the row's client;
3. drops the rows that finished or whose client left (their states are sliced out of the
   batch), so a row whose client disconnected takes part in at most the one step that was
   running when it left;
4. advances the remaining rows by one ``MambaLM.step`` (replayed from a CUDA graph on CUDA).

A Mamba row's state is a fixed-size tensor per layer that does not depend on its position, so
rows of any lengths share a step with no padding: joining is a copy of states, leaving an index.

Events reach the clients through ``deliver`` (called once per iteration with every event of
that iteration): the HTTP side sets it to hop onto its event loop in one wake-up.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from biomamba.generate import SamplingConfig, StepRunner, stack_caches, next_tokens, prefill, step_runner
from biomamba.model import InferenceCache, MambaLM

PROMPT_SCORE_CHUNK = 512  # prompt positions scored per LM-head call (bounds the fp32 logits' memory)


class Overloaded(RuntimeError):
    """More prompts are waiting than the server accepts (``max_waiting``)."""


@dataclass
class TextDelta:
    """New completion text for a streaming row (held back while it could still be a stop string's start)."""

    text: str


@dataclass
class Finished:
    """A row's result. ``completion_ids`` include an ending EOS (its text is empty); the scores
    are filled only when the row asked for logprobs (and the prompt's only with ``echo``)."""

    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    prompt_ids: list[int]
    completion_ids: list[int]
    stopped_by_string: bool
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    prompt_logprobs: list[float | None] | None = None
    prompt_top: list[list[tuple[int, float]] | None] | None = None


@dataclass
class Failed:
    message: str


Event = TextDelta | Finished | Failed


@dataclass
class Row:
    """One prompt's decoding. Set ``on_event`` before submitting; ``cancel()`` from any thread."""

    prompt_ids: list[int]
    sampling: SamplingConfig
    on_event: Callable[[Event], None]
    stream: bool = False
    logprobs: int | None = None  # alternatives per token; None: no scores
    echo: bool = False  # with logprobs: score the prompt's tokens too
    ignore_eos: bool = False
    # worker state
    ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far, up to the last complete character
    sent: int = 0  # characters of ``text`` already streamed
    done: bool = False
    cancelled: bool = False
    generator: torch.Generator | None = None
    _read: int = 0  # ids[:_read] are in ``text``
    _scores: list[float] = field(default_factory=list)
    _top: list[list[tuple[int, float]]] = field(default_factory=list)
    _prompt_scores: tuple | None = None
    _stop_at: int | None = None  # where a stop string begins in ``text``
    _eos: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def wants_prompt_scores(self) -> bool:
        return self.echo and self.logprobs is not None


class Scheduler(threading.Thread):
    """The worker that owns ``model``: ``submit`` rows from any thread; read ``metrics()``."""

    def __init__(self, model: MambaLM, tokenizer, max_batch: int = 64, max_waiting: int = 4096,
                 prefill_tokens_per_step: int = 8192, fixed_slots: bool | None = None):
        super().__init__(daemon=True, name="biomamba-scheduler")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.prefill_tokens_per_step = prefill_tokens_per_step
        self.device = model.backbone.embedding.weight.device
        self.vocab = model.config.vocab_size
        self.eos_id = tokenizer.eos_id
        self.inbox: queue.SimpleQueue[Row | None] = queue.SimpleQueue()
        self.waiting = 0  # rows submitted and not yet admitted (SimpleQueue has no reliable size)
        self._lock = threading.Lock()
        self.deliver: Callable[[list[tuple[Row, Event]]], None] = _deliver_directly
        self.rows: list[Row] = []
        # None: fixed slots (and CUDA-graph steps) on CUDA, a packed batch elsewhere
        on_cuda = self.device.type == "cuda"
        self.states = _Slots(model, graphs=on_cuda) if (on_cuda if fixed_slots is None else fixed_slots) \
            else _Packed(model)
        self.logits: Tensor | None = None  # (running rows, padded vocab): each row's next-token scores
        self._events: list[tuple[Row, Event]] = []
        self._stopping = False
        self.counters = {"steps": 0, "tokens_generated": 0, "prompt_tokens": 0, "rows_admitted": 0,
                         "rows_joined_running_batch": 0, "rows_finished": 0, "rows_cancelled": 0, "rows_failed": 0,
                         "max_running": 0}

    # ---- called from other threads -------------------------------------------------------------
    def submit(self, rows: list[Row]) -> None:
        """Queue rows (all or none: ``Overloaded`` when they would exceed ``max_waiting``)."""
        with self._lock:
            if self._stopping:
                raise Overloaded("the server is shutting down")
            if self.waiting + len(rows) > self.max_waiting:
                raise Overloaded(f"{self.waiting} prompts are already waiting (the limit is {self.max_waiting})")
            self.waiting += len(rows)
        for row in rows:
            self.inbox.put(row)

    def metrics(self) -> dict:
        return {**self.counters, "running": len(self.rows), "waiting": self.waiting, "max_batch": self.max_batch}

    def stop(self) -> None:
        """Fail what is queued or running and end the thread."""
        with self._lock:
            self._stopping = True
        self.inbox.put(None)

    # ---- the worker ----------------------------------------------------------------------------
    def run(self) -> None:
        with torch.no_grad():
            while not self._stopping:
                try:
                    self._iteration()
                except Exception as exc:  # noqa: BLE001 - the batch fails, the server lives on
                    self._fail_all(f"generation failed: {type(exc).__name__}: {exc}")
                self._flush()
            self._fail_all("the server is shutting down")
            while True:  # rows still queued
                try:
                    row = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if row is not None:
                    self._emit(row, Failed("the server is shutting down"))
            self._flush()

    def _iteration(self) -> None:
        self._admit()
        if not self.rows:
            return
        self._choose_tokens()
        self._flush()  # clients see this step's text before the next step runs
        self._drop_finished()
        if self.rows:
            self.logits = self._masked(self.states.step(self._last_tokens()))
            self.counters["steps"] += 1

    def _last_tokens(self) -> Tensor:
        return torch.tensor([r.ids[-1] for r in self.rows], device=self.device)

    def _masked(self, logits: Tensor) -> Tensor:
        logits[:, self.vocab:] = float("-inf")  # ids ≥ vocab are the embedding's padding rows
        return logits

    def _admit(self) -> None:
        """Take waiting rows into the batch (blocking only when nothing runs)."""
        new: list[Row] = []
        budget = self.prefill_tokens_per_step
        while len(self.rows) + len(new) < self.max_batch:
            try:
                row = self.inbox.get(timeout=0.5) if not self.rows and not new else self.inbox.get_nowait()
            except queue.Empty:
                break
            if row is None:  # stop() woke us
                break
            with self._lock:
                self.waiting -= 1
            if row.cancelled:
                self.counters["rows_cancelled"] += 1
                continue
            new.append(row)
            budget -= len(row.prompt_ids)
            if budget <= 0:  # a long prefill would stall every running row: admit the rest next step
                break
        if not new:
            return
        self.counters["rows_admitted"] += len(new)
        if self.rows:
            self.counters["rows_joined_running_batch"] += len(new)
        try:
            caches, logits, rows = self._prefill(new)
        except Exception as exc:  # noqa: BLE001 - these prompts fail; the running rows go on
            for row in new:
                self._fail(row, f"prefill failed: {type(exc).__name__}: {exc}")
            return
        for row in new:
            self.counters["prompt_tokens"] += len(row.prompt_ids)
            if row.sampling.temperature > 0:
                row.generator = torch.Generator(device=self.device).manual_seed(row.sampling.seed)
        if not rows:
            return
        self.states.append(stack_caches(caches) if len(caches) > 1 else caches[0], len(rows))
        self.logits = torch.cat([self.logits, logits]) if self.rows else logits
        self.rows += rows
        self.counters["max_running"] = max(self.counters["max_running"], len(self.rows))

    def _prefill(self, new: list[Row]) -> tuple[list[InferenceCache], Tensor, list[Row]]:
        """States and first-token logits of the new rows that will decode; rows that asked for
        no new tokens finish here."""
        plain = [r for r in new if not r.wants_prompt_scores]
        scored = [r for r in new if r.wants_prompt_scores]
        caches, logits, rows = [], [], []
        decoding = [r for r in plain if r.sampling.max_new_tokens > 0]
        for r in plain:
            if r.sampling.max_new_tokens == 0:
                self._finish(r, "length")
        if decoding:
            # an empty prompt starts from EOS, which is also the documents' separator (as generate_ids does)
            cache, last = prefill(self.model, [r.prompt_ids or [self.eos_id] for r in decoding])
            caches.append(cache)
            logits.append(last)
            rows += decoding
        for r in scored:
            cache, last = self._score_prompt(r)
            if r.sampling.max_new_tokens == 0:
                self._finish(r, "length")
                continue
            caches.append(cache)
            logits.append(last)
            rows.append(r)
        out = self._masked(torch.cat(logits)) if logits else torch.empty(0)
        return caches, out, rows

    def _score_prompt(self, row: Row) -> tuple[InferenceCache, Tensor]:
        """Prefill one prompt keeping every position's hidden state: each prompt token's
        log-probability given the tokens before it, for ``echo`` with ``logprobs``."""
        ids = row.prompt_ids or [self.eos_id]
        cache = self.model.allocate_cache(1)
        hidden = self.model.hidden(torch.tensor([ids], device=self.device), cache=cache)[0]
        k = row.logprobs or 0
        lps: list[float | None] = [None]
        tops: list[list[tuple[int, float]] | None] = [None]
        targets = torch.tensor(ids[1:], device=self.device)
        for s in range(0, len(ids) - 1, PROMPT_SCORE_CHUNK):
            e = min(s + PROMPT_SCORE_CHUNK, len(ids) - 1)
            lp = torch.log_softmax(self.model.lm_head(hidden[s:e])[:, :self.vocab].float(), dim=-1)
            lps += lp.gather(1, targets[s:e, None])[:, 0].tolist()
            tops += _top_k(lp, k)
        row._prompt_scores = (lps, tops) if row.prompt_ids else ([], [])
        return cache, self.model.lm_head(hidden[-1:])

    def _choose_tokens(self) -> None:
        logits = self.logits
        greedy = [i for i, r in enumerate(self.rows) if r.sampling.temperature == 0]
        if len(greedy) == len(self.rows):
            tokens = logits.argmax(dim=-1)  # the same choice as generate_ids' greedy step
        else:
            tokens = torch.zeros(len(self.rows), dtype=torch.long, device=self.device)
            if greedy:
                tokens[greedy] = logits[greedy].argmax(dim=-1)
        for i, row in enumerate(self.rows):
            # one call per row: each has its own settings and seeded generator, so its tokens do not
            # depend on who shares the batch (torch.multinomial costs the same per row batched or not)
            if row.sampling.temperature > 0:
                tokens[i] = next_tokens(logits[i:i + 1], row.sampling, row.generator)[0]
        scored = [i for i, r in enumerate(self.rows) if r.logprobs is not None]
        if scored:
            lp = torch.log_softmax(logits[scored, :self.vocab].float(), dim=-1)
            chosen = lp.gather(1, tokens[scored, None])[:, 0].tolist()
            k = max(self.rows[i].logprobs for i in scored)
            tops = _top_k(lp, k)
            for j, i in enumerate(scored):
                self.rows[i]._scores.append(chosen[j])
                self.rows[i]._top.append(tops[j][:self.rows[i].logprobs])
        for row, token in zip(self.rows, tokens.tolist()):
            self._advance(row, token)

    def _advance(self, row: Row, token: int) -> None:
        """Append the chosen token to ``row``: text, stop strings, EOS, length."""
        self.counters["tokens_generated"] += 1
        row.ids.append(token)
        if token == self.eos_id and not row.ignore_eos:
            row._eos = True
            self._finish(row, "stop")
            return
        if row._stop_at is None:
            self._decode_new(row)
        if row._stop_at is not None:
            self._finish(row, "stop")
        elif len(row.ids) >= row.sampling.max_new_tokens:
            self._finish(row, "length")
        elif row.stream:
            # hold back what could be the start of a stop string, so it is never sent
            hold = max((len(s) for s in row.sampling.stop), default=1) - 1
            upto = len(row.text) - hold
            if upto > row.sent:
                self._emit(row, TextDelta(row.text[row.sent:upto]))
                row.sent = upto

    def _decode_new(self, row: Row) -> None:
        """Extend ``row.text`` by the tokens since the last complete character; look for stop strings."""
        tok, ids = self.tokenizer, row.ids
        # one token of left context: decoders that drop a word's leading space at the start of a
        # text (SentencePiece) would otherwise lose it at every increment
        before = tok.decode(ids[row._read - 1:row._read]) if row._read else ""
        now = tok.decode(ids[max(row._read - 1, 0):])
        if now.endswith("\ufffd") or len(now) <= len(before):
            return  # a multi-byte character is still incomplete
        start = len(row.text)
        row.text += now[len(before):]
        row._read = len(ids)
        longest = max((len(s) for s in row.sampling.stop), default=0)
        cuts = [i for s in row.sampling.stop if (i := row.text.find(s, max(0, start - longest + 1))) >= 0]
        if cuts:
            row._stop_at = min(cuts)

    def _finish(self, row: Row, reason: str) -> None:
        tok = self.tokenizer
        ids = row.ids[:-1] if row._eos else row.ids
        text = tok.decode(ids)  # the whole text once more: exact even where the increments were not
        stopped = False
        cuts = [text.index(s) for s in row.sampling.stop if s in text]
        if cuts:
            text, stopped, reason = text[:min(cuts)], True, "stop"
        if row.stream and len(text) > row.sent:
            self._emit(row, TextDelta(text[row.sent:]))
            row.sent = len(text)
        prompt_lps, prompt_top = row._prompt_scores if row._prompt_scores is not None else (None, None)
        self._emit(row, Finished(text=text, finish_reason=reason, prompt_ids=row.prompt_ids,
                                 completion_ids=list(row.ids), stopped_by_string=stopped, logprobs=row._scores,
                                 top=row._top, prompt_logprobs=prompt_lps, prompt_top=prompt_top))
        row.done = True
        self.counters["rows_finished"] += 1

    def _drop_finished(self) -> None:
        keep = []
        for i, row in enumerate(self.rows):
            if row.cancelled and not row.done:
                row.done = True
                self.counters["rows_cancelled"] += 1
            if not row.done:
                keep.append(i)
        if len(keep) == len(self.rows):
            return
        self.states.keep(keep)
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.logits = None

    def _fail(self, row: Row, message: str) -> None:
        row.done = True
        self.counters["rows_failed"] += 1
        self._emit(row, Failed(message))

    def _fail_all(self, message: str) -> None:
        for row in self.rows:
            if not row.done:
                self._fail(row, message)
        self.rows, self.logits = [], None
        self.states.keep([])

    def _emit(self, row: Row, event: Event) -> None:
        if not row.cancelled:
            self._events.append((row, event))

    def _flush(self) -> None:
        if self._events:
            events, self._events = self._events, []
            self.deliver(events)


class _Packed:
    """The running rows' states as one batch exactly their size: a join concatenates, a leave
    slices; each step is ``MambaLM.step`` (eager). Used where a step is not launch-bound (CPU)."""

    def __init__(self, model: MambaLM):
        self.model = model
        self.cache: InferenceCache | None = None

    def append(self, cache: InferenceCache, rows: int) -> None:
        self.cache = cache if self.cache is None else stack_caches([self.cache, cache])

    def keep(self, rows: list[int]) -> None:
        if not rows:
            self.cache = None
            return
        index = torch.tensor(rows, device=self.model.backbone.embedding.weight.device)
        for state in self.cache.layers:
            state.conv, state.ssm = state.conv.index_select(0, index), state.ssm.index_select(0, index)

    def step(self, tokens: Tensor) -> Tensor:
        return self.model.step(tokens, self.cache)


class _Slots:
    """The running rows' states in a ``StepRunner`` of fixed capacity (a power of two), rows in
    slots [0, n): a join copies states in after them, a leave compacts the rest to the front, and
    each step runs all slots (the unused ones on stale states no row reads), so on CUDA the step is
    one graph replay (``biomamba.generate.StepRunner``: an eager step at 130M costs 25× a replayed
    one). The capacity grows to the next power of two when rows join and halves when a quarter or
    fewer are in use; ``step_runner`` keeps the last two runners' graphs on the model."""

    def __init__(self, model: MambaLM, graphs: bool):
        self.model, self.graphs = model, graphs
        self.runner: StepRunner | None = None
        self.n = 0

    @property
    def capacity(self) -> int:
        return self.runner.batch if self.runner is not None else 0

    def _resize(self, rows: int) -> None:
        cap = self.capacity
        if cap >= rows and (rows > cap // 4 or cap == 1):
            return
        new = step_runner(self.model, max(1, 1 << (rows - 1).bit_length()), greedy=False, cuda_graph=self.graphs)
        if new.cache is None:  # an eager runner adopts a cache: give it its own fixed one
            new.load(self.model.allocate_cache(new.batch))
        if self.runner is not None and self.n:
            for mine, old in zip(new.cache.layers, self.runner.cache.layers):
                mine.conv[:self.n].copy_(old.conv[:self.n])
                mine.ssm[:self.n].copy_(old.ssm[:self.n])
        self.runner = new

    def append(self, cache: InferenceCache, rows: int) -> None:
        self._resize(self.n + rows)
        for mine, new in zip(self.runner.cache.layers, cache.layers):
            mine.conv[self.n:self.n + rows].copy_(new.conv)
            mine.ssm[self.n:self.n + rows].copy_(new.ssm)
        self.n += rows

    def keep(self, rows: list[int]) -> None:
        if rows != list(range(len(rows))):  # in place: a graph reads these very tensors
            index = torch.tensor(rows, device=self.model.backbone.embedding.weight.device)
            for state in self.runner.cache.layers:
                state.conv[:len(rows)].copy_(state.conv.index_select(0, index))
                state.ssm[:len(rows)].copy_(state.ssm.index_select(0, index))
        self.n = len(rows)
        if self.n:
            self._resize(self.n)

    def step(self, tokens: Tensor) -> Tensor:
        padded = torch.zeros(self.capacity, dtype=tokens.dtype, device=tokens.device)
        padded[:self.n] = tokens
        return self.runner(padded)[:self.n]  # with a graph: a view of its output, overwritten next step


def _top_k(logprobs: Tensor, k: int) -> list[list[tuple[int, float]]]:
    """The ``k`` most likely (id, logprob) of each row of ``logprobs``."""
    if k == 0:
        return [[] for _ in range(logprobs.shape[0])]
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]


def _deliver_directly(events: list[tuple[Row, Event]]) -> None:
    for row, event in events:
        row.on_event(event)
