"""Scanning a version's pickles before it can become ready. Nothing is ever unpickled here.

Every pickle a loader would run is disassembled: plain pickle files, the five pickles at the head of a legacy
(tar-less) `torch.save` file, and the `.pkl` members of zip archives (`torch.save`, TorchScript). picklescan
lists the globals each pickle imports and rates them. The decision is an allow-list: a global is safe only when
picklescan rates it innocuous, when benign torch checkpoints need it (BUILTIN_ALLOWED), or when the
organization's ScanPolicy allows it; globals that picklescan rates dangerous or that can run code by other means
(NEVER_ALLOWED) stay unsafe whatever the policy says. A pickle that cannot be parsed is unsafe too: what a
scanner cannot read, it cannot vouch for.

Reading: files are read through a seekable adapter over `file_blocks` ranges rather than copied out, because
the pickles are a small part of a checkpoint (tensor bytes live outside them in both torch formats); the zip
central directory and the `data.pkl` member are found by seeking, so a multi-GB file costs a few small reads.
"""

from __future__ import annotations

import io
import pickletools
import re
import zipfile
from dataclasses import dataclass, field
from importlib.metadata import version as package_version

from picklescan.relaxed_zipfile import RelaxedZipFile
from picklescan.scanner import SafetyLevel, scan_pickle_bytes

from .ingest import file_blocks
from .models import ModelVersion, ScanPolicy, VersionFile

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Formats that are never pickles; other files are sniffed for a pickle or zip start.
NOT_PICKLE_SUFFIXES = (".safetensors", ".gguf", ".onnx", ".json", ".txt", ".md", ".model", ".py", ".yaml", ".yml")
ZIP_MAGIC = b"PK\x03\x04"
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PICKLES = 5  # magic number, protocol version, sys info, the object, storage keys; then raw bytes
READ_AHEAD = 256 * 1024

# What `torch.save` writes for state dicts and training checkpoints, beyond picklescan's own safe set: the
# data-only part of torch's `weights_only` allow-list (tensor rebuild functions, storages, dtypes, containers).
BUILTIN_ALLOWED = frozenset(
    {
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.complex",
        "builtins.frozenset",
        "builtins.set",
        "collections.Counter",
        "collections.OrderedDict",
        "torch.Size",
        "torch.device",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
        "torch._tensor._rebuild_from_type_v2",
        *(
            f"torch._utils._rebuild_{kind}"
            for kind in (
                "tensor",
                "tensor_v2",
                "tensor_v3",
                "parameter",
                "parameter_with_state",
                "qtensor",
                "sparse_tensor",
                "nested_tensor",
                "meta_tensor_no_storage",
                "wrapper_subclass",
                "device_tensor_from_cpu_tensor",
                "device_tensor_from_numpy",
            )
        ),
        *(
            f"torch.{dtype}"
            for dtype in (
                "bool",
                "bfloat16",
                "float16",
                "float32",
                "float64",
                "float8_e4m3fn",
                "float8_e4m3fnuz",
                "float8_e5m2",
                "float8_e5m2fnuz",
                "float8_e8m0fnu",
                "float4_e2m1fn_x2",
                "complex32",
                "complex64",
                "complex128",
                "int8",
                "int16",
                "int32",
                "int64",
                "uint8",
                "uint16",
                "uint32",
                "uint64",
                "qint8",
                "qint32",
                "quint8",
                "quint4x2",
                "quint2x4",
                "per_tensor_affine",
                "per_channel_affine",
                "per_channel_affine_float_qparams",
                "per_tensor_symmetric",
                "per_channel_symmetric",
            )
        ),
    }
)
# torch.FloatStorage, torch.cuda.HalfStorage, ...: storage classes only hold bytes.
STORAGE_CLASS = re.compile(r"torch\.(cuda\.)?[A-Z][A-Za-z0-9]*Storage")

# Beyond what picklescan rates dangerous: dynamic imports, attribute writes and loaders of nested pickles.
# No policy can allow these.
NEVER_ALLOWED = (
    "builtins.__import__",
    "builtins.globals",
    "builtins.locals",
    "builtins.vars",
    "builtins.setattr",
    "builtins.delattr",
    "builtins.input",
    "importlib.*",
    "marshal.*",
    "types.*",
    "dill.*",
    "joblib.*",
    "numpy.load",
    "torch.load",
    "torch.jit.load",
    "torch.storage._load_from_bytes",
)


@dataclass
class _Pickle:
    globals: list[tuple[str, str, SafetyLevel]]
    error: str | None = None
    extension_opcode: bool = False
    scanner_error: str | None = None
    first_ops: list[tuple[str, object]] = field(default_factory=list)


@dataclass
class _FileReport:
    path: str
    globals: dict[tuple[str, str], bool] = field(default_factory=dict)
    issues: list[str] = field(default_factory=list)
    unsafe_globals: list[str] = field(default_factory=list)
    unparsable: bool = False
    pickles: int = 0

    @property
    def safe(self) -> bool:
        return not self.unsafe_globals and not self.unparsable

    def summary(self) -> str:
        parts = []
        if self.unsafe_globals:
            parts.append(f"imports {', '.join(self.unsafe_globals)}")
        if self.unparsable:
            parts.append("could not be scanned")
        return f"{self.path} {' and '.join(parts)}"


class _StoredFile(io.RawIOBase):
    """A read-only, seekable file over a stored file's chunks; each read fetches one byte range."""

    def __init__(self, version_file: VersionFile):
        super().__init__()
        self.version_file, self.size, self.position = version_file, version_file.size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        end = min(self.size, self.position + len(buffer))
        filled = 0
        view = memoryview(buffer)
        for block in file_blocks(self.version_file, self.position, end):
            view[filled : filled + len(block)] = block
            filled += len(block)
        self.position += filled
        return filled


def is_pickle_path(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES)


def scan_version(version: ModelVersion) -> dict:
    """Scan every pickle the version holds; see the module docstring for what counts as safe."""
    allowed = _policy_patterns(version)
    scanner = f"picklescan {package_version('picklescan')}"
    reports: list[_FileReport] = []
    for version_file in version.files.order_by("path"):
        strict = is_pickle_path(version_file.path)
        if not strict and (version_file.path.lower().endswith(NOT_PICKLE_SUFFIXES) or not _sniff(version_file)):
            continue
        report = _scan_file(version_file, allowed, strict=strict)
        if strict or report.pickles or not report.safe:
            reports.append(report)
    unsafe = [r for r in reports if not r.safe]
    if unsafe:
        summary = "; ".join(r.summary() for r in unsafe)
    elif reports:
        summary = f"{len(reports)} pickle file{'s' if len(reports) != 1 else ''} scanned: no unsafe imports"
    else:
        summary = "no pickle files"
    return {
        "safe": not unsafe,
        "summary": summary,
        "scanner": scanner,
        "files": [
            {
                "path": r.path,
                "scanner": scanner,
                "globals": [{"module": m, "name": n, "safe": s} for (m, n), s in sorted(r.globals.items())],
                "issues": r.issues,
            }
            for r in reports
        ],
    }


def _policy_patterns(version: ModelVersion) -> tuple[str, ...]:
    organization_id = version.model.project.organization_id
    entries = ScanPolicy.objects.filter(organization_id=organization_id).values_list("allowed_globals", flat=True)
    allowed = entries.first() or []
    return tuple(entry.strip() for entry in allowed if isinstance(entry, str) and entry.strip())


def _matches(full_name: str, patterns) -> bool:
    """Patterns are exact names ("collections.OrderedDict") or module wildcards ("mylib.*")."""
    return any(
        full_name.startswith(pattern[:-1]) if pattern.endswith(".*") else full_name == pattern for pattern in patterns
    )


def _sniff(version_file: VersionFile) -> bool:
    """Whether a file of an unlisted type starts like a pickle (protocol 2+) or a zip archive."""
    head = b"".join(file_blocks(version_file, 0, 4))
    return _pickle_start(head) or head == ZIP_MAGIC


def _pickle_start(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _scan_file(version_file: VersionFile, allowed: tuple[str, ...], *, strict: bool) -> _FileReport:
    """`strict`: the file is meant to be a pickle (by its name), so failing to parse it makes it unsafe."""
    report = _FileReport(path=version_file.path)
    stream = io.BufferedReader(_StoredFile(version_file), buffer_size=READ_AHEAD)
    if stream.peek(4)[:4] == ZIP_MAGIC:
        _scan_zip(stream, report, allowed)
    else:
        _scan_pickle_file(stream, version_file.size, report, allowed, strict=strict)
    return report


def _scan_pickle_file(stream, size: int, report: _FileReport, allowed, *, strict: bool) -> None:
    first = _read_pickle(stream, report.path)
    if first.error is not None and first.scanner_error is None and not first.globals and not strict:
        return  # a sniffed file that is not a pickle after all
    pickles = [first]
    # A legacy torch file is five pickles followed by raw storage bytes; anything else is a pickle stream
    # (one or more concatenated pickles) that must parse to the end.
    limit = TORCH_LEGACY_PICKLES if _is_torch_magic(first) else None
    while first.error is None and (limit is None or len(pickles) < limit):
        if limit is None and stream.tell() >= size:
            break
        pickles.append(_read_pickle(stream, report.path))
        if pickles[-1].error is not None:
            break
    report.pickles += len(pickles)
    for index, parsed in enumerate(pickles):
        label = "" if len(pickles) == 1 else f"pickle {index + 1}: "
        _judge_pickle(parsed, label, report, allowed)


def _scan_zip(stream, report: _FileReport, allowed) -> None:
    try:
        archive = RelaxedZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        report.unparsable = True
        report.issues.append(f"not a readable zip archive: {exc}")
        return
    with archive:
        for info in archive.infolist():
            name = info.filename
            strict = name.lower().endswith((".pkl", ".pickle"))
            if info.is_dir() or (not strict and _is_storage_record(name)):
                continue
            try:
                if not strict:
                    with archive.open(info) as member:
                        if not _pickle_start(member.read(2)):
                            continue
                with archive.open(info) as member:
                    parsed = _read_pickle(member, f"{report.path}:{name}")
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError) as exc:
                report.unparsable = True
                report.issues.append(f"{name}: cannot read the archive member: {exc}")
                continue
            if parsed.error is not None and parsed.scanner_error is None and not parsed.globals and not strict:
                continue  # starts like a pickle but is data
            report.pickles += 1
            _judge_pickle(parsed, f"{name}: ", report, allowed)


def _is_storage_record(name: str) -> bool:
    """Raw tensor bytes of a torch zip (`<prefix>/data/<key>`) and its bookkeeping records: never unpickled."""
    parts = name.split("/")
    return len(parts) >= 2 and (parts[-2] in ("data", ".data") or parts[-1] in ("byteorder", "version"))


def _read_pickle(stream, file_id: str) -> _Pickle:
    """Disassemble one pickle from the stream's position and leave the stream just after it."""
    start = stream.tell()
    parsed = _Pickle(globals=[])
    try:
        for opcode, argument, _ in pickletools.genops(stream):
            if opcode.name in ("EXT1", "EXT2", "EXT4"):
                parsed.extension_opcode = True
            if len(parsed.first_ops) < 4:
                parsed.first_ops.append((opcode.name, argument if isinstance(argument, int) else None))
    except Exception as exc:  # genops raises ValueError and friends on any malformed input
        parsed.error = f"{type(exc).__name__}: {exc}"
    end = stream.tell()
    stream.seek(start)
    try:
        result = scan_pickle_bytes(stream, file_id, multiple_pickles=False)
    except Exception as exc:  # e.g. a STACK_GLOBAL without two operands: what it would import is unknown
        parsed.scanner_error = f"{type(exc).__name__}: {exc}"
    else:
        parsed.globals = [(g.module, g.name, g.safety) for g in result.globals]
    stream.seek(end)
    return parsed


def _is_torch_magic(parsed: _Pickle) -> bool:
    ops = [(name, arg) for name, arg in parsed.first_ops if name not in ("PROTO", "FRAME")]
    return len(ops) == 2 and ops[0][0] in ("LONG1", "LONG4", "LONG", "INT") and ops[0][1] == TORCH_LEGACY_MAGIC


def _judge_pickle(parsed: _Pickle, label: str, report: _FileReport, allowed) -> None:
    for module, name, level in sorted(parsed.globals, key=lambda g: (g[0], g[1])):
        safe, why = _judge_global(module, name, level, allowed)
        report.globals[(module, name)] = report.globals.get((module, name), True) and safe
        if not safe:
            full = f"{module}.{name}"
            report.issues.append(f"{label}imports {full} ({why})")
            if full not in report.unsafe_globals:
                report.unsafe_globals.append(full)
    if parsed.extension_opcode:
        report.unparsable = True
        report.issues.append(f"{label}uses the copyreg extension registry (EXT opcodes), which hides its imports")
    if parsed.scanner_error is not None:
        report.unparsable = True
        report.issues.append(f"{label}picklescan could not list its imports: {parsed.scanner_error}")
    if parsed.error is not None:
        report.unparsable = True
        report.issues.append(f"{label}not a valid pickle: {parsed.error}")


def _judge_global(module: str, name: str, level: SafetyLevel, allowed) -> tuple[bool, str]:
    canonical = "builtins" if module == "__builtin__" else module  # protocols 0-2 spell builtins this way
    full = f"{canonical}.{name}"
    if level == SafetyLevel.Dangerous:
        return False, "rated dangerous by picklescan"
    if _matches(full, NEVER_ALLOWED):
        return False, "can run arbitrary code"
    if level == SafetyLevel.Innocuous or full in BUILTIN_ALLOWED or STORAGE_CLASS.fullmatch(full):
        return True, ""
    if _matches(full, allowed):
        return True, ""
    return False, "not in the allowed set; an organization admin can allow it in the scan policy"
