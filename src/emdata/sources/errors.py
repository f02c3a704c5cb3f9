"""Errors of the sources layer; every message names the URL or file and what went wrong."""

from __future__ import annotations


class DownloadError(RuntimeError):
    """A download failed; the message names the URL and what went wrong."""


class ChecksumError(DownloadError):
    """The bytes that arrived do not match the expected size or checksum."""


class ErrorPageError(DownloadError):
    """The server answered with a web page (or a stub far smaller than the file) instead of the data."""


class OfflineError(DownloadError):
    """``EMDATA_OFFLINE=1`` and the file is not in the cache."""


class TLSError(DownloadError):
    """The server's TLS certificate failed verification (expired, self-signed, wrong host)."""


class SizeLimitError(DownloadError):
    """The server sent more bytes than the file can have (its expected size or the limit for unknown sizes)."""


class CacheMismatchError(ChecksumError):
    """A cached file no longer matches the checksum expected now (card corrected, override removed, file edited)."""


class UnsafePathError(DownloadError):
    """A cache path is a symbolic link leading out of the emdata home; emdata does not follow it."""
