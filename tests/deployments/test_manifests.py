"""KServe InferenceService manifests (apps.deployments.manifests) and applying them (apps.deployments.kube).

The manifests are checked against the InferenceService schema of the `kserve` SDK's generated models; the cluster
side runs against `FakeApiServer`, a real HTTP(S) server on loopback that answers like a Kubernetes API server
with KServe installed. No database is needed.
"""

from __future__ import annotations

import os
import socket
import time
from decimal import Decimal

import pytest
import yaml

from apps.deployments import kube
from apps.deployments.manifests import (
    ManifestError,
    ManifestSpec,
    cpu_quantity,
    inference_service,
    memory_quantity,
    to_yaml,
    validate_name,
)

from .fake_apiserver import FakeApiServer, schema_errors


def make_spec(**overrides) -> ManifestSpec:
    """A GPU LLM on two A100s with the vLLM backend, unless overridden."""
    values = {
        "deployment_slug": "llama-chat",
        "namespace": "llm",
        "revision_number": 3,
        "project_slug": "alpha",
        "storage_uri": "s3://models/alpha/llama-3-8b/3",
        "task": "generate",
        "dtype": "bf16",
        "max_input_tokens": 6144,
        "max_total_tokens": 8192,
        "max_batch": 32,
        "accelerator_resource": "nvidia.com/gpu",
        "accelerator_count": 2,
        "accelerator_product": "NVIDIA-A100-SXM4-80GB",
        "cpu": Decimal("8.00"),
        "memory_gib": Decimal("64.00"),
        "min_replicas": 1,
        "max_replicas": 4,
        "target_concurrency": 16,
        "scale_to_zero": False,
        "canary_percent": None,
        "env": {"LOG_LEVEL": "info"},
        "secret_refs": {"HF_TOKEN": "HF_TOKEN"},
        "tensor_parallel": 2,
        "large_llm": True,
        "labels": {"team": "search"},
    }
    values.update(overrides)
    return ManifestSpec(**values)


def cpu_spec(**overrides) -> ManifestSpec:
    """A small model on CPU with the Hugging Face backend."""
    values = {
        "deployment_slug": "minilm",
        "storage_uri": "hf://sentence-transformers/all-MiniLM-L6-v2",
        "task": "embed",
        "dtype": "fp32",
        "max_input_tokens": 256,
        "max_total_tokens": 256,
        "accelerator_resource": "",
        "accelerator_count": 0,
        "accelerator_product": "",
        "cpu": "0.5",
        "memory_gib": 1.5,
        "tensor_parallel": 1,
        "large_llm": False,
        "secret_refs": {},
        "env": {},
        "labels": {},
    }
    values.update(overrides)
    return make_spec(**values)


# --- manifest contents --------------------------------------------------------------------------------------


def test_gpu_llm_manifest_uses_vllm_backend_with_engine_args():
    manifest = inference_service(make_spec())

    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1"
    assert manifest["kind"] == "InferenceService"
    assert manifest["metadata"]["name"] == "llama-chat"
    assert manifest["metadata"]["namespace"] == "llm"
    assert manifest["metadata"]["labels"] == {
        "team": "search",
        "controlplane/project": "alpha",
        "controlplane/deployment": "llama-chat",
        "controlplane/revision": "3",
    }
    assert manifest["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "Serverless"}
    predictor = manifest["spec"]["predictor"]
    assert predictor["minReplicas"] == 1
    assert predictor["maxReplicas"] == 4
    assert predictor["scaleMetric"] == "concurrency"
    assert predictor["scaleTarget"] == 16
    assert "canaryTrafficPercent" not in predictor
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert predictor["labels"] == manifest["metadata"]["labels"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert model["storageUri"] == "s3://models/alpha/llama-3-8b/3"
    assert model["args"] == [
        "--model_name=llama-chat",
        "--backend=vllm",
        "--dtype=bfloat16",
        "--max-model-len=8192",
        "--tensor-parallel-size=2",
        "--max-num-seqs=32",
    ]
    amounts = {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
    assert model["resources"] == {"requests": amounts, "limits": amounts}


def test_gpu_memory_utilization_is_passed_to_vllm_when_given():
    args = inference_service(make_spec(memory_utilization=Decimal("0.85")))["spec"]["predictor"]["model"]["args"]
    assert args[-1] == "--gpu-memory-utilization=0.85"


def test_cpu_small_model_uses_huggingface_backend_without_gpu():
    manifest = inference_service(cpu_spec())
    predictor = manifest["spec"]["predictor"]
    model = predictor["model"]

    assert model["args"] == [
        "--model_name=minilm",
        "--backend=huggingface",
        "--task=text_embedding",
        "--dtype=float32",
        "--max_model_len=256",
    ]
    amounts = {"cpu": "500m", "memory": "1536Mi"}
    assert model["resources"] == {"requests": amounts, "limits": amounts}
    assert "nodeSelector" not in predictor
    assert "env" not in model
    assert model["storageUri"] == "hf://sentence-transformers/all-MiniLM-L6-v2"


def test_generation_on_the_huggingface_backend_names_its_task():
    spec = cpu_spec(task="generate", max_input_tokens=512, max_total_tokens=1024, dtype="bf16")
    args = inference_service(spec)["spec"]["predictor"]["model"]["args"]
    assert args == [
        "--model_name=minilm",
        "--backend=huggingface",
        "--task=text_generation",
        "--dtype=bfloat16",
        "--max_model_len=1024",
    ]


def test_embedding_on_vllm_uses_vllm_task_name_and_input_length():
    spec = make_spec(task="embed", max_input_tokens=512, max_total_tokens=512, tensor_parallel=1)
    args = inference_service(spec)["spec"]["predictor"]["model"]["args"]
    assert args[:3] == ["--model_name=llama-chat", "--backend=vllm", "--task=embed"]
    assert "--max-model-len=512" in args


@pytest.mark.parametrize(("dtype", "runtime"), [("fp16", "float16"), ("fp32", "float32"), ("int4", "auto")])
def test_dtype_maps_to_runtime_names(dtype, runtime):
    args = inference_service(make_spec(dtype=dtype))["spec"]["predictor"]["model"]["args"]
    assert f"--dtype={runtime}" in args


def test_gpu_without_product_has_no_node_selector():
    predictor = inference_service(make_spec(accelerator_product=""))["spec"]["predictor"]
    assert "nodeSelector" not in predictor
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "2"


@pytest.mark.parametrize("percent", [0, 10, 100])
def test_canary_percent_becomes_canary_traffic_percent(percent):
    manifest = inference_service(make_spec(canary_percent=percent))
    assert manifest["spec"]["predictor"]["canaryTrafficPercent"] == percent
    assert manifest["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"


def test_scale_to_zero_sets_min_replicas_to_zero():
    predictor = inference_service(make_spec(scale_to_zero=True, min_replicas=2))["spec"]["predictor"]
    assert predictor["minReplicas"] == 0
    assert predictor["maxReplicas"] == 4


def test_secret_refs_become_secret_key_refs_and_env_is_sorted():
    spec = make_spec(
        env={"ZED": "last", "LOG_LEVEL": "debug"},
        secret_refs={"HF_TOKEN": "HF_TOKEN", "OPENAI_API_KEY": "Upstream.Key"},
    )
    env = inference_service(spec)["spec"]["predictor"]["model"]["env"]

    assert env == [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "llama-chat-secrets", "key": "hf_token"}}},
        {"name": "LOG_LEVEL", "value": "debug"},
        {
            "name": "OPENAI_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "llama-chat-secrets", "key": "upstream.key"}},
        },
        {"name": "ZED", "value": "last"},
    ]


def test_no_secret_value_can_reach_the_yaml():
    # The spec carries secret *names* only; there is no field that could hold a value.
    secret_value = "hf_live_9f8e7d6c5b4a"
    text = to_yaml(inference_service(make_spec(secret_refs={"HF_TOKEN": "hf-token", "API_KEY": "upstream"})))

    assert secret_value not in text
    parsed = yaml.safe_load(text)
    for entry in parsed["spec"]["predictor"]["model"]["env"]:
        if entry["name"] in ("HF_TOKEN", "API_KEY"):
            assert "value" not in entry
            assert set(entry["valueFrom"]["secretKeyRef"]) == {"name", "key"}


def test_yaml_round_trips_and_keeps_quantities_as_strings():
    manifest = inference_service(make_spec(canary_percent=25, scale_to_zero=True))
    text = to_yaml(manifest)

    assert yaml.safe_load(text) == manifest
    assert text.startswith("apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n")
    assert "nvidia.com/gpu: '2'" in text
    assert "controlplane/revision: '3'" in text


def test_same_spec_gives_the_same_manifest():
    assert to_yaml(inference_service(make_spec())) == to_yaml(inference_service(make_spec()))


# --- the manifest against the InferenceService schema -------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        make_spec(),
        make_spec(canary_percent=10, scale_to_zero=True, memory_utilization=0.9),
        cpu_spec(),
        cpu_spec(task="generate", max_total_tokens=512, storage_uri="pvc://models/minilm"),
    ],
    ids=["gpu-llm", "gpu-canary-scale-to-zero", "cpu-embed", "cpu-generate-pvc"],
)
def test_manifest_conforms_to_inference_service_schema(spec):
    assert schema_errors(inference_service(spec)) == []


def test_schema_check_catches_unknown_fields_wrong_types_and_missing_fields():
    manifest = inference_service(make_spec())
    predictor = manifest["spec"]["predictor"]
    predictor["canaryTraficPercent"] = 10
    predictor["minReplicas"] = "1"
    predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] = 2
    predictor["model"]["env"].append({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s"}}})

    errors = schema_errors(manifest)

    assert 'unknown field "spec.predictor.canaryTraficPercent"' in errors
    assert any("spec.predictor.minReplicas: expected an integer" in e for e in errors)
    assert any("nvidia.com/gpu" in e for e in errors)
    assert any("secretKeyRef.key" in e for e in errors)
    assert schema_errors({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "spec": {}}) == [
        'missing required field "spec.predictor"'
    ]


# --- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"deployment_slug": "7b-chat"}, "start with a letter"),
        ({"deployment_slug": "Chat"}, "cannot name an InferenceService"),
        ({"deployment_slug": "a" * 40, "namespace": "n" * 20}, "predictor host label"),
        ({"namespace": "Bad_NS"}, "not a valid Kubernetes namespace"),
        ({"storage_uri": "/srv/models/x"}, "storage_uri"),
        ({"storage_uri": ""}, "storage_uri"),
        ({"task": "classify"}, "task"),
        ({"dtype": "fp8"}, "dtype"),
        ({"max_input_tokens": 8192}, "max_input_tokens"),
        ({"min_replicas": 5}, "Replicas"),
        ({"max_replicas": 0, "min_replicas": 0}, "Replicas"),
        ({"canary_percent": 101}, "canary_percent"),
        ({"tensor_parallel": 4}, "tensor_parallel (4) cannot exceed accelerator_count (2)"),
        ({"accelerator_resource": "", "accelerator_count": 0}, "needs a GPU"),
        ({"large_llm": False}, "Tensor parallelism needs the vLLM backend"),
        ({"env": {"HF_TOKEN": "x"}}, "both plainly and from a secret"),
        ({"env": {"1BAD": "x"}}, "not a valid environment variable name"),
        ({"secret_refs": {"TOKEN": "has space"}}, "cannot be a Kubernetes Secret key"),
        ({"labels": {"team": "a b"}}, "label value"),
        ({"labels": {"bad key!": "x"}}, "not a valid Kubernetes label name"),
        ({"accelerator_product": "A100 80GB"}, "accelerator_product"),
        ({"cpu": "0.0001"}, "millicore"),
        ({"cpu": "lots"}, "not a number of cores"),
        ({"memory_gib": 0}, "memory_gib must be positive"),
        ({"memory_utilization": 1.5}, "memory_utilization"),
        ({"revision_number": 0}, "revision_number"),
    ],
)
def test_invalid_specs_are_refused_with_a_clear_message(overrides, message):
    with pytest.raises(ManifestError) as error:
        make_spec(**overrides)
    assert message in str(error.value)


def test_manifest_error_is_a_value_error():
    assert issubclass(ManifestError, ValueError)


def test_validate_name_accepts_the_longest_fitting_name():
    validate_name("a" * (63 - len("-predictor-") - len("llm")), "llm")


@pytest.mark.parametrize(
    ("cpu", "quantity"), [(Decimal("2.00"), "2"), ("0.5", "500m"), (0.25, "250m"), ("750m", "750m"), (3, "3")]
)
def test_cpu_quantity(cpu, quantity):
    assert cpu_quantity(cpu) == quantity


@pytest.mark.parametrize(("gib", "quantity"), [(Decimal("32.00"), "32Gi"), (1.5, "1536Mi"), ("0.25", "256Mi")])
def test_memory_quantity(gib, quantity):
    assert memory_quantity(gib) == quantity


# --- applying with the kubernetes client, against the fake API server -----------------------------------------


@pytest.fixture
def apiserver():
    with FakeApiServer() as server:
        yield server


def test_apply_uses_server_side_apply_then_status_reads_it_back(apiserver):
    manifest = inference_service(make_spec())

    stored = kube.apply(apiserver.kubeconfig_text(), manifest)

    assert stored["metadata"]["name"] == "llama-chat"
    assert stored["metadata"]["generation"] == 1
    assert stored["spec"] == manifest["spec"]
    (patch,) = [r for r in apiserver.requests if r.method == "PATCH"]
    assert patch.path == "/apis/serving.kserve.io/v1beta1/namespaces/llm/inferenceservices/llama-chat"
    assert patch.content_type == "application/apply-patch+yaml"
    assert patch.query == {"fieldManager": "controlplane", "fieldValidation": "Strict", "force": "true"}
    assert patch.authorization == "Bearer test-token"
    assert yaml.safe_load(patch.body) == manifest

    state = kube.status(apiserver.kubeconfig_text(), "llm", "llama-chat")

    assert state == {
        "exists": True,
        "ready": True,
        "up_to_date": True,
        "url": "http://llama-chat.llm.example.com",
        "conditions": [
            {"type": "IngressReady", "status": "True", "reason": "", "message": ""},
            {"type": "PredictorReady", "status": "True", "reason": "", "message": ""},
            {"type": "Ready", "status": "True", "reason": "", "message": ""},
        ],
        "traffic": [{"revision": "llama-chat-predictor-00001", "percent": 100, "latest": True, "tag": ""}],
    }


def test_apply_twice_is_idempotent(apiserver):
    kubeconfig = apiserver.kubeconfig_text()
    manifest = inference_service(make_spec())

    first = kube.apply(kubeconfig, manifest)
    second = kube.apply(kubeconfig, manifest)

    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert second["metadata"]["generation"] == first["metadata"]["generation"] == 1
    assert list(apiserver.objects) == [("llm", "llama-chat")]
    assert kube.status(kubeconfig, "llm", "llama-chat")["traffic"] == [
        {"revision": "llama-chat-predictor-00001", "percent": 100, "latest": True, "tag": ""}
    ]


def test_canary_revision_splits_traffic(apiserver):
    kubeconfig = apiserver.kubeconfig_text()
    kube.apply(kubeconfig, inference_service(make_spec(revision_number=1)))

    stored = kube.apply(kubeconfig, inference_service(make_spec(revision_number=2, canary_percent=10)))

    assert stored["metadata"]["generation"] == 2
    assert kube.status(kubeconfig, "llm", "llama-chat")["traffic"] == [
        {"revision": "llama-chat-predictor-00002", "percent": 10, "latest": True, "tag": "latest"},
        {"revision": "llama-chat-predictor-00001", "percent": 90, "latest": False, "tag": "prev"},
    ]


def test_status_is_not_ready_until_the_controller_saw_the_new_spec(apiserver):
    kubeconfig = apiserver.kubeconfig_text()
    kube.apply(kubeconfig, inference_service(make_spec(revision_number=1)))
    apiserver.controller_running = False

    kube.apply(kubeconfig, inference_service(make_spec(revision_number=2)))
    state = kube.status(kubeconfig, "llm", "llama-chat")

    assert {"type": "Ready", "status": "True", "reason": "", "message": ""} in state["conditions"]
    assert state["up_to_date"] is False
    assert state["ready"] is False


def test_status_and_delete_of_an_absent_service(apiserver):
    kubeconfig = apiserver.kubeconfig_text()
    assert kube.status(kubeconfig, "llm", "nothing-here") == {"exists": False}
    assert kube.delete(kubeconfig, "llm", "nothing-here") is False


def test_delete_removes_the_service(apiserver):
    kubeconfig = apiserver.kubeconfig_text()
    kube.apply(kubeconfig, inference_service(make_spec()))

    assert kube.delete(kubeconfig, "llm", "llama-chat") is True
    assert kube.status(kubeconfig, "llm", "llama-chat") == {"exists": False}
    assert apiserver.objects == {}


def test_wrong_token_is_a_cluster_error_about_authorisation(apiserver):
    with pytest.raises(kube.ClusterError) as error:
        kube.apply(apiserver.kubeconfig_text(token="stolen-or-expired"), inference_service(make_spec()))

    assert error.value.status == 401
    assert "authoris" in str(error.value)
    assert "stolen-or-expired" not in str(error.value)
    assert apiserver.objects == {}


def test_unreachable_server_fails_quickly():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = yaml.safe_dump(
        {
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    )

    started = time.monotonic()
    with pytest.raises(kube.ClusterError) as error:
        kube.status(text, "llm", "llama-chat")

    assert time.monotonic() - started < 2
    assert error.value.status is None
    assert f"Cannot reach the cluster's API server at http://127.0.0.1:{port}: connection failed" in str(error.value)
    assert "Connection refused" in str(error.value)


def test_a_server_that_does_not_answer_times_out(apiserver, monkeypatch):
    monkeypatch.setattr(kube, "READ_TIMEOUT_S", 0.3)
    release = apiserver.hang()
    try:
        started = time.monotonic()
        with pytest.raises(kube.ClusterError, match="no answer within"):
            kube.apply(apiserver.kubeconfig_text(), inference_service(make_spec()))
        assert time.monotonic() - started < 2
    finally:
        release.set()


@pytest.mark.parametrize("call", ["apply", "status", "delete"])
def test_missing_crd_means_kserve_is_not_installed(call):
    with FakeApiServer(crd_installed=False) as server:
        kubeconfig = server.kubeconfig_text()
        with pytest.raises(kube.ClusterError, match="KServe is not installed in this cluster") as error:
            if call == "apply":
                kube.apply(kubeconfig, inference_service(make_spec()))
            else:
                getattr(kube, call)(kubeconfig, "llm", "llama-chat")
    assert error.value.status == 404


def test_missing_namespace_is_named(apiserver):
    with pytest.raises(kube.ClusterError, match="The namespace 'staging' does not exist"):
        kube.apply(apiserver.kubeconfig_text(), inference_service(make_spec(namespace="staging")))


def test_invalid_manifest_is_refused_by_strict_field_validation(apiserver):
    manifest = inference_service(make_spec())
    manifest["spec"]["predictor"]["minReplica"] = 1

    with pytest.raises(kube.ClusterError) as error:
        kube.apply(apiserver.kubeconfig_text(), manifest)

    assert error.value.status == 400
    assert "rejected InferenceService llm/llama-chat as invalid" in str(error.value)
    assert 'unknown field "spec.predictor.minReplica"' in str(error.value)


def test_apply_refuses_other_kinds():
    with pytest.raises(ValueError, match="InferenceService"):
        kube.apply("{}", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "y"}})


# --- kubeconfig handling ----------------------------------------------------------------------------------------


def _kubeconfig(user: dict, cluster: dict | None = None) -> str:
    return yaml.safe_dump(
        {
            "clusters": [{"name": "c", "cluster": cluster or {"server": "https://203.0.113.10:6443"}}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clusters: [", "not valid YAML"),
        ("- a list", "not a YAML mapping"),
        (_kubeconfig({"exec": {"command": "aws", "args": ["eks", "get-token"]}}), "runs a program"),
        (_kubeconfig({"auth-provider": {"name": "oidc"}}), "runs a program"),
        (_kubeconfig({"tokenFile": "/var/run/secrets/token"}), "refers to a file (tokenFile)"),
        (_kubeconfig({"client-certificate": "/etc/cert.pem", "client-key": "/etc/key.pem"}), "client-certificate"),
        (
            _kubeconfig({"token": "t"}, {"server": "https://x", "certificate-authority": "/etc/ca.pem"}),
            "certificate-authority",
        ),
        (_kubeconfig({"username": "admin", "password": "pw"}), "Basic authentication"),
        (_kubeconfig({"token": "t"}, {"server": "ftp://x"}), "no https:// server"),
        (_kubeconfig({"client-certificate-data": "!!notbase64", "client-key-data": "x"}), "not base64"),
    ],
)
def test_unusable_kubeconfigs_are_refused(text, message):
    with pytest.raises(kube.ClusterError) as error:
        kube.api_client(text)
    assert message in str(error.value)


def test_only_context_is_used_without_current_context():
    text = yaml.safe_dump(
        {
            "clusters": [{"name": "c", "cluster": {"server": "https://203.0.113.10:6443/"}}],
            "users": [{"name": "u", "user": {"token": "abc"}}],
            "contexts": [{"name": "only", "context": {"cluster": "c", "user": "u"}}],
        }
    )
    with kube.api_client(text) as client:
        assert client.configuration.host == "https://203.0.113.10:6443"
        assert client.configuration.auth_settings()["BearerToken"]["value"] == "Bearer abc"
        assert client.configuration.retries == 0


def test_tls_with_embedded_ca_and_token():
    with FakeApiServer(tls=True) as server:
        kube.apply(server.kubeconfig_text(), inference_service(make_spec()))
        assert kube.status(server.kubeconfig_text(), "llm", "llama-chat")["ready"] is True


def test_tls_with_client_certificate_keeps_the_key_off_disk():
    with FakeApiServer(tls=True) as server:
        text = server.kubeconfig_text(client_certificate=True)

        with kube.api_client(text) as client:
            cert_file, key_file = client.configuration.cert_file, client.configuration.key_file
            if hasattr(os, "memfd_create"):
                assert cert_file.startswith("/proc/self/fd/")
                assert key_file.startswith("/proc/self/fd/")
                assert "memfd:" in os.readlink(key_file)
            fd = int(key_file.rsplit("/", 1)[1]) if key_file.startswith("/proc/self/fd/") else None

        if fd is not None:
            with pytest.raises(OSError):
                os.fstat(fd)  # released with the client
        stored = kube.apply(text, inference_service(make_spec()))
        assert stored["metadata"]["generation"] == 1
        assert [r.authorization for r in server.requests] == [""]


def test_tls_with_the_wrong_ca_is_a_clear_error():
    with FakeApiServer(tls=True) as server, FakeApiServer(tls=True) as other:
        text = server.kubeconfig_text(ca=other.credentials.ca_pem)
        with pytest.raises(kube.ClusterError, match="TLS failed"):
            kube.status(text, "llm", "llama-chat")
