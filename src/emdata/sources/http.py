"""HTTP plumbing shared by downloads and range reads: one session, classified failures,
and a retry policy with exponential backoff, jitter and ``Retry-After``.

A failure is *transient* (connection error, timeout, 408/425/429/5xx: worth retrying) or
*permanent* (other 4xx such as 403/404/410, an HTML error page, an unasked-for
``Content-Encoding``: try the next mirror instead, at once).

Example:
    >>> policy = RetryPolicy(tries=3, backoff_s=0.5)
    >>> policy.delay(1, retry_after=None) <= 0.5 * 1.5
    True
    >>> policy.delay(1, retry_after=7.0)
    7.0
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from emdata.sources.errors import DownloadError

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "emdata (https://github.com/emdata; volume-EM dataset loader)"
_local = threading.local()


class TransientError(DownloadError):
    """A failure worth retrying; ``progressed`` says whether bytes arrived before it."""

    def __init__(self, message: str, *, retry_after: float | None = None, progressed: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.progressed = progressed


class PermanentError(DownloadError):
    """A failure retrying will not fix at this URL (try the next mirror)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry one URL before failing over.

    ``tries`` counts attempts that made no progress; an attempt that carried the file beyond
    the most bytes ever held does not use one up, so a download cut many times still
    completes while a server that ignores ``Range`` and drops the connection does not loop.
    ``give_up_after_s`` bounds the time one URL may go without progress (a dead server is
    reported within it); ``attempt_deadline_s`` bounds one request (a trickling server is cut
    and resumed); ``max_unknown_size_bytes`` caps a body whose size nobody states.
    """

    tries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    max_retry_after_s: float = 300.0
    give_up_after_s: float = 60.0
    attempt_deadline_s: float = 6 * 3600.0
    max_unknown_size_bytes: int = 1 << 40

    def delay(self, failures: int, retry_after: float | None) -> float:
        """Seconds to wait before the next attempt after ``failures`` consecutive failures."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_s)
        base = min(self.backoff_s * 2 ** max(failures - 1, 0), self.max_backoff_s)
        return base * random.uniform(0.5, 1.5)  # full jitter around the exponential step

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)

    def timeout_within(self, remaining_s: float) -> tuple[float, float]:
        """Connect/read timeouts that end no later than ``remaining_s`` from now."""
        remaining_s = max(remaining_s, 0.05)
        return (min(self.connect_timeout_s, remaining_s), min(self.read_timeout_s, remaining_s))


DEFAULT_POLICY = RetryPolicy()


def session() -> Any:
    """A per-thread ``requests.Session`` (connection reuse; sessions are not thread-safe)."""
    import requests

    s = getattr(_local, "session", None)
    if s is None:
        s = requests.Session()
        s.headers["User-Agent"] = USER_AGENT
        _local.session = s
    return s


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def classify_status(url: str, response: Any) -> None:
    """Raise Transient/Permanent errors for failing statuses; return for 2xx and 416."""
    status = response.status_code
    if 200 <= status < 300 or status == 416:
        return
    reason = f"HTTP {status} {response.reason or ''}".strip()
    if status in RETRY_STATUS:
        raise TransientError(f"{url}: {reason}", retry_after=parse_retry_after(response.headers.get("Retry-After")))
    raise PermanentError(f"{url}: {reason}")


def transient_from(url: str, exc: BaseException, progressed: bool) -> TransientError:
    """Wrap a requests/urllib3 network exception (reset, timeout, truncated body)."""
    return TransientError(f"{url}: {type(exc).__name__}: {exc}", progressed=progressed)


def get_with_retries(url: str, headers: dict[str, str] | None = None, policy: RetryPolicy = DEFAULT_POLICY,
                     sleep: Any = time.sleep, *, missing_ok: bool = False) -> bytes | None:
    """GET a small resource (metadata, ranges) into memory, retrying transient failures.

    With ``missing_ok``, a ``404`` answers None (an object store's missing key) instead of raising.
    Raises :class:`PermanentError`, or the last :class:`TransientError` after ``policy.tries``.
    """
    import requests

    failures = 0
    while True:
        try:
            response = session().get(url, headers=headers or {}, timeout=policy.timeout)
            if missing_ok and response.status_code == 404:
                return None
            classify_status(url, response)
            if response.status_code == 416:
                raise PermanentError(f"{url}: HTTP 416 range not satisfiable ({headers})")
            return response.content
        except TransientError as exc:
            error = exc
        except requests.RequestException as exc:
            error = transient_from(url, exc, progressed=False)
        failures += 1
        if failures >= policy.tries:
            raise error
        sleep(policy.delay(failures, error.retry_after))
