"""The GPU memory planner against published model configurations and vLLM's measured budget.

Pure arithmetic: no database fixtures are requested.
"""

from __future__ import annotations

import json

import pytest

from apps.deployments.planner import (
    ACCELERATORS_JSON,
    DTYPE_BYTES,
    GIB,
    KV_BLOCK_TOKENS,
    AcceleratorSpec,
    ModelShape,
    PlanError,
    PlanRequest,
    default_catalog,
    dtype_key,
    kv_bytes_per_token,
    pipeline_bubble,
    plan,
)

KIB = 1024


@pytest.fixture(autouse=True)
def _clear_cache():
    """Overrides the suite's Redis cache reset: the planner is pure, so these tests need no running services."""
    yield


LLAMA_2_7B = ModelShape(
    parameters=6_740_000_000,
    layers=32,
    hidden_size=4096,
    attention_heads=32,
    kv_heads=32,
    max_context=4096,
    vocab_size=32000,
    intermediate_size=11008,
)
LLAMA_2_13B = ModelShape(
    parameters=13_000_000_000,
    layers=40,
    hidden_size=5120,
    attention_heads=40,
    kv_heads=40,
    max_context=4096,
    vocab_size=32000,
    intermediate_size=13824,
)
LLAMA_2_70B = ModelShape(
    parameters=68_980_000_000,
    layers=80,
    hidden_size=8192,
    attention_heads=64,
    kv_heads=8,
    max_context=4096,
    vocab_size=32000,
    intermediate_size=28672,
)
LLAMA_3_8B = ModelShape(
    parameters=8_030_000_000,
    layers=32,
    hidden_size=4096,
    attention_heads=32,
    kv_heads=8,
    max_context=8192,
    vocab_size=128256,
    intermediate_size=14336,
)
MISTRAL_7B = ModelShape(
    parameters=7_240_000_000,
    layers=32,
    hidden_size=4096,
    attention_heads=32,
    kv_heads=8,
    max_context=32768,
    vocab_size=32000,
    intermediate_size=14336,
)
GPT2_METADATA = {
    "dtype": "float32",
    "layers": 2,
    "head_dim": 16,
    "kv_heads": 4,
    "model_type": "gpt2",
    "parameters": 128768,
    "vocab_size": 320,
    "hidden_size": 64,
    "max_context": 128,
    "architecture": "GPT2LMHeadModel",
    "attention_heads": 4,
    "intermediate_size": 1536,
}

CATALOG = {spec.name: spec for spec in default_catalog()}
A100_40 = AcceleratorSpec(name="A100-40GB", memory_gib=39.50, hourly_price=3.67)  # as CUDA reported in vLLM's log
A100_80 = CATALOG["A100-80GB"]
CPU = CATALOG["CPU"]


def request(shape=LLAMA_3_8B, **overrides) -> PlanRequest:
    values = {
        "shape": shape,
        "dtype": "bf16",
        "context_length": 4096,
        "concurrent_sequences": 1,
        "accelerator": A100_80,
    }
    values.update(overrides)
    return PlanRequest(**values)


# KV cache and weights ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "kib"),
    [(LLAMA_2_7B, 512), (LLAMA_2_13B, 800), (LLAMA_2_70B, 320), (LLAMA_3_8B, 128), (MISTRAL_7B, 128)],
    ids=["llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "mistral-7b"],
)
def test_kv_cache_per_token_in_bf16_matches_the_published_configurations(shape, kib):
    assert kv_bytes_per_token(shape, "bf16") == kib * KIB
    assert plan(request(shape, context_length=1024)).kv_bytes_per_token == kib * KIB


def test_kv_cache_stays_16_bit_under_weight_only_quantization_and_doubles_in_fp32():
    assert kv_bytes_per_token(LLAMA_2_7B, "int8") == kv_bytes_per_token(LLAMA_2_7B, "int4") == 512 * KIB
    assert kv_bytes_per_token(LLAMA_2_7B, "fp16") == 512 * KIB
    assert kv_bytes_per_token(LLAMA_2_7B, "fp32") == 1024 * KIB


def test_weights_of_a_7b_model_are_14_gb_at_bf16_and_training_needs_112_gb():
    seven_b = ModelShape(parameters=7_000_000_000, layers=32, hidden_size=4096, attention_heads=32, kv_heads=32)
    result = plan(request(seven_b))
    assert result.weight_bytes == 14_000_000_000
    assert result.fine_tune_bytes == 112_000_000_000
    assert result.fine_tune_accelerators == 2  # 112 GB over 79.15 GiB (85 GB) devices

    llama = plan(request(LLAMA_2_7B))
    assert llama.weight_bytes == 13_480_000_000
    assert llama.as_dict()["weight_gib"] == 12.55


@pytest.mark.parametrize(("dtype", "bytes_per_parameter"), list(DTYPE_BYTES.items()))
def test_weights_scale_with_the_dtype(dtype, bytes_per_parameter):
    assert plan(request(LLAMA_2_7B, dtype=dtype)).weight_bytes == int(6_740_000_000 * bytes_per_parameter)


# vLLM's published budget -------------------------------------------------------------------------------------


def test_llama_3_8b_on_a100_40gb_comes_within_ten_percent_of_vllms_kv_cache():
    """vLLM issue #12330: 39.50 GiB × 0.9 = 35.55 GiB; weights 14.96; KV 11.12 GiB = 5,691 blocks × 16 tokens."""
    result = plan(request(LLAMA_3_8B, context_length=8192, accelerator=A100_40))
    data = result.as_dict()

    assert data["usable_gib_per_device"] == 35.55
    assert data["weight_gib"] == 14.96
    assert result.max_batched_tokens == 8192
    assert data["activation_gib_per_device"] == pytest.approx(9.37, rel=0.10)  # vLLM measured 9.37 GiB
    assert result.kv_cache_tokens % KV_BLOCK_TOKENS == 0
    vllm_tokens = 5691 * 16
    assert vllm_tokens == 91_056
    assert result.kv_cache_tokens == pytest.approx(vllm_tokens, rel=0.10)
    assert result.kv_cache_tokens <= vllm_tokens  # the allowance errs on the safe side
    assert data["kv_cache_gib"] == pytest.approx(11.12, rel=0.10)
    assert result.kv_cache_tokens == 85_456
    assert result.sequences_at_context == 10  # vLLM: "maximum concurrency for 8192 tokens per request: 11.12x"
    assert result.fits


# Parallelism -------------------------------------------------------------------------------------------------


def test_llama_2_70b_bf16_needs_more_than_one_a100_80gb():
    result = plan(request(LLAMA_2_70B))
    assert not result.fits
    assert result.kv_cache_tokens == 0
    assert any("weights need 128.49 GiB per device" in reason for reason in result.reasons)


def test_llama_2_70b_bf16_on_two_a100_80gb_is_borderline_and_on_four_is_comfortable():
    two = plan(request(LLAMA_2_70B, accelerator_count=2, tensor_parallel=2))
    four = plan(request(LLAMA_2_70B, accelerator_count=4, tensor_parallel=4))

    assert two.weight_bytes_per_device == four.weight_bytes_per_device * 2 == 68_980_000_000
    assert two.fits and 1 <= two.sequences_at_context < 8  # a handful of 4,096-token sequences
    assert not plan(request(LLAMA_2_70B, accelerator_count=2, tensor_parallel=2, concurrent_sequences=8)).fits
    assert four.fits and four.sequences_at_context > 100
    assert four.kv_bytes_per_token_per_device == 80 * KIB  # 8 KV heads split 4 ways
    assert four.kv_cache_bytes == 4 * four.kv_cache_bytes_per_device
    assert four.hourly_cost == pytest.approx(4 * A100_80.hourly_price)


def test_llama_2_70b_int4_fits_one_80gb_device():
    result = plan(request(LLAMA_2_70B, dtype="int4", concurrent_sequences=16))
    assert result.fits
    assert result.as_dict()["weight_gib"] == 32.12
    assert result.kv_bytes_per_token == 320 * KIB  # the KV cache is not quantized


def test_kv_heads_are_replicated_when_tensor_parallel_exceeds_them():
    result = plan(request(LLAMA_2_70B, accelerator_count=16, tensor_parallel=16))
    assert result.kv_bytes_per_token_per_device == 2 * 80 * 1 * 128 * 2
    assert result.fits


def test_pipeline_parallel_splits_layers_and_reports_the_bubble():
    result = plan(request(LLAMA_2_70B, accelerator_count=4, pipeline_parallel=4, micro_batches=1))
    assert result.kv_bytes_per_token_per_device == 320 * KIB // 4
    assert result.pipeline_bubble == pytest.approx(0.75)
    assert plan(request(LLAMA_2_70B, accelerator_count=4, pipeline_parallel=4, micro_batches=4)).as_dict()[
        "pipeline_bubble"
    ] == pytest.approx(0.4286, abs=1e-4)
    assert pipeline_bubble(stages=4, micro_batches=4) == pytest.approx(3 / 7)
    assert (
        plan(request(LLAMA_2_70B, accelerator_count=4, pipeline_parallel=4, concurrent_sequences=4)).micro_batches == 4
    )
    assert plan(request()).pipeline_bubble == 0


# Reasons it does not fit -------------------------------------------------------------------------------------


def test_parallel_sizes_must_multiply_to_the_accelerator_count():
    result = plan(request(accelerator_count=4, tensor_parallel=2))
    assert not result.fits
    assert "Tensor parallel 2 × pipeline parallel 1 = 2 devices, but 4 accelerators were requested." in result.reasons


def test_attention_heads_must_divide_by_tensor_parallel():
    result = plan(request(accelerator_count=3, tensor_parallel=3))
    assert "32 attention heads cannot be split evenly over tensor parallel 3." in result.reasons
    assert not result.fits


def test_kv_heads_must_split_or_replicate_over_tensor_parallel():
    shape = ModelShape(parameters=10**9, layers=24, hidden_size=6144, attention_heads=48, kv_heads=8, vocab_size=32000)
    result = plan(request(shape, accelerator_count=6, tensor_parallel=6))
    assert result.reasons == ("8 key/value heads can be neither split nor replicated over tensor parallel 6.",)


def test_layers_must_cover_the_pipeline_stages():
    tiny = ModelShape.from_metadata(GPT2_METADATA)
    result = plan(request(tiny, context_length=128, accelerator_count=4, pipeline_parallel=4))
    assert "The model has 2 layers, fewer than the 4 pipeline stages." in result.reasons


def test_context_longer_than_the_model_allows():
    result = plan(request(LLAMA_2_7B, context_length=8192))
    assert "The context of 8,192 tokens is longer than the model's maximum of 4,096." in result.reasons
    assert not result.fits


def test_no_room_for_one_sequence_and_too_few_sequences_are_explained():
    none = plan(request(LLAMA_2_13B, accelerator=A100_40, memory_utilization=0.72))
    assert none.sequences_at_context == 0 and not none.fits
    assert none.reasons == (
        "No room for even one sequence of 4,096 tokens: the KV cache holds 3,504 tokens (2.68 GiB per device).",
    )

    few = plan(request(LLAMA_3_8B, context_length=8192, accelerator=A100_40, concurrent_sequences=32))
    assert few.reasons == ("The KV cache holds 10 sequences of 8,192 tokens, fewer than the 32 requested.",)

    crowded = plan(request(LLAMA_3_8B, dtype="int4", context_length=8192, accelerator=CATALOG["T4-16GB"]))
    assert crowded.kv_cache_bytes_per_device == 0
    assert crowded.reasons == (
        "Weights (3.74 GiB) plus the activation and runtime allowance (10.16 GiB) leave no room for the KV cache "
        "in the 13.27 GiB usable per device on T4-16GB.",
    )


# Smallest fitting configuration ------------------------------------------------------------------------------


def test_smallest_fits_pick_the_cheapest_catalog_configuration_per_dtype():
    result = plan(request(LLAMA_2_70B, concurrent_sequences=8, catalog=default_catalog()))
    fits = result.smallest_fits
    assert set(fits) == set(DTYPE_BYTES)
    costs = {dtype: fit.hourly_cost for dtype, fit in fits.items()}
    assert costs["int4"] <= costs["int8"] <= costs["bf16"] <= costs["fp32"]
    assert fits["bf16"] == fits["fp16"]
    for dtype, fit in fits.items():
        assert fit.count in (1, 2, 4, 8)
        assert fit.sequences_at_context >= 8
        spec = CATALOG[fit.accelerator]
        assert not spec.is_cpu
        assert fit.hourly_cost == pytest.approx(fit.count * spec.hourly_price)
        check = plan(
            request(
                LLAMA_2_70B,
                dtype=dtype,
                concurrent_sequences=8,
                accelerator=spec,
                accelerator_count=fit.count,
                tensor_parallel=fit.tensor_parallel,
                pipeline_parallel=fit.pipeline_parallel,
            )
        )
        assert check.fits
        # Nothing cheaper in the catalog fits.
        for other in default_catalog():
            for count in (1, 2, 4, 8):
                if other.is_cpu or count * other.hourly_price >= fit.hourly_cost:
                    continue
                cheaper = request(
                    LLAMA_2_70B,
                    dtype=dtype,
                    concurrent_sequences=8,
                    accelerator=other,
                    accelerator_count=count,
                    tensor_parallel=count,
                )
                assert not plan(cheaper).fits, (dtype, other.name, count)


def test_smallest_fits_for_llama_3_8b_at_full_context():
    fits = plan(request(LLAMA_3_8B, context_length=8192, accelerator=A100_40, catalog=default_catalog())).smallest_fits
    # Two L4s would be cheaper, but the parallel allowance leaves them too little KV cache for 8,192 tokens.
    assert (fits["bf16"].accelerator, fits["bf16"].count, fits["bf16"].hourly_cost) == ("L40S-48GB", 1, 1.86)
    assert (fits["int8"].accelerator, fits["int8"].count) == ("L4-24GB", 1)
    assert not plan(
        request(LLAMA_3_8B, context_length=8192, accelerator=CATALOG["L4-24GB"], accelerator_count=2, tensor_parallel=2)
    ).fits


def test_smallest_fits_prefer_less_memory_at_equal_price():
    catalog = (
        AcceleratorSpec(name="big", memory_gib=80, hourly_price=1.0),
        AcceleratorSpec(name="small", memory_gib=40, hourly_price=1.0),
    )
    fit = plan(request(LLAMA_2_7B, catalog=catalog)).smallest_fits["bf16"]
    assert (fit.accelerator, fit.count, fit.memory_gib) == ("small", 1, 40)


def test_smallest_fits_are_none_when_nothing_fits():
    fits = plan(request(LLAMA_2_7B, context_length=8192, catalog=default_catalog())).smallest_fits
    assert fits == dict.fromkeys(DTYPE_BYTES)


def test_without_a_catalog_no_search_is_made():
    assert plan(request()).smallest_fits == {}


# CPU ---------------------------------------------------------------------------------------------------------


def test_cpu_plan_checks_the_weights_against_host_memory():
    tiny = ModelShape.from_metadata(GPT2_METADATA)
    result = plan(request(tiny, dtype="fp32", context_length=128, concurrent_sequences=4, accelerator=CPU))
    assert result.fits
    assert result.fine_tune_accelerators is None
    assert result.runtime_overhead_bytes_per_device == GIB // 4
    assert result.hourly_cost == pytest.approx(0.10)
    assert result.monthly_cost == pytest.approx(73.0)

    big = plan(request(LLAMA_2_70B, accelerator=CPU))
    assert not big.fits and "weights need" in big.reasons[0]


def test_cpu_plan_rejects_parallelism_and_searches_only_cpu_entries():
    tiny = ModelShape.from_metadata(GPT2_METADATA)
    parallel = plan(request(tiny, context_length=128, accelerator=CPU, accelerator_count=2, tensor_parallel=2))
    assert not parallel.fits
    assert parallel.reasons[0].startswith("A CPU plan runs on one host")

    fits = plan(request(tiny, context_length=128, accelerator=CPU, catalog=default_catalog())).smallest_fits
    assert {fit.accelerator for fit in fits.values()} == {"CPU"}


# Costs and output --------------------------------------------------------------------------------------------


def test_costs_are_count_times_price_and_hours_per_month():
    result = plan(request(LLAMA_2_70B, accelerator_count=4, tensor_parallel=4, hours_per_month=500))
    assert result.hourly_cost == pytest.approx(4 * 5.07)
    assert result.monthly_cost == pytest.approx(4 * 5.07 * 500)


def test_as_dict_is_json_safe_and_carries_gib_beside_bytes():
    data = plan(request(LLAMA_2_70B, accelerator_count=2, tensor_parallel=2, catalog=default_catalog())).as_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["weight_gib_per_device"] == 64.24
    assert data["kv_kib_per_token"] == 320.0
    assert (
        data["overhead_bytes_per_device"]
        == data["activation_bytes_per_device"] + (data["runtime_overhead_bytes_per_device"])
    )
    assert isinstance(data["reasons"], list)
    assert data["smallest_fits"]["int4"]["accelerator"] in CATALOG


def test_missing_vocabulary_is_noted_not_fatal():
    shape = ModelShape(parameters=1_000_000_000, layers=16, hidden_size=2048, attention_heads=16, kv_heads=16)
    result = plan(request(shape))
    assert result.fits
    assert "vocabulary" in result.notes[0]


# Metadata and validation -------------------------------------------------------------------------------------


def test_shape_from_registry_metadata():
    shape = ModelShape.from_metadata(GPT2_METADATA)
    assert shape == ModelShape(
        parameters=128768,
        layers=2,
        hidden_size=64,
        attention_heads=4,
        kv_heads=4,
        max_context=128,
        vocab_size=320,
        intermediate_size=1536,
        head_dim=16,
    )
    assert ModelShape.from_metadata(GPT2_METADATA, parameter_count=500).parameters == 500


def test_shape_defaults_kv_heads_to_heads_and_head_dim_to_hidden_over_heads():
    metadata = {"layers": 32, "hidden_size": 4096, "attention_heads": 32}
    shape = ModelShape.from_metadata(metadata, parameter_count=6_740_000_000)
    assert (shape.kv_heads, shape.head_dim, shape.max_context) == (32, 128, None)
    assert kv_bytes_per_token(shape, "bf16") == 512 * KIB


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"hidden_size": 64, "attention_heads": 4, "parameters": 1}, "the version's metadata has no layer count;"),
        ({"layers": 2, "parameters": 1}, "no hidden size or attention head count;"),
        ({"layers": 2, "hidden_size": 64, "attention_heads": 4}, "the version has no parameter count"),
        ({"layers": "2", "hidden_size": 64, "attention_heads": 4, "parameters": 1}, "'layers' must be a positive"),
        ({"layers": 2, "hidden_size": 64, "attention_heads": 4, "kv_heads": 3, "parameters": 1}, "evenly"),
    ],
)
def test_incomplete_metadata_is_a_plan_error_that_names_what_is_missing(metadata, message):
    with pytest.raises(PlanError) as error:
        ModelShape.from_metadata(metadata)
    assert message in str(error.value)
    if "no " in message:
        assert "the planner needs" in str(error.value)


def test_dtype_names_from_metadata_are_accepted():
    assert dtype_key("bfloat16") == "bf16"
    assert dtype_key("float32") == "fp32"
    assert plan(request(dtype="float16")).dtype == "fp16"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dtype": "fp8"}, "unknown dtype 'fp8'; choose one of fp32, bf16, fp16, int8, int4"),
        ({"context_length": 0}, "context_length must be a positive whole number"),
        ({"context_length": 2.5}, "context_length must be a positive whole number"),
        ({"concurrent_sequences": 0}, "concurrent_sequences must be a positive whole number"),
        ({"accelerator_count": True}, "accelerator_count must be a positive whole number"),
        ({"tensor_parallel": -1}, "tensor_parallel must be a positive whole number"),
        ({"micro_batches": 0}, "micro_batches must be a positive whole number"),
        ({"memory_utilization": 0}, "memory_utilization must be above 0 and at most 1"),
        ({"memory_utilization": 1.5}, "memory_utilization must be above 0 and at most 1"),
        ({"hours_per_month": 0}, "hours_per_month must be above 0"),
        ({"accelerator": AcceleratorSpec(name="broken", memory_gib=0, hourly_price=1)}, "broken: memory_gib"),
        ({"catalog": (AcceleratorSpec(name="free", memory_gib=8, hourly_price=-1),)}, "free: hourly_price"),
    ],
)
def test_invalid_requests_raise_plan_errors(overrides, message):
    with pytest.raises(PlanError) as error:
        plan(request(**overrides))
    assert message in str(error.value)


def test_full_utilisation_is_allowed():
    assert plan(request(memory_utilization=1.0)).usable_bytes_per_device == round(79.15 * GIB)


def test_bundled_catalog():
    entries = json.loads(ACCELERATORS_JSON.read_text())
    assert [entry["name"] for entry in entries] == [spec.name for spec in default_catalog()]
    assert {entry["name"] for entry in entries} == {
        "CPU",
        "T4-16GB",
        "V100-16GB",
        "V100-32GB",
        "A10G-24GB",
        "L4-24GB",
        "L40S-48GB",
        "A100-40GB",
        "A100-80GB",
        "H100-80GB",
        "H200-141GB",
    }
    for entry in entries:
        assert set(entry) == {
            "name",
            "vendor",
            "memory_gib",
            "hourly_price",
            "is_cpu",
            "kubernetes_resource",
            "kubernetes_product",
        }
        assert entry["memory_gib"] > 0 and entry["hourly_price"] > 0
        assert (entry["kubernetes_resource"] == "") == entry["is_cpu"]
    assert [entry["name"] for entry in entries if entry["is_cpu"]] == ["CPU"]
    assert CATALOG["A100-40GB"].memory_gib == A100_40.memory_gib
