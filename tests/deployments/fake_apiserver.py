"""A small stand-in for a Kubernetes API server with KServe installed: a real HTTP(S) server on 127.0.0.1.

It implements only what `apps.deployments.kube` uses, the way the real API server answers it:

- `PATCH /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}` as server-side apply
  (`application/apply-patch+yaml` only, `fieldManager` required, conflicts with another manager unless
  `force=true`, `fieldValidation=Strict` checked against the InferenceService schema of the `kserve` SDK),
  storing the object and giving it the status a KServe controller would (revisions, traffic, conditions);
- `GET` and `DELETE` of the same path, with the API server's 404 `Status` bodies (an absent object names its
  kind in `details`; an unknown API, i.e. no KServe CRD, does not);
- bearer-token authentication (401 `Status` otherwise), or TLS client certificates signed by its own CA.

No discovery endpoints: `CustomObjectsApi` does not use them. Every request is recorded in `requests`.
"""

from __future__ import annotations

import base64
import copy
import datetime
import inspect
import ipaddress
import json
import re
import ssl
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes.client.models as k8s_models
import yaml
from pydantic import ValidationError


def _import_kserve_models():
    """kserve parses sys.argv when imported (kserve.model_server); hide pytest's arguments from it."""
    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve.models

        return kserve.models
    finally:
        sys.argv = saved


kserve_models = _import_kserve_models()

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
ITEM_PATH = re.compile(rf"^/apis/{GROUP}/{VERSION}/namespaces/(?P<namespace>[^/]+)/{PLURAL}/(?P<name>[^/]+)$")


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    authorization: str
    body: str


@dataclass
class Credentials:
    """PEM material of the fake cluster's CA and of a client certificate it trusts."""

    ca_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes
    client_cert_pem: bytes
    client_key_pem: bytes


@dataclass
class _State:
    token: str
    crd_installed: bool
    namespaces: set[str]
    controller_running: bool = True
    ready: bool = True
    hang: threading.Event | None = None
    objects: dict[tuple[str, str], dict] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeApiServer:
    """Start with `with FakeApiServer() as server:`; point clients at `server.kubeconfig_text()`."""

    def __init__(
        self,
        *,
        token: str = "test-token",
        crd_installed: bool = True,
        namespaces: tuple[str, ...] = ("default", "llm"),
        tls: bool = False,
    ) -> None:
        self.state = _State(token=token, crd_installed=crd_installed, namespaces=set(namespaces))
        self.credentials = _make_credentials() if tls else None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Settings a test may change while the server runs.
    @property
    def crd_installed(self) -> bool:
        return self.state.crd_installed

    @crd_installed.setter
    def crd_installed(self, value: bool) -> None:
        self.state.crd_installed = value

    @property
    def controller_running(self) -> bool:
        return self.state.controller_running

    @controller_running.setter
    def controller_running(self, value: bool) -> None:
        self.state.controller_running = value

    def hang(self) -> threading.Event:
        """From now on, hold every request until the returned event is set (or the server stops)."""
        self.state.hang = threading.Event()
        return self.state.hang

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.state.requests

    @property
    def objects(self) -> dict[tuple[str, str], dict]:
        return self.state.objects

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start the server first"
        scheme = "https" if self.credentials else "http"
        return f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeApiServer:
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if self.credentials:
            self._httpd.socket = _server_tls_context(self.credentials).wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-apiserver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.state.hang is not None:
            self.state.hang.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def kubeconfig(
        self, *, token: str | None = None, client_certificate: bool = False, ca: bytes | None = None
    ) -> dict:
        """A kubeconfig dict for this server: its token (or `token`), or the client certificate it trusts."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.credentials:
            cluster["certificate-authority-data"] = _b64(ca if ca is not None else self.credentials.ca_pem)
        user: dict[str, Any] = {}
        if client_certificate:
            assert self.credentials, "client certificates need tls=True"
            user["client-certificate-data"] = _b64(self.credentials.client_cert_pem)
            user["client-key-data"] = _b64(self.credentials.client_key_pem)
        else:
            user["token"] = token if token is not None else self.state.token
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "controlplane", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "controlplane"}}],
            "current-context": "fake",
        }

    def kubeconfig_text(self, **kwargs: Any) -> str:
        return yaml.safe_dump(self.kubeconfig(**kwargs), sort_keys=False)


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.1"
    server_version = "fake-kube-apiserver"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        state = self.state
        with state.lock:
            state.requests.append(
                RecordedRequest(
                    method=method,
                    path=split.path,
                    query=query,
                    content_type=self.headers.get("Content-Type", ""),
                    authorization=self.headers.get("Authorization", ""),
                    body=body,
                )
            )
        if state.hang is not None:
            state.hang.wait(timeout=30)
            return self._send(503, _status(503, "ServiceUnavailable", "the fake API server was hanging"))

        if not self._authenticated():
            return self._send(401, _status(401, "Unauthorized", "Unauthorized"))
        match = ITEM_PATH.match(split.path)
        if not state.crd_installed or match is None or method not in ("GET", "PATCH", "DELETE"):
            return self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
        namespace, name = match["namespace"], match["name"]
        with state.lock:
            if method == "GET":
                code, payload = _get(state, namespace, name)
            elif method == "DELETE":
                code, payload = _delete(state, namespace, name)
            else:
                code, payload = _apply(state, namespace, name, query, self.headers.get("Content-Type", ""), body)
        self._send(code, payload)

    def _authenticated(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.state.token}":
            return True
        getpeercert = getattr(self.connection, "getpeercert", None)
        return bool(getpeercert and getpeercert())

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    """The API server's `Status` object for a failed request."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def _not_found(namespace: str, name: str) -> tuple[int, dict]:
    details = {"name": name, "group": GROUP, "kind": PLURAL}
    return 404, _status(404, "NotFound", f'{PLURAL}.{GROUP} "{name}" not found', details)


def _get(state: _State, namespace: str, name: str) -> tuple[int, dict]:
    obj = state.objects.get((namespace, name))
    return (200, copy.deepcopy(obj)) if obj else _not_found(namespace, name)


def _delete(state: _State, namespace: str, name: str) -> tuple[int, dict]:
    obj = state.objects.pop((namespace, name), None)
    if obj is None:
        return _not_found(namespace, name)
    uid = obj["metadata"]["uid"]
    details = {"name": name, "group": GROUP, "kind": PLURAL, "uid": uid}
    return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


def _apply(state: _State, namespace: str, name: str, query: dict, content_type: str, body: str) -> tuple[int, dict]:
    if content_type.split(";")[0].strip() != "application/apply-patch+yaml":
        message = (
            f'the body of the request was in an unknown format - accepted media types include: ... ("{content_type}")'
        )
        return 415, _status(415, "UnsupportedMediaType", message)
    manager = query.get("fieldManager", "")
    if not manager:
        message = 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'
        return 422, _status(422, "Invalid", message)
    try:
        applied = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        return 400, _status(400, "BadRequest", f"error decoding YAML: {exc}")
    metadata = (applied or {}).get("metadata") or {}
    if (applied or {}).get("apiVersion") != f"{GROUP}/{VERSION}" or applied.get("kind") != "InferenceService":
        return 400, _status(400, "BadRequest", "the apiVersion/kind of the body does not match the URL")
    if metadata.get("name") != name or metadata.get("namespace", namespace) != namespace:
        return 400, _status(400, "BadRequest", "the name/namespace of the object does not match the URL")
    if namespace not in state.namespaces:
        details = {"name": namespace, "kind": "namespaces"}
        return 404, _status(404, "NotFound", f'namespaces "{namespace}" not found', details)
    if query.get("fieldValidation") == "Strict":
        errors = schema_errors(applied)
        if errors:
            return 400, _status(400, "BadRequest", "strict decoding error: " + ", ".join(errors))

    now = _now()
    existing = state.objects.get((namespace, name))
    if existing is None:
        stored = {
            "apiVersion": applied["apiVersion"],
            "kind": applied["kind"],
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": "1",
                "generation": 1,
                "creationTimestamp": now,
            },
            "status": {},
            "_revisions": [],
        }
        changed_spec = changed = True
    else:
        owner = existing["metadata"]["managedFields"][0]["manager"]
        if owner != manager and query.get("force") != "true":
            message = f'Apply failed with 1 conflict: conflict with "{owner}" using {GROUP}/{VERSION}: .spec'
            return 409, _status(409, "Conflict", message)
        stored = existing
        changed_spec = existing.get("spec") != applied.get("spec")
        changed = changed_spec or any(
            existing["metadata"].get(key) != metadata.get(key) for key in ("labels", "annotations")
        )
    if changed:
        stored["spec"] = copy.deepcopy(applied.get("spec"))
        for key in ("labels", "annotations"):
            if metadata.get(key):
                stored["metadata"][key] = dict(metadata[key])
            else:
                stored["metadata"].pop(key, None)
        if existing is not None:
            stored["metadata"]["resourceVersion"] = str(int(stored["metadata"]["resourceVersion"]) + 1)
            if changed_spec:
                stored["metadata"]["generation"] += 1
        stored["metadata"]["managedFields"] = [
            {"manager": manager, "operation": "Apply", "apiVersion": f"{GROUP}/{VERSION}", "time": now}
        ]
        if state.controller_running:
            _reconcile(stored, ready=state.ready, new_revision=changed_spec)
    state.objects[(namespace, name)] = stored
    return 200, _public(stored)


def _reconcile(obj: dict, *, ready: bool, new_revision: bool) -> None:
    """What KServe's controller (Serverless mode) would write: a Knative revision per spec change, traffic split
    by canaryTrafficPercent between the latest and the last rolled-out revision, Ready conditions."""
    meta, spec = obj["metadata"], obj["spec"] or {}
    revisions = obj["_revisions"]
    previous = obj["status"].get("components", {}).get("predictor", {}).get("latestRolledoutRevision")
    if new_revision:
        revisions.append(f"{meta['name']}-predictor-{len(revisions) + 1:05d}")
    latest = revisions[-1]
    canary = spec.get("predictor", {}).get("canaryTrafficPercent")
    if canary is not None and previous and previous != latest:
        traffic = [
            {"revisionName": latest, "percent": canary, "latestRevision": True, "tag": "latest"},
            {"revisionName": previous, "percent": 100 - canary, "latestRevision": False, "tag": "prev"},
        ]
        rolled_out = previous if canary < 100 else latest
    else:
        traffic = [{"revisionName": latest, "percent": 100, "latestRevision": True}]
        rolled_out = latest
    truth = "True" if ready else "False"
    condition = {"status": truth, "lastTransitionTime": _now()}
    if not ready:
        condition |= {"reason": "RevisionMissing", "message": "Revision is not ready"}
    host = f"{meta['name']}.{meta['namespace']}.example.com"
    obj["status"] = {
        "observedGeneration": meta["generation"],
        "url": f"http://{host}",
        "address": {"url": f"http://{meta['name']}.{meta['namespace']}.svc.cluster.local"},
        "deploymentMode": "Serverless",
        "conditions": [
            {"type": "IngressReady", **condition},
            {"type": "PredictorReady", **condition},
            {"type": "Ready", **condition},
        ],
        "components": {
            "predictor": {
                "latestCreatedRevision": latest,
                "latestReadyRevision": latest if ready else (previous or ""),
                "latestRolledoutRevision": rolled_out,
                "previousRolledoutRevision": previous or "",
                "traffic": traffic,
                "url": f"http://{meta['name']}-predictor.{meta['namespace']}.example.com",
            }
        },
    }


def _public(obj: dict) -> dict:
    return copy.deepcopy({key: value for key, value in obj.items() if not key.startswith("_")})


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# The InferenceService schema, as the `kserve` SDK's generated models (and, for core types, the `kubernetes`
# client's) describe it: unknown fields, wrong types and missing required fields are errors.


def schema_errors(manifest: dict) -> list[str]:
    """Problems of `manifest` against the InferenceService v1beta1 schema; [] when it conforms."""
    errors: list[str] = []
    body = {key: value for key, value in manifest.items() if key != "status"}
    _check(body, "V1beta1InferenceService", "", errors)
    return errors


def _check(value: Any, type_name: str, path: str, errors: list[str]) -> None:
    container = re.fullmatch(r"(?:list|List)\[(.+)\]", type_name)
    mapping = re.fullmatch(r"(?:dict\(str, (.+)\)|Dict\[str, (.+)\])", type_name)
    if container:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list")
            return
        for index, item in enumerate(value):
            _check(item, container[1], f"{path}[{index}]", errors)
    elif mapping:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping")
            return
        for key, item in value.items():
            _check(item, mapping[1] or mapping[2], f"{path}.{key}", errors)
    elif type_name in ("str", "ResourceQuantity"):
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {value!r}")
    elif type_name == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{path}: expected an integer, got {value!r}")
    elif type_name == "bool":
        if not isinstance(value, bool):
            errors.append(f"{path}: expected a boolean, got {value!r}")
    elif type_name == "float":
        if not isinstance(value, int | float) or isinstance(value, bool):
            errors.append(f"{path}: expected a number, got {value!r}")
    elif hasattr(kserve_models, type_name):
        cls = getattr(kserve_models, type_name)
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object ({type_name})")
            return
        by_json_name = {json_name: attr for attr, json_name in cls.attribute_map.items()}
        for key, item in value.items():
            if key not in by_json_name:
                errors.append(f'unknown field "{(path + "." + key).lstrip(".")}"')
                continue
            _check(item, cls.openapi_types[by_json_name[key]], f"{path}.{key}", errors)
        for attr, json_name in cls.attribute_map.items():
            if json_name not in value and _required(cls, attr):
                errors.append(f'missing required field "{(path + "." + json_name).lstrip(".")}"')
    elif hasattr(k8s_models, type_name):
        try:
            getattr(k8s_models, type_name).model_validate(value)
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"])
                errors.append(f"{path}.{where}: {error['msg']}".lstrip("."))
    else:
        errors.append(f"{path}: no schema for type {type_name}")


def _required(cls: type, attr: str) -> bool:
    """The kserve SDK marks a required field by a setter that refuses None."""
    setter = getattr(cls, attr).fset
    return "must not be `None`" in inspect.getsource(setter)


# TLS material, made fresh per server.


def _make_credentials() -> Credentials:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool, extra=()) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        for extension in extra:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_cert = certificate("fake-cluster-ca", ca_key, "fake-cluster-ca", ca_key, ca=True)
    server_cert = certificate(
        "kube-apiserver",
        server_key,
        "fake-cluster-ca",
        ca_key,
        ca=False,
        extra=[
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ],
    )
    client_cert = certificate(
        "controlplane",
        client_key,
        "fake-cluster-ca",
        ca_key,
        ca=False,
        extra=[x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
    )
    pem = serialization.Encoding.PEM
    return Credentials(
        ca_pem=ca_cert.public_bytes(pem),
        server_cert_pem=server_cert.public_bytes(pem),
        server_key_pem=key_pem(server_key),
        client_cert_pem=client_cert.public_bytes(pem),
        client_key_pem=key_pem(client_key),
    )


def _server_tls_context(credentials: Credentials) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # The test server's own key pair goes through a short-lived directory: `load_cert_chain` takes paths only.
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = Path(directory, "server.crt"), Path(directory, "server.key")
        cert_path.write_bytes(credentials.server_cert_pem)
        key_path.write_bytes(credentials.server_key_pem)
        context.load_cert_chain(cert_path, key_path)
    context.load_verify_locations(cadata=credentials.ca_pem.decode())
    context.verify_mode = ssl.CERT_OPTIONAL
    return context
