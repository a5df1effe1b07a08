"""Talking to a cluster's API server about KServe InferenceServices: apply, read back, delete.

Plain data in and out; no ORM. Every call takes the kubeconfig as text (the caller decrypts it just before the
call) and builds its client in memory. Every failure becomes a `ClusterError` whose message a person can act on.

The kubeconfig is read here rather than with `kubernetes.config.load_kube_config_from_dict`, because that
loader (a) runs `exec` credential plugins and `auth-provider` helpers, i.e. commands named by whoever uploaded
the kubeconfig, on the control plane's workers; (b) reads files named in it (`tokenFile`, `client-key`, ...)
from the control plane's disk; and (c) writes embedded certificates *and private keys* to temporary files that
live until the process exits. So only inline credentials are accepted: a bearer token (the usual form for a
ServiceAccount) or `client-certificate-data`/`client-key-data`. The CA certificate stays in memory
(`ca_cert_data`). Python's `ssl` can load a client certificate only from a path, so the certificate and key go
into anonymous in-memory files (`memfd_create`, reached as /proc/self/fd/N; never on disk) that are closed
with the client. Where `memfd_create` does not exist (not Linux), a 0600 temporary file is used instead and
removed when the client is closed.

Writes use server-side apply (`PATCH` with `application/apply-patch+yaml`, a `fieldManager`, `force=true`) and
`fieldValidation=Strict`, so an unknown field in a manifest is an error rather than silently dropped.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import ssl
import tempfile
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import urllib3
import yaml
from kubernetes.client import ApiClient, Configuration, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from .manifests import API_VERSION, KIND

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "inferenceservices"
FIELD_MANAGER = "controlplane"
APPLY_PATCH = "application/apply-patch+yaml"
# Seconds to open a connection, and to wait for an answer. Admission webhooks (KServe validates every apply)
# make writes slower than reads, hence the longer read timeout.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0


class ClusterError(Exception):
    """A cluster operation failed; `str(error)` says what happened and what to check. `status` is the HTTP
    status the API server answered with, or None when it was not reached."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


class _ClusterApiClient(ApiClient):
    """An ApiClient that also releases the in-memory credential files it was built with."""

    def __init__(self, configuration: Configuration, cleanups: list[Callable[[], None]]) -> None:
        super().__init__(configuration)
        self._release_credentials = weakref.finalize(self, _run_all, list(cleanups))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release_credentials()


def api_client(kubeconfig_text: str) -> ApiClient:
    """An ApiClient for the kubeconfig's current context (or its only context), built in memory.

    Close it when done (`with api_client(text) as client: ...`). Raises ClusterError when the kubeconfig is
    unusable: not YAML, no such context, or credentials that are not inline (see the module docstring).
    """
    config = _load_yaml(kubeconfig_text)
    cluster, user = _current_context(config)

    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise ClusterError("The kubeconfig's cluster has no https:// server address.")
    configuration = Configuration()
    configuration.host = server.rstrip("/")
    # One attempt: failures surface within the timeouts instead of after hidden retries.
    configuration.retries = 0
    if cluster.get("proxy-url"):
        configuration.proxy = cluster["proxy-url"]
    if cluster.get("tls-server-name"):
        configuration.tls_server_name = cluster["tls-server-name"]
    if cluster.get("insecure-skip-tls-verify"):
        configuration.verify_ssl = False
    if "certificate-authority" in cluster and "certificate-authority-data" not in cluster:
        raise ClusterError(_file_reference_message("certificate-authority"))
    if cluster.get("certificate-authority-data"):
        configuration.ca_cert_data = _b64decode(cluster["certificate-authority-data"], "certificate-authority-data")

    for key in ("exec", "auth-provider"):
        if user.get(key):
            raise ClusterError(
                f"The kubeconfig's user authenticates with `{key}`, which runs a program on the control plane; "
                "that is not accepted. Use a ServiceAccount token (`token:`) or an embedded client certificate."
            )
    for key in ("tokenFile", "client-certificate", "client-key"):
        if user.get(key) and not user.get(f"{key}-data"):
            raise ClusterError(_file_reference_message(key))
    if user.get("username") or user.get("password"):
        raise ClusterError("Basic authentication (username/password) is not supported by Kubernetes; use a token.")

    cleanups: list[Callable[[], None]] = []
    try:
        if user.get("token"):
            configuration.api_key = {"BearerToken": str(user["token"]).strip()}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        if user.get("client-certificate-data") or user.get("client-key-data"):
            cert = _b64decode(user.get("client-certificate-data", ""), "client-certificate-data")
            key = _b64decode(user.get("client-key-data", ""), "client-key-data")
            configuration.cert_file = _in_memory_file(cert.encode(), cleanups)
            configuration.key_file = _in_memory_file(key.encode(), cleanups)
            try:
                # Fail now, clearly, rather than at the first handshake; an encrypted key gets no password.
                ssl.create_default_context().load_cert_chain(
                    configuration.cert_file, configuration.key_file, password=lambda: b""
                )
            except (ssl.SSLError, OSError):
                raise ClusterError("The kubeconfig's client certificate and key do not load as a PEM pair.") from None
        client = _ClusterApiClient(configuration, cleanups)
    except BaseException:
        _run_all(cleanups)
        raise
    client.user_agent = "llmops-controlplane"
    return client


def apply(kubeconfig_text: str, manifest: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER) -> dict:
    """Server-side apply of an InferenceService manifest; returns the object as the API server stored it."""
    namespace, name = _identify(manifest)
    with api_client(kubeconfig_text) as client:
        host = client.configuration.host
        try:
            return CustomObjectsApi(client).patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body=dict(manifest),
                field_manager=field_manager,
                field_validation="Strict",
                force=True,
                _content_type=APPLY_PATCH,
                _request_timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            )
        except ApiException as exc:
            raise _api_error(exc, doing="apply", namespace=namespace, name=name) from None
        except urllib3.exceptions.HTTPError as exc:
            raise _unreachable(exc, host) from None


def status(kubeconfig_text: str, namespace: str, name: str) -> dict:
    """The InferenceService's state, summarised (see `summarize_status`); {"exists": False} when absent."""
    with api_client(kubeconfig_text) as client:
        host = client.configuration.host
        try:
            obj = CustomObjectsApi(client).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
            )
        except ApiException as exc:
            if _is_absent_object(exc):
                return {"exists": False}
            raise _api_error(exc, doing="read", namespace=namespace, name=name) from None
        except urllib3.exceptions.HTTPError as exc:
            raise _unreachable(exc, host) from None
    return summarize_status(obj)


def delete(kubeconfig_text: str, namespace: str, name: str) -> bool:
    """Delete the InferenceService; True if it was there, False if it already was not."""
    with api_client(kubeconfig_text) as client:
        host = client.configuration.host
        try:
            CustomObjectsApi(client).delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
            )
        except ApiException as exc:
            if _is_absent_object(exc):
                return False
            raise _api_error(exc, doing="delete", namespace=namespace, name=name) from None
        except urllib3.exceptions.HTTPError as exc:
            raise _unreachable(exc, host) from None
    return True


def summarize_status(obj: Mapping[str, Any]) -> dict:
    """{exists, ready, up_to_date, url, conditions: [{type, status, reason, message}], traffic: [...]}.

    `up_to_date` says whether KServe has processed the latest applied spec (status.observedGeneration equals
    metadata.generation); `ready` needs both that and the `Ready` condition, so a Ready status left over from
    the previous spec is not mistaken for the new revision being ready. `traffic` lists the predictor's
    Knative traffic targets: {revision, percent, latest, tag}.
    """
    state = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    up_to_date = generation is None or state.get("observedGeneration") == generation
    conditions = [
        {
            "type": condition.get("type", ""),
            "status": condition.get("status", "Unknown"),
            "reason": condition.get("reason", ""),
            "message": condition.get("message", ""),
        }
        for condition in state.get("conditions") or []
    ]
    predictor = (state.get("components") or {}).get("predictor") or {}
    traffic = [
        {
            "revision": target.get("revisionName", ""),
            "percent": target.get("percent", 0),
            "latest": bool(target.get("latestRevision", False)),
            "tag": target.get("tag", ""),
        }
        for target in predictor.get("traffic") or []
    ]
    condition_ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return {
        "exists": True,
        "ready": condition_ready and up_to_date,
        "up_to_date": up_to_date,
        "url": state.get("url") or "",
        "conditions": conditions,
        "traffic": traffic,
    }


def _identify(manifest: Mapping[str, Any]) -> tuple[str, str]:
    metadata = manifest.get("metadata") or {}
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        raise ValueError(f"Only {API_VERSION} {KIND} manifests are applied here.")
    if not metadata.get("name") or not metadata.get("namespace"):
        raise ValueError("The manifest needs metadata.name and metadata.namespace.")
    return metadata["namespace"], metadata["name"]


def _load_yaml(kubeconfig_text: str) -> dict:
    try:
        config = yaml.safe_load(kubeconfig_text)
    except yaml.YAMLError:
        raise ClusterError("The kubeconfig is not valid YAML.") from None
    if not isinstance(config, dict):
        raise ClusterError("The kubeconfig is not a YAML mapping (expected clusters, users, contexts).")
    return config


def _current_context(config: dict) -> tuple[dict, dict]:
    def named(section: str) -> dict[str, dict]:
        entries = config.get(section) or []
        return {e["name"]: e.get(section[:-1]) or {} for e in entries if isinstance(e, dict) and "name" in e}

    contexts = named("contexts")
    context_name = config.get("current-context") or (next(iter(contexts)) if len(contexts) == 1 else "")
    if context_name not in contexts:
        raise ClusterError(
            "The kubeconfig has no current-context" if not context_name else f"No context {context_name!r}."
        )
    context = contexts[context_name]
    clusters, users = named("clusters"), named("users")
    if context.get("cluster") not in clusters:
        raise ClusterError(f"The kubeconfig's context {context_name!r} names no known cluster.")
    return clusters[context["cluster"]], users.get(context.get("user"), {})


def _b64decode(value: str, what: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        raise ClusterError(f"The kubeconfig's {what} is not base64-encoded PEM.") from None


def _file_reference_message(key: str) -> str:
    return (
        f"The kubeconfig refers to a file ({key}); files on the control plane are not read. "
        f"Embed the content instead ({key}-data, e.g. `kubectl config view --raw --flatten --minify`)."
    )


def _in_memory_file(content: bytes, cleanups: list[Callable[[], None]]) -> str:
    """A path whose content is `content`, for APIs that only take paths; released by the cleanups."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("kube-credential", os.MFD_CLOEXEC)
        cleanups.append(lambda: os.close(fd))
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        return f"/proc/self/fd/{fd}"
    fd, path = tempfile.mkstemp(prefix="kube-credential-")  # mode 0600
    cleanups.append(lambda: _remove(path))
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    return path


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _run_all(cleanups: list[Callable[[], None]]) -> None:
    for cleanup in cleanups:
        with contextlib.suppress(OSError):
            cleanup()
    cleanups.clear()


def _status_body(exc: ApiException) -> dict:
    """The Kubernetes `Status` object in an error response, or {} when the body is not one."""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _is_absent_object(exc: ApiException) -> bool:
    """A 404 about the InferenceService itself, as opposed to its API (CRD) not existing."""
    details = _status_body(exc).get("details") or {}
    return exc.status == 404 and details.get("kind") == PLURAL


def _api_error(exc: ApiException, *, doing: str, namespace: str, name: str) -> ClusterError:
    body = _status_body(exc)
    server_says = body.get("message") or (exc.reason or "").strip() or "no details"
    code = exc.status or None
    target = f"InferenceService {namespace}/{name}"
    if not code:
        return ClusterError(f"Could not talk to the cluster: {server_says}")
    if code == 401:
        message = (
            "Not authorised: the cluster rejected the kubeconfig's credentials (401 Unauthorized). "
            "The token or client certificate is wrong or has expired."
        )
    elif code == 403:
        message = f"Not authorised to {doing} {target} (403 Forbidden): {server_says}"
    elif code == 404:
        kind = (body.get("details") or {}).get("kind")
        if kind == "namespaces":
            message = f"The namespace {namespace!r} does not exist in the cluster."
        elif kind == PLURAL:
            message = f"{target} does not exist."
        else:
            message = (
                f"KServe is not installed in this cluster: the API server does not know {API_VERSION} "
                f"{PLURAL} (404: {server_says})."
            )
    elif code in (400, 422):
        message = f"The cluster rejected {target} as invalid ({code}): {server_says}"
    elif code == 409:
        message = f"Conflict while trying to {doing} {target} (409): {server_says}"
    else:
        answered = f"{code} {exc.reason}" if exc.reason else str(code)
        message = f"The cluster could not {doing} {target} ({answered}): {server_says}"
    return ClusterError(message, status=code)


def _unreachable(exc: urllib3.exceptions.HTTPError, host: str) -> ClusterError:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, urllib3.exceptions.SSLError):
        detail = f"TLS failed ({reason}); check the kubeconfig's certificate-authority-data"
    elif isinstance(reason, urllib3.exceptions.NewConnectionError):
        # Checked before timeouts: urllib3 makes it a subclass of ConnectTimeoutError.
        detail = f"connection failed ({reason})"
    elif isinstance(reason, urllib3.exceptions.TimeoutError) or isinstance(exc, urllib3.exceptions.TimeoutError):
        detail = f"no answer within {CONNECT_TIMEOUT_S:g} s to connect / {READ_TIMEOUT_S:g} s to respond"
    else:
        detail = str(reason)
    return ClusterError(f"Cannot reach the cluster's API server at {host}: {detail}")
