"""The model-server process that runs one replica of a deployment: KServe's ModelServer (uvicorn inside) serving one
transformers model on loopback, over KServe V2 and an OpenAI-compatible API.

Command line::

    python -m workers.model_server --model-dir DIR --name NAME --port PORT
        [--task auto|generate|embed] [--dtype auto|fp32|bf16|fp16] [--device auto|cpu|cuda]
        [--max-input-tokens N] [--max-total-tokens N] [--max-batch N] [--host 127.0.0.1] [--grace-period SECONDS]

- ``--task auto`` (default): ``embed`` when DIR has a sentence-transformers ``modules.json``, else ``generate``.
  generate: AutoModelForCausalLM + AutoTokenizer. embed: AutoModel + the pooling that ``modules.json`` /
  ``1_Pooling/config.json`` name (mean when there is none), L2-normalised when a Normalize module is listed (always
  when there is no ``modules.json``): the vectors sentence-transformers computes. Other sentence-transformers modules
  (Dense, ...) and models that need remote code are refused.
- ``--device auto`` uses CUDA when torch sees a GPU (pin it with CUDA_VISIBLE_DEVICES), else the CPU.
  ``--dtype auto``: bf16 on a GPU that has it (else fp16), fp32 on the CPU; fp16 on the CPU falls back to fp32.
- generate: ``--max-total-tokens`` (default and ceiling: the model's context length) bounds prompt + completion;
  ``--max-input-tokens`` (default and ceiling: max-total - 1) bounds the prompt. embed: ``--max-input-tokens``
  (default and ceiling: sentence-transformers' max_seq_length, else the context length) bounds each text;
  ``--max-total-tokens`` is not used. Values above a ceiling are lowered to it, with a warning in the log; the
  limits in force are logged at start and given as ``max_model_len`` by ``GET /v1/models``. Tokens are counted
  with special tokens. A longer prompt is a 400 (``code: context_length_exceeded``); ``max_tokens`` is clamped
  to what the total leaves.
- ``--max-batch N`` (default 1): at most N requests run on the model at once, each in its own thread, in arrival
  order; the rest wait. There is no dynamic batching: correctness over throughput.
- If DIR holds ``MANIFEST.json`` (``[{"path", "sha256"}, ...]``, paths relative to DIR) every listed file is hashed
  before anything is loaded; a missing file or a different sha256 ends the process with exit status 4.

Routes (all on HOST:PORT; the OpenAI ones under both ``/v1`` and ``/openai/v1``)::

    GET  /v2/health/live  /v2/health/ready  /v2  /v2/models/NAME  /v2/models/NAME/ready
    POST /v2/models/NAME/infer     generate: BYTES input "text_input" (or the first BYTES input), one prompt per
                                   element; parameters max_tokens (default 16), temperature, top_p, stop, seed ->
                                   BYTES output "text_output". embed: BYTES texts -> FP32 "embedding" [n, dim].
                                   Response parameters carry prompt_tokens (and completion_tokens).
    POST /v1/completions  /v1/chat/completions      generate models; ``stream: true`` sends SSE chunks as tokens
                                   are produced, ending ``data: [DONE]``; ``stream_options.include_usage`` adds a
                                   last chunk with ``choices: []`` and ``usage``.
    POST /v1/embeddings            embed models; ``encoding_format`` float or base64.
    GET  /v1/models

OpenAI errors are ``{"error": {"message", "type", "param", "code"}}``; V2 errors ``{"error": "..."}``. The request's
``model`` field is not checked: a replica serves one model and the gateway routes by name; responses name NAME.
Greedy decoding (``temperature`` 0 or absent) is deterministic; ``seed`` reseeds torch's global generator, so
sampling is reproducible when requests do not overlap (``--max-batch 1``).
Not supported (400): ``n`` > 1, ``best_of``, ``logprobs``, ``echo``, ``suffix``, tools, non-text response formats and
content parts. Accepted and ignored: ``presence_penalty``, ``frequency_penalty``, ``logit_bias``, ``user``.
Chat prompts use the tokenizer's chat template (control tokens inside messages are encoded as plain text); without
one, each message is rendered ``"{role}: {content}\\n"`` followed by ``"assistant:"``.

Readiness: the model is loaded and warmed up (one short forward pass) before the port is opened, so the first 200
from ``GET /v2/health/ready`` means the replica can serve; until then connections are refused. Exit statuses: 2 bad
arguments, 3 the HTTP server could not start (uvicorn's: the port is taken), 4 the MANIFEST check failed, 5 the model
could not be loaded or warmed up (or --device cuda without a GPU), 1 anything else. An error ends with one line
``model_server: error: ...`` on stderr.
SIGTERM or SIGINT: the port closes, requests in flight get up to ``--grace-period`` seconds (default 10), exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import orjson
import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from kserve import Model, ModelServer
from kserve import model_server as kserve_model_server
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import InvalidInput
from kserve.logging import configure_logging, logger
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.protocol.rest.server import RESTServer
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.utils import logging as transformers_logging

from workers.files import file_sha256

EXIT_USAGE = 2
# 3 is uvicorn's: the HTTP server could not start (the port is taken, say)
EXIT_INTEGRITY = 4
EXIT_LOAD = 5

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /completions (and used for V2); chat defaults to the rest of the context
EMBED_BATCH = 32  # texts per forward pass, as sentence-transformers' encode()
MAX_EMBED_INPUTS = 2048  # OpenAI's limit on inputs per embeddings request
MAX_STOP_SEQUENCES = 4
OPENAI_PREFIXES = ("/v1", "/openai/v1")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TASK_NAMES = {"generate": "a text-generation model", "embed": "an embedding model"}
CHAT_ROLES = {"system", "developer", "user", "assistant", "tool"}
POOLING_KEYS = {  # sentence-transformers' legacy pooling_mode_* flags, in the order it concatenates them
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class LimitExceeded(ValueError):
    """A request over the replica's token limits: a 400 in either protocol."""


class RequestError(ValueError):
    """A request the server will not run: the status and the OpenAI error's param and code."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


# ---------------------------------------------------------------------------------------------------------------------
# Start-up checks


def verify_manifest(directory: Path) -> int:
    """Hash each file DIR/MANIFEST.json lists and compare it with the recorded sha256; returns how many were checked."""
    manifest = directory / "MANIFEST.json"
    if not manifest.exists():
        return 0
    try:
        entries = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise StartupError(f"MANIFEST.json is unreadable: {exc}", EXIT_INTEGRITY)
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("sha256"), str) for e in entries
    ):
        raise StartupError('MANIFEST.json must be a list of {"path", "sha256"} objects', EXIT_INTEGRITY)
    root = directory.resolve()
    for entry in entries:
        target = (root / entry["path"]).resolve()
        if not target.is_relative_to(root):
            raise StartupError(
                f"MANIFEST.json lists a path outside the model directory: {entry['path']}", EXIT_INTEGRITY
            )
        if not target.is_file():
            raise StartupError(f"MANIFEST.json lists {entry['path']}, which is missing", EXIT_INTEGRITY)
        actual = file_sha256(target)
        if actual != entry["sha256"].lower():
            raise StartupError(
                f"sha256 mismatch for {entry['path']}: MANIFEST.json says {entry['sha256']}, the file has {actual}",
                EXIT_INTEGRITY,
            )
    return len(entries)


def resolve_placement(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    if device == "cuda" and not torch.cuda.is_available():
        raise StartupError("--device cuda was asked for, but torch sees no CUDA device", EXIT_LOAD)
    if device == "cpu" or not torch.cuda.is_available():
        if dtype == "fp16":
            logger.warning("fp16 is not supported on the CPU: loading in fp32")
        return torch.device("cpu"), torch.bfloat16 if dtype == "bf16" else torch.float32
    if dtype == "auto":
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cuda"), DTYPES[dtype]


def _context_length(config, tokenizer) -> int | None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text_config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 1_000_000 else None  # 1e30 means "not set"


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int
    max_total_tokens: int

    def check_input(self, tokens: int, what: str = "prompt") -> None:
        if tokens == 0:
            raise LimitExceeded(f"The {what} is empty.")
        if tokens > self.max_input_tokens:
            raise LimitExceeded(
                f"This model's maximum input length is {self.max_input_tokens} tokens; the {what} has {tokens} tokens."
            )

    def completion_budget(self, prompt_tokens: int, requested: int | None, default: int | None) -> int:
        """How many tokens to generate: the request's max_tokens (or the default, or all that is left), clamped."""
        self.check_input(prompt_tokens)
        room = self.max_total_tokens - prompt_tokens
        if room < 1:
            raise LimitExceeded(
                f"This model's maximum context length is {self.max_total_tokens} tokens; the prompt has "
                f"{prompt_tokens} tokens, which leaves no room for a completion."
            )
        wanted = requested if requested is not None else default if default is not None else room
        return min(wanted, room)


def _lowered(flag: str, asked: int, ceiling: int, why: str) -> int:
    if asked > ceiling:
        logger.warning("%s %d is more than %s: using %d", flag, asked, why, ceiling)
    return min(asked, ceiling)


def generation_limits(args: argparse.Namespace, context: int | None) -> Limits:
    """The asked-for limits, lowered to what the model takes; by default a prompt may fill all but one token."""
    total = args.max_total_tokens or context
    if total is None:
        raise StartupError("the model's context length is unknown: pass --max-total-tokens", EXIT_USAGE)
    if context is not None:
        total = _lowered("--max-total-tokens", total, context, "the model's context length")
    ceiling = max(total - 1, 1)
    max_input = _lowered("--max-input-tokens", args.max_input_tokens or ceiling, ceiling, "--max-total-tokens - 1")
    return Limits(max_input_tokens=max_input, max_total_tokens=total)


def embedding_limits(args: argparse.Namespace, ceiling: int | None) -> Limits:
    """A text may be as long as the model was trained for (sentence-transformers' max_seq_length); no completion."""
    if ceiling is None:
        ceiling = args.max_input_tokens
    if ceiling is None:
        raise StartupError("the model's maximum sequence length is unknown: pass --max-input-tokens", EXIT_USAGE)
    max_input = _lowered("--max-input-tokens", args.max_input_tokens or ceiling, ceiling, "the model's sequence length")
    return Limits(max_input_tokens=max_input, max_total_tokens=max_input)


# ---------------------------------------------------------------------------------------------------------------------
# Text generation (blocking: runs in the replica's worker threads)


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"


class _TextTracker(StoppingCriteria):
    """Follows generate() one token at a time (stopping criteria see every step, and see it before any streamer
    does): decodes what was generated so far, hands on text as soon as it is final (not an incomplete UTF-8
    sequence, not the possible start of a stop string), and ends generation at a stop string or a cancellation."""

    def __init__(
        self,
        *,
        decode: Callable[[list[int]], str],
        prompt_length: int,
        stop: tuple[str, ...],
        emit: Callable[[str], None],
        cancelled: threading.Event,
    ):
        self.decode, self.prompt_length, self.stop = decode, prompt_length, stop
        self.emit, self.cancelled = emit, cancelled
        self.token_ids: list[int] = []
        self.text = ""
        self.sent = ""
        self.hit_stop = False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.token_ids.extend(input_ids[0, self.prompt_length + len(self.token_ids) :].tolist())
        text = self.decode(self.token_ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, self.hit_stop = text[:cut], True
        self.text = text
        done = self.hit_stop or self.cancelled.is_set()
        self._send(final=done)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def finish(self) -> None:
        self._send(final=True)

    def _send(self, *, final: bool) -> None:
        end = len(self.text)
        if not final:
            end = len(self.text.rstrip("\ufffd"))
            end -= max((k for s in self.stop for k in range(1, len(s)) if self.text[:end].endswith(s[:k])), default=0)
        # A later token can change how earlier ones decode; then wait until the text agrees with what was sent.
        if end > len(self.sent) and self.text.startswith(self.sent):
            self.emit(self.text[len(self.sent) : end])
            self.sent = self.text[:end]


class TextGenerator:
    def __init__(self, directory: Path, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True)
        self.model.to(device).eval()
        self.context_length = _context_length(self.model.config, self.tokenizer)
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self._tokenizer_lock = threading.Lock()  # the Rust tokenizer is shared between the loop and worker threads

    def encode_prompt(self, prompt: str) -> list[int]:
        with self._tokenizer_lock:
            return self.tokenizer(prompt)["input_ids"]

    def encode_chat(self, messages: list[dict]) -> list[int]:
        with self._tokenizer_lock:
            if self.tokenizer.chat_template:
                try:
                    encoded = self.tokenizer.apply_chat_template(
                        messages,
                        add_generation_prompt=True,
                        tokenize=True,
                        return_dict=True,
                        sanitize_control_tokens=True,
                    )
                except jinja2.TemplateError as exc:  # e.g. a template that insists on alternating roles
                    raise RequestError(f"The model's chat template refused the messages: {exc}", "messages")
                return list(encoded["input_ids"])
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def decode(self, token_ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def generate(
        self, prompt_ids: list[int], sampling: Sampling, emit: Callable[[str], None], cancelled: threading.Event
    ) -> Generation:
        tracker = _TextTracker(
            decode=self.decode, prompt_length=len(prompt_ids), stop=sampling.stop, emit=emit, cancelled=cancelled
        )
        if not cancelled.is_set():
            input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            with torch.inference_mode():
                self.model.generate(
                    input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=self._generation_config(sampling),
                    stopping_criteria=StoppingCriteriaList([tracker]),
                )
            tracker.finish()
        ended = tracker.hit_stop or bool(tracker.token_ids and tracker.token_ids[-1] in self.eos_ids)
        return Generation(
            text=tracker.text,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(tracker.token_ids),
            finish_reason="stop" if ended else "length",
        )

    def _generation_config(self, sampling: Sampling):
        config = copy.deepcopy(self.model.generation_config)
        sample = sampling.temperature > 0
        config.update(
            max_new_tokens=sampling.max_tokens,
            min_new_tokens=None,
            num_beams=1,
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None,
            top_k=None,
        )
        if config.pad_token_id is None and self.eos_ids:
            config.pad_token_id = min(self.eos_ids)
        return config

    def warm_up(self) -> None:
        prompt = self.encode_prompt("Hello") or [min(self.eos_ids or {0})]
        self.generate(prompt, Sampling(max_tokens=1), lambda text: None, threading.Event())


# ---------------------------------------------------------------------------------------------------------------------
# Embeddings (blocking)


def _pool(mode: str, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' Pooling modes, on fp32 token embeddings [batch, seq, dim] padded on either side."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    if mode == "cls":  # the first real token
        return tokens[rows, mask.int().argmax(dim=1)]
    if mode == "lasttoken":  # the last real token
        return tokens[rows, tokens.shape[1] - 1 - mask.int().flip(1).argmax(dim=1)]
    if mode == "max":
        return tokens.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    if mode in ("mean", "mean_sqrt_len_tokens"):
        counts = torch.clamp(weights.sum(dim=1), min=1e-9)
        return (tokens * weights).sum(dim=1) / (counts if mode == "mean" else torch.sqrt(counts))
    if mode == "weightedmean":  # weights 1, 2, 3, ... from the first real token
        positions = torch.arange(1, tokens.shape[1] + 1, dtype=tokens.dtype, device=tokens.device).view(1, -1, 1)
        weighted = weights * (positions - mask.int().argmax(dim=1).view(-1, 1, 1))
        return (tokens * weighted).sum(dim=1) / torch.clamp(weighted.sum(dim=1), min=1e-9)
    raise ValueError(f"unknown pooling mode {mode}")


class TextEmbedder:
    def __init__(self, directory: Path, device: torch.device, dtype: torch.dtype):
        self.device = device
        transformer_dir, self.pooling_modes, self.normalize, settings = self._read_modules(directory)
        self.lower_case = bool(settings.get("do_lower_case"))
        self.tokenizer = AutoTokenizer.from_pretrained(transformer_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(transformer_dir, dtype=dtype, local_files_only=True)
        self.model.to(device).eval()
        context = _context_length(self.model.config, self.tokenizer)
        self.max_sequence_length = min(filter(None, (settings.get("max_seq_length"), context)), default=None)
        self.dimension = self.model.config.hidden_size * len(self.pooling_modes)
        self._tokenizer_lock = threading.Lock()

    @staticmethod
    def _read_modules(directory: Path) -> tuple[Path, tuple[str, ...], bool, dict]:
        """The sentence-transformers pipeline DIR describes: (transformer dir, pooling modes, normalize, settings)."""
        modules_file = directory / "modules.json"
        if not modules_file.exists():
            return directory, ("mean",), True, {}
        transformer_dir, modes, normalize, settings = None, ("mean",), False, {}
        for module in json.loads(modules_file.read_text()):
            kind, path = module["type"].rsplit(".", 1)[-1], directory / module.get("path", "")
            if kind == "Transformer":
                transformer_dir = path
                for name in ("sentence_bert_config.json", "sentence_transformers_config.json"):
                    if (path / name).exists():
                        settings = json.loads((path / name).read_text())
                        break
            elif kind == "Pooling":
                config = json.loads((path / "config.json").read_text())
                mode = config.get("pooling_mode")
                if mode:
                    modes = (mode,) if isinstance(mode, str) else tuple(mode)
                else:
                    modes = tuple(m for key, m in POOLING_KEYS.items() if config.get(key)) or ("mean",)
                unknown = set(modes) - set(POOLING_KEYS.values())
                if unknown:
                    raise StartupError(f"unsupported pooling mode(s): {', '.join(sorted(unknown))}", EXIT_LOAD)
            elif kind == "Normalize":
                normalize = True
            else:
                raise StartupError(f"unsupported sentence-transformers module {module['type']}", EXIT_LOAD)
        if transformer_dir is None:
            raise StartupError("modules.json lists no Transformer module", EXIT_LOAD)
        return transformer_dir, modes, normalize, settings

    def _prepare(self, texts: list[str]) -> list[str]:
        return [text.lower() for text in texts] if self.lower_case else texts

    def count_tokens(self, texts: list[str]) -> list[int]:
        with self._tokenizer_lock:
            return [len(ids) for ids in self.tokenizer(self._prepare(texts))["input_ids"]]

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = []
        for start in range(0, len(texts), EMBED_BATCH):
            with self._tokenizer_lock:
                batch = self.tokenizer(
                    self._prepare(texts[start : start + EMBED_BATCH]), padding=True, return_tensors="pt"
                )
            batch = {key: value.to(self.device) for key, value in batch.items()}
            with torch.inference_mode():
                tokens = self.model(**batch).last_hidden_state.float()
            pooled = torch.cat([_pool(m, tokens, batch["attention_mask"]) for m in self.pooling_modes], dim=-1)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            vectors.append(pooled.cpu().numpy())
        return np.concatenate(vectors).astype(np.float32, copy=False)

    def warm_up(self) -> None:
        self.embed(["Hello"])


# ---------------------------------------------------------------------------------------------------------------------
# The replica: what V2 and OpenAI routes share


class Replica:
    """The loaded model, its limits, and the worker threads (``max_batch`` of them) that run it."""

    def __init__(self, *, name: str, task: str, engine: TextGenerator | TextEmbedder, limits: Limits, max_batch: int):
        self.name, self.task, self.engine, self.limits = name, task, engine, limits
        self.created = int(time.time())
        self.executor = ThreadPoolExecutor(max_workers=max_batch, thread_name_prefix="model")

    async def generate_stream(self, prompt_ids: list[int], sampling: Sampling) -> AsyncIterator[str | Generation]:
        """Yields text deltas as tokens are generated, then the finished Generation. Closing it early (a client
        that went away) stops the generation at its next token."""
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str | None] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: str | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while a generation was still finishing
                loop.call_soon_threadsafe(deltas.put_nowait, item)

        def work() -> Generation:
            try:
                return self.engine.generate(prompt_ids, sampling, put, cancelled)
            finally:
                put(None)

        future = loop.run_in_executor(self.executor, work)
        try:
            while (delta := await deltas.get()) is not None:
                yield delta
            yield await future
        finally:
            cancelled.set()

    async def generate(self, prompt_ids: list[int], sampling: Sampling) -> Generation:
        async with contextlib.aclosing(self.generate_stream(prompt_ids, sampling)) as stream:
            async for item in stream:
                if isinstance(item, Generation):
                    return item
        raise RuntimeError("the generation ended without a result")

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        counts = self.engine.count_tokens(texts)
        for index, count in enumerate(counts):
            self.limits.check_input(count, f"input at index {index}" if len(texts) > 1 else "input")
        vectors = await asyncio.get_running_loop().run_in_executor(self.executor, self.engine.embed, texts)
        return vectors, sum(counts)


# ---------------------------------------------------------------------------------------------------------------------
# KServe V2


def _flatten(data) -> list:
    if isinstance(data, (list, tuple, np.ndarray)):
        return [item for element in data for item in _flatten(element)]
    return [data]


def _v2_texts(request: InferRequest) -> list[str]:
    candidates = [i for i in request.inputs if i.name == "text_input"] or [
        i for i in request.inputs if i.datatype == "BYTES"
    ]
    if not candidates:
        raise InvalidInput('expected a BYTES input named "text_input"')
    texts = []
    for value in _flatten(candidates[0].data):
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            raise InvalidInput(f"input {candidates[0].name} must hold strings")
        texts.append(value)
    if not texts:
        raise InvalidInput(f"input {candidates[0].name} is empty")
    return texts


class ServedModel(Model):
    """KServe's view of the replica: V2 metadata and infer."""

    def __init__(self, replica: Replica):
        super().__init__(replica.name)
        self.replica = replica
        self.ready = True  # loaded and warmed up before the server starts

    def load(self) -> bool:
        return self.ready

    def get_input_types(self) -> list[dict]:
        return [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        if self.replica.task == "embed":
            return [{"name": "embedding", "datatype": "FP32", "shape": [-1, self.replica.engine.dimension]}]
        return [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}]

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise InvalidInput("expected a V2 inference request")
        texts = _v2_texts(payload)
        parameters = dict(payload.parameters or {})
        try:
            if self.replica.task == "embed":
                vectors, prompt_tokens = await self.replica.embed(texts)
                output = InferOutput("embedding", list(vectors.shape), "FP32", data=vectors)
                usage = {"prompt_tokens": prompt_tokens}
            else:
                generations = [await self._generate(text, parameters) for text in texts]
                answers = np.array([g.text.encode() for g in generations], dtype=np.object_)
                output = InferOutput("text_output", [len(generations)], "BYTES", data=answers)
                usage = {
                    "prompt_tokens": sum(g.prompt_tokens for g in generations),
                    "completion_tokens": sum(g.completion_tokens for g in generations),
                }
        except (LimitExceeded, RequestError) as exc:
            raise InvalidInput(str(exc))
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=[output],
            parameters=usage,
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )

    async def _generate(self, text: str, parameters: dict) -> Generation:
        prompt_ids = self.replica.engine.encode_prompt(text)
        sampling = _sampling(parameters, limits=self.replica.limits, prompt_tokens=len(prompt_ids))
        return await self.replica.generate(prompt_ids, sampling)


# ---------------------------------------------------------------------------------------------------------------------
# Request parameters (shared by V2 and OpenAI)


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(f"{key} must be a number from {low} to {high}", key)
    return float(value)


def _integer(body: dict, key: str, low: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RequestError(f"{key} must be an integer of at least {low}", key)
    return value


def _sampling(body: dict, *, limits: Limits, prompt_tokens: int, default_max_tokens: int | None = DEFAULT_MAX_TOKENS):
    requested = _integer(body, "max_completion_tokens", 1)
    if requested is None:
        requested = _integer(body, "max_tokens", 1)
    stop = body.get("stop")
    stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(f"stop must be a string or a list of up to {MAX_STOP_SEQUENCES} non-empty strings", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("seed must be an integer", "seed")
    try:
        max_tokens = limits.completion_budget(prompt_tokens, requested, default_max_tokens)
    except LimitExceeded as exc:
        raise RequestError(str(exc), "messages" if "messages" in body else "prompt", code="context_length_exceeded")
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise RequestError("top_p must be greater than 0", "top_p")
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    return Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed)


UNSUPPORTED = {  # parameter -> values that mean "not used"
    "n": (None, 1),
    "best_of": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "tools": (None, []),
    "functions": (None, []),
}


def _check_supported(body: dict) -> None:
    for key, neutral in UNSUPPORTED.items():
        value = body.get(key)
        if not any(value is n or (value == n and type(value) is type(n)) for n in neutral):
            raise RequestError(f"{key} is not supported by this model server", key)
    response_format = body.get("response_format")
    if response_format not in (None, {}) and response_format != {"type": "text"}:
        raise RequestError("only text responses are supported", "response_format")


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    plain = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise RequestError(f"{param} needs a role, one of {', '.join(sorted(CHAT_ROLES))}", param)
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise RequestError(f"{param}: only text content parts are supported", f"{param}.content")
            content = "".join(str(p.get("text", "")) for p in content)
        if content is None and message["role"] == "assistant":
            content = ""
        if not isinstance(content, str):
            raise RequestError(f"{param}.content must be a string or a list of text parts", f"{param}.content")
        plain.append({"role": message["role"], "content": content})
    return plain


def _prompts(body: dict) -> list[str]:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError("prompt must be a string or a non-empty list of strings", "prompt")
    return prompts


# ---------------------------------------------------------------------------------------------------------------------
# OpenAI-compatible routes (KServe 0.21's own OpenAI layer needs vLLM, so the routes are defined here)


def _error_response(status: int, message: str, *, param=None, code=None, kind=None) -> JSONBody:
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    return JSONBody({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _openai_route(handler: Callable[[Replica, dict], Awaitable[Response]], replica: Replica):
    async def route(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return _error_response(400, f"The body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return _error_response(400, "The body must be a JSON object")
        try:
            return await handler(replica, body)
        except RequestError as exc:
            return _error_response(exc.status, str(exc), param=exc.param, code=exc.code)
        except LimitExceeded as exc:
            return _error_response(400, str(exc), param="input", code="context_length_exceeded")
        except Exception:
            logger.exception("%s failed", handler.__name__)
            return _error_response(500, "The model server failed to handle the request")

    return route


def _require_task(replica: Replica, task: str, route: str) -> None:
    if replica.task != task:
        raise RequestError(f"{replica.name} is {TASK_NAMES[replica.task]}: it does not serve {route}", status=404)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _stream_options(body: dict) -> bool:
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options must be an object", "stream_options")
    return bool(options.get("include_usage"))


async def _sse(events: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield b"data: " + orjson.dumps(event) + b"\n\n"
    except Exception:
        logger.exception("streaming failed")
        error = {"message": "The model server failed while streaming", "type": "server_error", "param": None}
        yield b"data: " + orjson.dumps({"error": error | {"code": None}}) + b"\n\n"
    yield b"data: [DONE]\n\n"


def _streaming_response(events: AsyncIterator[dict]) -> StreamingResponse:
    return StreamingResponse(_sse(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def chat_completions(replica: Replica, body: dict) -> Response:
    _require_task(replica, "generate", "chat completions")
    _check_supported(body)
    prompt_ids = replica.engine.encode_chat(_messages(body))
    sampling = _sampling(body, limits=replica.limits, prompt_tokens=len(prompt_ids), default_max_tokens=None)
    header = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": replica.name}
    if not body.get("stream"):
        result = await replica.generate(prompt_ids, sampling)
        message = {"role": "assistant", "content": result.text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": result.finish_reason}
        return JSONBody(
            header
            | {
                "object": "chat.completion",
                "choices": [choice],
                "usage": _usage(result.prompt_tokens, result.completion_tokens),
            }
        )
    include_usage = _stream_options(body)

    async def events() -> AsyncIterator[dict]:
        chunk = header | {"object": "chat.completion.chunk"} | ({"usage": None} if include_usage else {})

        def choice(delta: dict, finish_reason: str | None = None) -> dict:
            return chunk | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        yield choice({"role": "assistant", "content": ""})
        async for item in replica.generate_stream(prompt_ids, sampling):
            if isinstance(item, Generation):
                yield choice({}, item.finish_reason)
                if include_usage:
                    yield chunk | {"choices": [], "usage": _usage(item.prompt_tokens, item.completion_tokens)}
            else:
                yield choice({"content": item})

    return _streaming_response(events())


async def completions(replica: Replica, body: dict) -> Response:
    _require_task(replica, "generate", "completions")
    _check_supported(body)
    jobs = []
    for prompt in _prompts(body):
        prompt_ids = replica.engine.encode_prompt(prompt)
        jobs.append((prompt_ids, _sampling(body, limits=replica.limits, prompt_tokens=len(prompt_ids))))
    header = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
    header["model"] = replica.name
    if not body.get("stream"):
        results = [await replica.generate(prompt_ids, sampling) for prompt_ids, sampling in jobs]
        choices = [
            {"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
            for i, r in enumerate(results)
        ]
        usage = _usage(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results))
        return JSONBody(header | {"choices": choices, "usage": usage})
    include_usage = _stream_options(body)

    async def events() -> AsyncIterator[dict]:
        chunk = header | ({"usage": None} if include_usage else {})
        prompt_tokens = completion_tokens = 0
        for index, (prompt_ids, sampling) in enumerate(jobs):
            async for item in replica.generate_stream(prompt_ids, sampling):
                text, finish_reason = ("", item.finish_reason) if isinstance(item, Generation) else (item, None)
                choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
                yield chunk | {"choices": [choice]}
                if isinstance(item, Generation):
                    prompt_tokens += item.prompt_tokens
                    completion_tokens += item.completion_tokens
        if include_usage:
            yield chunk | {"choices": [], "usage": _usage(prompt_tokens, completion_tokens)}

    return _streaming_response(events())


async def embeddings(replica: Replica, body: dict) -> Response:
    _require_task(replica, "embed", "embeddings")
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise RequestError(
            "input must be a string or a non-empty list of strings (token ids are not accepted)", "input"
        )
    if len(texts) > MAX_EMBED_INPUTS:
        raise RequestError(f"at most {MAX_EMBED_INPUTS} inputs per request", "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestError("encoding_format must be float or base64", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != replica.engine.dimension:
        raise RequestError(f"this model only produces {replica.engine.dimension} dimensions", "dimensions")
    vectors, prompt_tokens = await replica.embed(texts)
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": base64.b64encode(vector.astype("<f4").tobytes()).decode()
            if encoding == "base64"
            else vector.tolist(),
        }
        for index, vector in enumerate(vectors)
    ]
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return JSONBody({"object": "list", "data": data, "model": replica.name, "usage": usage})


def register_openai_routes(app: FastAPI, replica: Replica) -> None:
    async def models() -> JSONBody:
        card = {"id": replica.name, "object": "model", "created": replica.created, "owned_by": "controlplane"}
        return JSONBody({"object": "list", "data": [card | {"max_model_len": replica.limits.max_total_tokens}]})

    for prefix in OPENAI_PREFIXES:
        router = APIRouter(prefix=prefix, tags=["OpenAI"])
        router.add_api_route("/chat/completions", _openai_route(chat_completions, replica), methods=["POST"])
        router.add_api_route("/completions", _openai_route(completions, replica), methods=["POST"])
        router.add_api_route("/embeddings", _openai_route(embeddings, replica), methods=["POST"])
        router.add_api_route("/models", models, methods=["GET"])
        app.include_router(router)


# ---------------------------------------------------------------------------------------------------------------------
# The server process


class LoopbackModelServer(ModelServer):
    """KServe's ModelServer with its single-process REST server bound to one host (KServe always binds 0.0.0.0)
    and no gRPC server."""

    def __init__(self, *, host: str, **kwargs):
        super().__init__(enable_grpc=False, workers=1, **kwargs)
        self.host = host

    def start(self, models: list[Model]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.host = self.host
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        self.register_signal_handler()  # uvicorn replaces these while it serves: SIGTERM shuts it down gracefully
        asyncio.run(self._serve())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers.model_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the model name in V2 routes and OpenAI responses")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--task", choices=("auto", "generate", "embed"), default="auto")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--max-input-tokens", type=int, default=None)
    parser.add_argument("--max-total-tokens", type=int, default=None)
    parser.add_argument("--max-batch", type=int, default=1, help="requests run on the model at once")
    parser.add_argument("--grace-period", type=int, default=10, help="seconds in-flight requests get on SIGTERM")
    args = parser.parse_args(argv)
    for name in ("max_input_tokens", "max_total_tokens", "max_batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.model_dir.is_dir():
        parser.error(f"--model-dir {args.model_dir} is not a directory")
    return args


def load_replica(args: argparse.Namespace) -> Replica:
    started = time.monotonic()
    checked = verify_manifest(args.model_dir)
    if checked:
        logger.info("MANIFEST.json: %d files match their sha256", checked)
    task = args.task
    if task == "auto":
        task = "embed" if (args.model_dir / "modules.json").exists() else "generate"
    device, dtype = resolve_placement(args.device, args.dtype)
    torch.manual_seed(0)
    transformers_logging.disable_progress_bar()
    try:
        engine = (TextEmbedder if task == "embed" else TextGenerator)(args.model_dir, device, dtype)
        engine.warm_up()
    except StartupError:
        raise
    except Exception as exc:  # whatever transformers or torch raise: the supervisor gets one clear line
        raise StartupError(f"could not load the model from {args.model_dir}: {exc}", EXIT_LOAD)
    if task == "embed":
        limits = embedding_limits(args, engine.max_sequence_length)
    else:
        limits = generation_limits(args, engine.context_length)
    logger.info(
        "loaded %s (%s) on %s in %s: max input %d tokens, max total %d, %d at once, ready in %.1f s",
        args.name,
        task,
        device,
        str(dtype).removeprefix("torch."),
        limits.max_input_tokens,
        limits.max_total_tokens,
        args.max_batch,
        time.monotonic() - started,
    )
    return Replica(name=args.name, task=task, engine=engine, limits=limits, max_batch=args.max_batch)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    try:
        replica = load_replica(args)
    except StartupError as exc:
        print(f"model_server: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    register_openai_routes(kserve_model_server.app, replica)  # the FastAPI app KServe's REST server serves
    server = LoopbackModelServer(host=args.host, http_port=args.port, grace_period=args.grace_period)
    try:
        server.start([ServedModel(replica)])
    finally:
        replica.executor.shutdown(wait=True, cancel_futures=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
