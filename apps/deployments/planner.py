"""GPU memory planner: will a model version fit an accelerator, how many sequences it serves, and what it costs.

Pure arithmetic over plain dataclasses (no ORM, no I/O beyond reading the bundled accelerator catalog), so the
deployment wizard, the API and the tests all get the same numbers. The model follows vLLM's budget:

    usable per device    = device memory × memory_utilization
    KV cache per device  = usable − weights per device − activation allowance − runtime overhead

Weights are split evenly over tensor_parallel × pipeline_parallel devices. The KV cache a device holds per token
is 2 (K and V) × its layers × its key/value heads × head_dim × KV bytes. Every device gets the same KV
allocation, sized for the busiest one, as vLLM does; tokens are counted in whole 16-token blocks.

Activation allowance: the peak of one prefill step over `max_batched_tokens` tokens on the device that holds the
language-model head. Per token it is the residual stream (2 × hidden) plus the largest transient of the step:
the logits (vocab × (compute bytes + 4 + 4): the LM-head output, its fp32 upcast and the fp32 softmax of the
sampler, all alive at once), the MLP (3 × intermediate / tensor_parallel) or attention q/k/v/out. The logits
dominate for current vocabularies, which is why vLLM measured 9.37 GiB of activations for Llama-3-8B on an
A100-40GB; this allowance gives 9.91 GiB there, so the planner counts ~6 % fewer KV tokens than vLLM did
(85,456 against 91,056) and errs on the safe side. See docs/planner.md for the full derivation and table.

Quantization (int8/int4) shrinks the weights only: activations and the KV cache stay in 16-bit, as in
weight-only GPTQ/AWQ/bitsandbytes runtimes. fp32 keeps everything in 4 bytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

GIB = 1024**3

DTYPE_BYTES: dict[str, float] = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int4": 0.5}
# Bytes of one KV-cache element and of activations: weight-only quantization computes in 16-bit.
KV_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 2, "int4": 2}
DTYPE_ALIASES: dict[str, str] = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
}

KV_BLOCK_TOKENS = 16  # vLLM's default block size; the cache is allocated in whole blocks.
DEFAULT_MIN_BATCHED_TOKENS = 2048  # vLLM's floor for max_num_batched_tokens.
DEFAULT_MAX_BATCHED_TOKENS = 8192  # Long contexts are prefilled in chunks of at most this many tokens.
RUNTIME_OVERHEAD_GIB = 0.25  # Per device, outside PyTorch's allocator: cuBLAS workspaces, allocator slack.
PARALLEL_OVERHEAD_GIB = 1.8  # Extra per device in a parallel group: NCCL and all-reduce buffers (vLLM, TP=2).
FALLBACK_VOCAB_SIZE = 32000  # Used, with a note, when the metadata has no vocabulary size.
FALLBACK_FFN_RATIO = 4  # intermediate_size = 4 × hidden when the metadata lacks it.
FULL_FINE_TUNE_BYTES_PER_PARAMETER = 16  # 16-bit weights and gradients, fp32 master weights and two Adam moments.
SMALLEST_FIT_COUNTS = (1, 2, 4, 8)

ACCELERATORS_JSON = Path(__file__).resolve().parent / "data" / "accelerators.json"


class PlanError(ValueError):
    """The planner cannot be run on this input (missing metadata, invalid request); the message says why."""


def dtype_key(name: str) -> str:
    """The planner's name for a dtype: `bfloat16` → `bf16`; raises PlanError for one it does not know."""
    if not isinstance(name, str):
        raise PlanError(f"dtype must be a string such as 'bf16', got {name!r}")
    key = DTYPE_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in DTYPE_BYTES:
        raise PlanError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPE_BYTES)}")
    return key


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_positive_int(name: str, value: Any) -> None:
    if not _is_whole(value) or value < 1:
        raise PlanError(f"{name} must be a positive whole number, got {value!r}")


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a model; `head_dim` defaults to hidden_size // attention_heads."""

    parameters: int
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    max_context: int | None = None
    vocab_size: int | None = None
    intermediate_size: int | None = None
    head_dim: int | None = None

    def __post_init__(self) -> None:
        for name in ("parameters", "layers", "hidden_size", "attention_heads", "kv_heads"):
            _require_positive_int(name, getattr(self, name))
        for name in ("max_context", "vocab_size", "intermediate_size", "head_dim"):
            if getattr(self, name) is not None:
                _require_positive_int(name, getattr(self, name))
        if self.kv_heads > self.attention_heads or self.attention_heads % self.kv_heads:
            raise PlanError(
                f"{self.attention_heads} attention heads cannot share {self.kv_heads} key/value heads evenly"
            )
        if self.head_dim is None:
            if self.hidden_size < self.attention_heads:
                raise PlanError(f"hidden size {self.hidden_size} is smaller than {self.attention_heads} heads")
            object.__setattr__(self, "head_dim", self.hidden_size // self.attention_heads)

    @classmethod
    def from_metadata(cls, metadata: dict, parameter_count: int | None = None) -> ModelShape:
        """Read a registry version's metadata (as written by registry.formats.metadata_from_files).

        `parameter_count` (the version's column) wins over metadata["parameters"] when given.
        """
        if not isinstance(metadata, dict):
            raise PlanError(
                "the version's metadata is not a JSON object; the planner needs layers, hidden size and heads"
            )
        missing = [
            label
            for key, label in (
                ("layers", "layer count"),
                ("hidden_size", "hidden size"),
                ("attention_heads", "attention head count"),
            )
            if metadata.get(key) is None
        ]
        if missing:
            raise PlanError(
                f"the version's metadata has no {' or '.join(missing)}; the planner needs layers, hidden size and heads"
            )
        parameters = parameter_count if parameter_count is not None else metadata.get("parameters")
        if parameters is None:
            raise PlanError(
                "the version has no parameter count (read from safetensors headers); the planner needs it to size "
                "the weights"
            )
        for key in ("layers", "hidden_size", "attention_heads", "kv_heads", "head_dim"):
            if metadata.get(key) is not None:
                _require_positive_int(f"metadata {key!r}", metadata[key])
        _require_positive_int("the parameter count", parameters)
        optional = {}
        for key in ("max_context", "vocab_size", "intermediate_size", "head_dim"):
            value = metadata.get(key)
            if value is not None:
                _require_positive_int(f"metadata {key!r}", value)
                optional[key] = value
        return cls(
            parameters=parameters,
            layers=metadata["layers"],
            hidden_size=metadata["hidden_size"],
            attention_heads=metadata["attention_heads"],
            kv_heads=metadata.get("kv_heads") or metadata["attention_heads"],
            **optional,
        )


@dataclass(frozen=True)
class AcceleratorSpec:
    """One device kind. memory_gib is what CUDA reports for one device (host memory for a CPU entry)."""

    name: str
    memory_gib: float
    hourly_price: float
    is_cpu: bool = False


@dataclass(frozen=True)
class PlanRequest:
    """A deployment to check. `catalog` is searched for the smallest fitting configuration of each dtype."""

    shape: ModelShape
    dtype: str
    context_length: int
    concurrent_sequences: int
    accelerator: AcceleratorSpec
    accelerator_count: int = 1
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    memory_utilization: float = 0.9
    micro_batches: int | None = None  # None: one micro-batch per concurrent sequence
    catalog: tuple[AcceleratorSpec, ...] = ()
    hours_per_month: float = 730
    max_batched_tokens: int | None = None  # None: the context clamped to 2,048..8,192 (vLLM's defaults)


@dataclass(frozen=True)
class SmallestFit:
    """The cheapest catalog configuration that serves the requested context and concurrency in one dtype."""

    accelerator: str
    count: int
    tensor_parallel: int
    pipeline_parallel: int
    memory_gib: float
    hourly_cost: float
    monthly_cost: float
    kv_cache_tokens: int
    sequences_at_context: int

    def as_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["memory_gib"] = round(self.memory_gib, 2)
        data["hourly_cost"] = round(self.hourly_cost, 4)
        data["monthly_cost"] = round(self.monthly_cost, 2)
        return data


_GIB_FIELDS = (
    "device_memory_bytes",
    "usable_bytes_per_device",
    "weight_bytes",
    "weight_bytes_per_device",
    "activation_bytes_per_device",
    "runtime_overhead_bytes_per_device",
    "overhead_bytes_per_device",
    "kv_cache_bytes_per_device",
    "kv_cache_bytes",
    "fine_tune_bytes",
)


@dataclass(frozen=True)
class Plan:
    """The planner's answer. Byte figures are exact integers; as_dict adds GiB figures for display."""

    fits: bool
    reasons: tuple[str, ...]
    notes: tuple[str, ...]
    dtype: str
    accelerator: str
    accelerator_count: int
    tensor_parallel: int
    pipeline_parallel: int
    context_length: int
    concurrent_sequences: int
    memory_utilization: float
    device_memory_bytes: int
    usable_bytes_per_device: int
    weight_bytes: int
    weight_bytes_per_device: int
    kv_bytes_per_token: int
    kv_bytes_per_token_per_device: int
    max_batched_tokens: int
    activation_bytes_per_device: int
    runtime_overhead_bytes_per_device: int
    kv_cache_bytes_per_device: int
    kv_cache_bytes: int
    kv_cache_tokens: int
    sequences_at_context: int
    micro_batches: int
    pipeline_bubble: float
    fine_tune_bytes: int
    fine_tune_accelerators: int | None
    hourly_cost: float
    monthly_cost: float
    smallest_fits: dict[str, SmallestFit | None] = field(default_factory=dict)

    @property
    def overhead_bytes_per_device(self) -> int:
        return self.activation_bytes_per_device + self.runtime_overhead_bytes_per_device

    def as_dict(self) -> dict:
        """JSON-safe: lists instead of tuples, GiB beside every byte figure, costs rounded to cents."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "smallest_fits":
                value = {dtype: fit.as_dict() if fit else None for dtype, fit in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            data[f.name] = value
        data["overhead_bytes_per_device"] = self.overhead_bytes_per_device
        for name in _GIB_FIELDS:
            data[name.replace("bytes", "gib")] = round(data[name] / GIB, 2)
        for name in ("kv_bytes_per_token", "kv_bytes_per_token_per_device"):
            data[name.replace("bytes", "kib")] = round(data[name] / 1024, 2)
        data["pipeline_bubble"] = round(self.pipeline_bubble, 4)
        data["hourly_cost"] = round(self.hourly_cost, 4)
        data["monthly_cost"] = round(self.monthly_cost, 2)
        return data


@cache
def default_catalog() -> tuple[AcceleratorSpec, ...]:
    """The accelerators bundled in data/accelerators.json, in file order."""
    entries = json.loads(ACCELERATORS_JSON.read_text())
    return tuple(
        AcceleratorSpec(
            name=entry["name"],
            memory_gib=float(entry["memory_gib"]),
            hourly_price=float(entry["hourly_price"]),
            is_cpu=bool(entry.get("is_cpu", False)),
        )
        for entry in entries
    )


def pipeline_bubble(*, stages: int, micro_batches: int) -> float:
    """Share of time a pipeline stage idles: 1 − m / (m + p − 1)."""
    return 1 - micro_batches / (micro_batches + stages - 1)


def kv_bytes_per_token(shape: ModelShape, dtype: str) -> int:
    """KV cache of the whole model for one token: 2 × layers × kv_heads × head_dim × KV bytes."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * KV_BYTES[dtype_key(dtype)]


def plan(request: PlanRequest) -> Plan:
    """Check one configuration and look for the smallest fitting one of each dtype in the catalog."""
    dtype = _validate(request)
    result = _evaluate(request, dtype)
    smallest = {}
    if request.catalog:
        smallest = {key: _smallest_fit(request, key) for key in DTYPE_BYTES}
    return Plan(**result, smallest_fits=smallest)


def _validate(request: PlanRequest) -> str:
    if not isinstance(request.shape, ModelShape):
        raise PlanError("shape must be a ModelShape")
    dtype = dtype_key(request.dtype)
    _require_positive_int("context_length", request.context_length)
    _require_positive_int("concurrent_sequences", request.concurrent_sequences)
    _require_positive_int("accelerator_count", request.accelerator_count)
    _require_positive_int("tensor_parallel", request.tensor_parallel)
    _require_positive_int("pipeline_parallel", request.pipeline_parallel)
    if request.micro_batches is not None:
        _require_positive_int("micro_batches", request.micro_batches)
    if request.max_batched_tokens is not None:
        _require_positive_int("max_batched_tokens", request.max_batched_tokens)
    utilization = request.memory_utilization
    if isinstance(utilization, bool) or not isinstance(utilization, int | float) or not 0 < utilization <= 1:
        raise PlanError(f"memory_utilization must be above 0 and at most 1, got {utilization!r}")
    hours = request.hours_per_month
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not 0 < hours <= 744:
        raise PlanError(f"hours_per_month must be above 0 and at most 744, got {hours!r}")
    for spec in (request.accelerator, *request.catalog):
        if not isinstance(spec, AcceleratorSpec):
            raise PlanError("accelerators must be AcceleratorSpec values")
        if not (isinstance(spec.memory_gib, int | float) and math.isfinite(spec.memory_gib) and spec.memory_gib > 0):
            raise PlanError(f"{spec.name}: memory_gib must be a positive number, got {spec.memory_gib!r}")
        price = spec.hourly_price
        if not (isinstance(price, int | float) and math.isfinite(price) and price >= 0):
            raise PlanError(f"{spec.name}: hourly_price must be zero or more, got {price!r}")
    return dtype


def _gib(value: float) -> str:
    return f"{value / GIB:,.2f} GiB"


def _activation_bytes(shape: ModelShape, dtype: str, batched_tokens: int, tensor_parallel: int) -> tuple[int, bool]:
    """Peak prefill activations on the device holding the LM head; the flag says whether a fallback was used."""
    compute = KV_BYTES[dtype]
    vocab = shape.vocab_size or FALLBACK_VOCAB_SIZE
    intermediate = shape.intermediate_size or FALLBACK_FFN_RATIO * shape.hidden_size
    residual = 2 * shape.hidden_size * compute
    logits = vocab * (compute + 4 + 4)
    # Tensor parallelism shards the MLP and attention; the full logits are gathered on one device.
    mlp = 3 * intermediate * compute / tensor_parallel
    attention = (2 * shape.attention_heads + 2 * shape.kv_heads) * shape.head_dim * compute / tensor_parallel
    per_token = residual + max(logits, mlp, attention)
    fallback = shape.vocab_size is None or shape.intermediate_size is None
    return math.ceil(per_token * batched_tokens), fallback


def _evaluate(request: PlanRequest, dtype: str) -> dict:
    shape, spec = request.shape, request.accelerator
    tp, pp, count = request.tensor_parallel, request.pipeline_parallel, request.accelerator_count
    devices = tp * pp
    reasons: list[str] = []
    notes: list[str] = []

    if shape.max_context is not None and request.context_length > shape.max_context:
        reasons.append(
            f"The context of {request.context_length:,} tokens is longer than the model's maximum of "
            f"{shape.max_context:,}."
        )
    if spec.is_cpu:
        if devices != 1 or count != 1:
            reasons.append(
                "A CPU plan runs on one host: accelerator count, tensor parallel and pipeline parallel must all be 1 "
                "(add replicas to scale out)."
            )
    else:
        if devices != count:
            reasons.append(
                f"Tensor parallel {tp} × pipeline parallel {pp} = {devices} devices, but {count} accelerators "
                "were requested."
            )
        if shape.attention_heads % tp:
            reasons.append(f"{shape.attention_heads} attention heads cannot be split evenly over tensor parallel {tp}.")
        if shape.kv_heads % tp and tp % shape.kv_heads:
            reasons.append(
                f"{shape.kv_heads} key/value heads can be neither split nor replicated over tensor parallel {tp}."
            )
        if shape.layers < pp:
            reasons.append(f"The model has {shape.layers} layers, fewer than the {pp} pipeline stages.")

    device_memory = round(spec.memory_gib * GIB)
    usable = math.floor(device_memory * request.memory_utilization)
    weight_bytes = math.ceil(shape.parameters * DTYPE_BYTES[dtype])
    weights_per_device = math.ceil(weight_bytes / devices)

    kv_per_token = kv_bytes_per_token(shape, dtype)
    kv_heads_per_device = math.ceil(shape.kv_heads / tp)  # replicated when tp > kv_heads
    layers_per_stage = math.ceil(shape.layers / pp)
    kv_per_token_per_device = 2 * layers_per_stage * kv_heads_per_device * shape.head_dim * KV_BYTES[dtype]

    batched_tokens = request.max_batched_tokens or min(
        max(request.context_length, DEFAULT_MIN_BATCHED_TOKENS), DEFAULT_MAX_BATCHED_TOKENS
    )
    activations, fallback = _activation_bytes(shape, dtype, batched_tokens, tp)
    if fallback:
        notes.append(
            f"The metadata lacks the vocabulary or MLP size; the activation allowance assumes a vocabulary of "
            f"{FALLBACK_VOCAB_SIZE:,} and an MLP {FALLBACK_FFN_RATIO}× the hidden size."
        )
    runtime_overhead = RUNTIME_OVERHEAD_GIB + (PARALLEL_OVERHEAD_GIB if devices > 1 and not spec.is_cpu else 0)
    runtime_overhead_bytes = round(runtime_overhead * GIB)

    kv_room = usable - weights_per_device - activations - runtime_overhead_bytes
    kv_per_device = max(kv_room, 0)
    block_bytes = kv_per_token_per_device * KV_BLOCK_TOKENS
    kv_tokens = (kv_per_device // block_bytes) * KV_BLOCK_TOKENS
    sequences = kv_tokens // request.context_length

    where = f"{count} × {spec.name}" if count > 1 else spec.name
    if weights_per_device > usable:
        reasons.append(
            f"The weights need {_gib(weights_per_device)} per device, more than the {_gib(usable)} usable on one "
            f"{spec.name} at {request.memory_utilization:.0%} utilisation."
        )
    elif kv_room <= 0:
        reasons.append(
            f"Weights ({_gib(weights_per_device)}) plus the activation and runtime allowance "
            f"({_gib(activations + runtime_overhead_bytes)}) leave no room for the KV cache in the {_gib(usable)} "
            f"usable per device on {where}."
        )
    elif sequences == 0:
        reasons.append(
            f"No room for even one sequence of {request.context_length:,} tokens: the KV cache holds "
            f"{kv_tokens:,} tokens ({_gib(kv_per_device)} per device)."
        )
    elif sequences < request.concurrent_sequences:
        reasons.append(
            f"The KV cache holds {sequences:,} sequences of {request.context_length:,} tokens, fewer than the "
            f"{request.concurrent_sequences:,} requested."
        )

    micro_batches = request.micro_batches or request.concurrent_sequences
    fine_tune_bytes = FULL_FINE_TUNE_BYTES_PER_PARAMETER * shape.parameters
    fine_tune_accelerators = None if spec.is_cpu else math.ceil(fine_tune_bytes / device_memory)
    hourly = count * spec.hourly_price
    return {
        "fits": not reasons,
        "reasons": tuple(reasons),
        "notes": tuple(notes),
        "dtype": dtype,
        "accelerator": spec.name,
        "accelerator_count": count,
        "tensor_parallel": tp,
        "pipeline_parallel": pp,
        "context_length": request.context_length,
        "concurrent_sequences": request.concurrent_sequences,
        "memory_utilization": float(request.memory_utilization),
        "device_memory_bytes": device_memory,
        "usable_bytes_per_device": usable,
        "weight_bytes": weight_bytes,
        "weight_bytes_per_device": weights_per_device,
        "kv_bytes_per_token": kv_per_token,
        "kv_bytes_per_token_per_device": kv_per_token_per_device,
        "max_batched_tokens": batched_tokens,
        "activation_bytes_per_device": activations,
        "runtime_overhead_bytes_per_device": runtime_overhead_bytes,
        "kv_cache_bytes_per_device": kv_per_device,
        "kv_cache_bytes": kv_per_device * devices,
        "kv_cache_tokens": kv_tokens,
        "sequences_at_context": sequences,
        "micro_batches": micro_batches,
        "pipeline_bubble": pipeline_bubble(stages=pp, micro_batches=micro_batches),
        "fine_tune_bytes": fine_tune_bytes,
        "fine_tune_accelerators": fine_tune_accelerators,
        "hourly_cost": hourly,
        "monthly_cost": hourly * request.hours_per_month,
    }


def _layouts(count: int) -> list[tuple[int, int]]:
    """(tensor_parallel, pipeline_parallel) splits of `count` devices, most tensor parallel first."""
    return [(count // pp, pp) for pp in (1, 2, 4, 8) if count % pp == 0]


def _smallest_fit(request: PlanRequest, dtype: str) -> SmallestFit | None:
    """Cheapest (then least total memory) catalog configuration of the request's kind that fits."""
    best: tuple[tuple, SmallestFit] | None = None
    for spec in request.catalog:
        if spec.is_cpu != request.accelerator.is_cpu:
            continue
        for count in (1,) if spec.is_cpu else SMALLEST_FIT_COUNTS:
            result = None
            for tp, pp in _layouts(count):
                candidate = PlanRequest(
                    shape=request.shape,
                    dtype=dtype,
                    context_length=request.context_length,
                    concurrent_sequences=request.concurrent_sequences,
                    accelerator=spec,
                    accelerator_count=count,
                    tensor_parallel=tp,
                    pipeline_parallel=pp,
                    memory_utilization=request.memory_utilization,
                    micro_batches=request.micro_batches,
                    hours_per_month=request.hours_per_month,
                    max_batched_tokens=request.max_batched_tokens,
                )
                evaluated = _evaluate(candidate, dtype)
                if evaluated["fits"]:
                    result = evaluated
                    break
            if result is None:
                continue
            fit = SmallestFit(
                accelerator=spec.name,
                count=count,
                tensor_parallel=result["tensor_parallel"],
                pipeline_parallel=result["pipeline_parallel"],
                memory_gib=count * spec.memory_gib,
                hourly_cost=result["hourly_cost"],
                monthly_cost=result["monthly_cost"],
                kv_cache_tokens=result["kv_cache_tokens"],
                sequences_at_context=result["sequences_at_context"],
            )
            key = (fit.hourly_cost, fit.memory_gib, count, spec.name)
            if best is None or key < best[0]:
                best = (key, fit)
            break  # a larger count of the same accelerator costs more
    return best[1] if best else None
