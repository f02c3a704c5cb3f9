"""Pytest fixtures of emdata's tests (``tests/`` and every ``emdata/datasets/<id>/test_<id>.py``):
an isolated ``EMDATA_HOME`` for every test (autouse), a loopback mirror over replica files, checksum
pins and a fault-injecting mirror. Registered as a plugin by ``-p emdata.testing.fixtures`` in the
project's pytest ``addopts``; another project's tests can load it the same way.

Example (a test using them):
    >>> def test_prepare_offline(mirror_root, mirror, pin): ...
"""


from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from emdata.config import MAX_BOX_ENV, SCHEDULER_ENV
from emdata.testing import MirrorServer
from emdata.testing.faults import Faults

ENV_KEYS = ("EMDATA_HOME", "EMDATA_MIRROR", "EMDATA_OFFLINE", "EMDATA_CHECKSUMS", "EMDATA_QUIET", MAX_BOX_ENV,
            SCHEDULER_ENV)


@pytest.fixture(autouse=True)
def emdata_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """Every test gets its own EMDATA_HOME and no inherited emdata settings. A test never touches
    the network: unless it starts a mirror, every URL resolves to a closed loopback port and fails
    at once (subprocesses inherit this too). Docstring examples show progress as a user sees it."""
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("EMDATA_HOME", str(home))
    monkeypatch.setenv("EMDATA_MIRROR", "http://127.0.0.1:9")
    if isinstance(request.node, pytest.Function):  # not a doctest
        monkeypatch.setenv("EMDATA_QUIET", "1")
    return home


@pytest.fixture
def mirror_root(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    root.mkdir()
    return root


@pytest.fixture
def mirror(mirror_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MirrorServer]:
    """A running loopback mirror over ``mirror_root``, with EMDATA_MIRROR pointing at it."""
    with MirrorServer(mirror_root) as server:
        monkeypatch.setenv("EMDATA_MIRROR", server.url)
        yield server
    port = int(server.url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):  # stopped means the port is closed, not merely idle
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


Pin = Callable[..., Path]


@pytest.fixture
def pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Pin:
    """Pin checksums in an EMDATA_CHECKSUMS file (the cards' belong to the real files, not the replicas).

    ``pin(files, digests=None)``: ``files`` is ``{url: replica file}`` (its sha256 is pinned),
    ``digests`` is ``{url: sha256 hex}`` as given. Calls add to the same file; returns its path.
    """
    sums: dict[str, str] = {}
    target = tmp_path / "pinned-sums.json"

    def write(files: Mapping[str, Path], digests: Mapping[str, str] | None = None) -> Path:
        sums.update({url: hashlib.sha256(Path(p).read_bytes()).hexdigest() for url, p in files.items()})
        sums.update(digests or {})
        target.write_text(json.dumps(sums))
        monkeypatch.setenv("EMDATA_CHECKSUMS", str(target))
        return target
    return write


# ---------------------------------------------------------------------------------------------
# a file served at two URLs behind the fault-injection hook (download engine tests)

@pytest.fixture
def payload(mirror_root: Path, request: pytest.FixtureRequest) -> bytes:
    """``SIZE`` random bytes published at the test module's ``URL`` and ``MIRROR_URL``."""
    import numpy as np

    size, urls = request.module.SIZE, (request.module.URL, request.module.MIRROR_URL)
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    for url in urls:
        target = mirror_root / url.split("://", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return data


@pytest.fixture
def faulty(mirror_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Faults, MirrorServer]]:
    """The mirror behind a :class:`Faults` hook: ``(faults, server)``."""
    faults = Faults(mirror_root)
    with MirrorServer(mirror_root, hook=faults) as server:
        monkeypatch.setenv("EMDATA_MIRROR", server.url)
        yield faults, server

