"""gunicorn's public request corpus (``tests/requests/{valid,invalid}``), taken from gunicorn's source
distribution on PyPI (pinned by version and sha256, downloaded once into a cache), read as gunicorn's own test
loader reads it.

Each ``.http`` file is a raw request (``\\r\\n`` and ``\\0``, ``\\t``, ``\\xHH`` written as escapes, line breaks in
the file ignored); its ``.py`` says what gunicorn's parser makes of it: a ``request`` dict (or a list of them,
for pipelined requests) for a valid one, an exception class for an invalid one, and ``cfg.set(...)`` calls for
the gunicorn settings the case needs.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = "27.0.1"
SHA256 = "b1514965361c8b7e8107a80aa2a92636878df1ccfac6dd204a676426e04d9e3e"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "corepool-tests"


@dataclass
class Expected:
    """One request of a valid case, as gunicorn parses it."""

    method: str
    path: str
    query: str
    version: tuple[int, int]
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class CorpusCase:
    name: str  # "valid/001"
    data: bytes
    valid: bool
    expected: list[Expected] = field(default_factory=list)  # valid cases: the requests, in order
    error: str = ""  # invalid cases: gunicorn's exception
    settings: dict[str, Any] = field(default_factory=dict)  # gunicorn settings the case sets


def sdist() -> Path:
    """gunicorn's source distribution, downloaded from PyPI once (pip, the ordinary client) and checked."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"gunicorn-{VERSION}.tar.gz"
    if not path.exists() or _sha256(path) != SHA256:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", f"gunicorn=={VERSION}", "-d", str(CACHE)],
                       check=True, timeout=300)  # fmt: skip
    digest = _sha256(path)
    if digest != SHA256:
        raise AssertionError(f"{path}: sha256 {digest}, expected {SHA256}")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decode(raw: bytes) -> bytes:
    """A ``.http`` file's bytes as gunicorn's loader makes them."""
    data = raw.replace(b"\n", b"").replace(b"\\r\\n", b"\r\n")
    data = data.replace(b"\\0", b"\x00").replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    return re.sub(rb"\\x([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), data)


def load() -> list[CorpusCase]:
    """Every case of the corpus, valid and invalid."""
    cases = []
    with tarfile.open(sdist()) as tar:
        members = {m.name.split("/tests/requests/", 1)[1]: m for m in tar.getmembers()
                   if "/tests/requests/" in m.name and m.isfile()}  # fmt: skip
        for name in sorted(members):
            if not name.endswith(".http"):
                continue
            stem = name[: -len(".http")]
            source = members.get(stem + ".py")
            if source is None:
                continue
            data = decode(_read(tar, members[name]))
            cases.append(_case(stem, data, _read(tar, source).decode()))
    return cases


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    assert handle is not None
    return handle.read()


def _case(stem: str, data: bytes, source: str) -> CorpusCase:
    """Read a case's ``.py`` without running gunicorn: its settings, and its request dicts or exception name."""
    settings = {m.group(1): ast.literal_eval(m.group(2))
                for m in re.finditer(r"""cfg\.set\(\s*['"](\w+)['"]\s*,\s*(.+?)\)\s*$""", source, re.M)}
    valid = stem.startswith("valid/")
    case = CorpusCase(stem, data, valid, settings=settings)
    if not valid:
        match = re.search(r"^request\s*=\s*(\w+)", source, re.M)
        case.error = match.group(1) if match else "?"
        return case
    namespace: dict[str, Any] = {"uri": lambda raw: raw, "cfg": _Settings()}
    for names in re.findall(r"^from \S+ import (.+)$", source, re.M):  # gunicorn's names: stand-ins
        namespace.update(dict.fromkeys((n.strip() for n in names.split(",")), _Settings))
    exec(compile(re.sub(r"^from .*$|^import .*$", "", source, flags=re.M), stem, "exec"), namespace)
    requests = namespace["request"]
    for item in requests if isinstance(requests, list) else [requests]:
        target = item["uri"]
        if "://" in target:  # absolute-form: the app sees its path and query
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path, _, query = target.partition("?")
        query = query.split("#", 1)[0]
        case.expected.append(Expected(item["method"], path.split("#", 1)[0], query, tuple(item["version"]),
                                      [(n, v) for n, v in item["headers"]], item.get("body", b"")))
    return case


class _Settings:
    """Stands in for gunicorn's ``Config`` in a ``.py``: settings are read from the source instead."""

    def set(self, name: str, value: Any) -> None:
        pass
