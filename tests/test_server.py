"""The loopback mirror: Range, HEAD, request log."""

from __future__ import annotations

from pathlib import Path

import requests


def test_range_head_and_log(mirror_root: Path, mirror) -> None:
    data = bytes(range(200)) * 10
    (mirror_root / "host.org").mkdir()
    (mirror_root / "host.org" / "f.bin").write_bytes(data)
    url = f"{mirror.url}/host.org/f.bin"
    head = requests.head(url, timeout=5)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data)
    assert head.headers["Accept-Ranges"] == "bytes"
    part = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=5)
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    past = requests.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=5)
    assert past.status_code == 416
    stale = requests.get(url, headers={"Range": "bytes=0-9", "If-Range": '"not-the-etag"'}, timeout=5)
    assert stale.status_code == 200 and stale.content == data
    assert requests.get(f"{mirror.url}/host.org/none", timeout=5).status_code == 404
    assert requests.get(f"{mirror.url}/../etc/passwd", timeout=5).status_code == 404
    log = mirror.requests_for("f.bin")
    assert [(r.method, r.status) for r in log] == [("HEAD", 200), ("GET", 206), ("GET", 416), ("GET", 200)]
    assert log[1].range == "bytes=100-199" and log[1].content_length == 100
