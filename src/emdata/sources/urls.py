"""Upstream URL → URL actually fetched (``EMDATA_MIRROR`` rewriting, ``gs://`` → HTTPS).

Example:
    >>> mirror_url("https://cremi.org/static/data/sample_A_20160501.hdf", "http://127.0.0.1:8000")
    'http://127.0.0.1:8000/cremi.org/static/data/sample_A_20160501.hdf'
    >>> mirror_url("gs://h01-release/data/20210601/c3", "")  # no mirror
    'https://storage.googleapis.com/h01-release/data/20210601/c3'
    >>> mirror_url("precomputed://gs://b/p", "http://m")
    'precomputed://http://m/storage.googleapis.com/b/p'
"""

from __future__ import annotations

from urllib.parse import urlsplit

from emdata import config

_PRECOMPUTED = "precomputed://"


def https_url(url: str) -> str:
    """Cloud bucket schemes as their public HTTPS form."""
    if url.startswith("gs://"):
        return "https://storage.googleapis.com/" + url[len("gs://"):]
    if url.startswith("s3://"):
        bucket, _, path = url[len("s3://"):].partition("/")
        return f"https://{bucket}.s3.amazonaws.com/{path}"
    return url


def mirror_url(url: str, mirror: str | None = None) -> str:
    """Rewrite ``url`` onto ``mirror`` (default: ``EMDATA_MIRROR``): ``<mirror>/<host>/<path>``."""
    if url.startswith(_PRECOMPUTED):
        return _PRECOMPUTED + mirror_url(url[len(_PRECOMPUTED):], mirror)
    url = https_url(url)
    base = config.mirror() if mirror is None else mirror
    if not base:
        return url
    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"cannot mirror {url!r}: it has no host")
    rewritten = f"{base.rstrip('/')}/{parts.netloc}{parts.path}"
    return f"{rewritten}?{parts.query}" if parts.query else rewritten
