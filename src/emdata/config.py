"""emdata's settings: one frozen :class:`Settings` object, read from the environment by default.

Environment variables (read by :meth:`Settings.from_env`):

- ``EMDATA_HOME``: root of downloads and prepared data (default: platformdirs user data dir).
- ``EMDATA_MIRROR``: base URL that replaces every upstream host (``<mirror>/<host>/<path>``).
- ``EMDATA_OFFLINE=1``: never touch the network.
- ``EMDATA_CHECKSUMS``: JSON file ``{url: sha256}`` overriding catalog checksums.
- ``EMDATA_QUIET=1``: no progress bars.
- ``EMDATA_MAX_BOX_GB``: the largest box read at once, in decimal GB (default 16).
- ``EMDATA_SCHEDULER``: where ``prepare`` builds large volumes: ``auto`` (default), ``in-process``,
  ``local`` (a dask ``LocalCluster``) or a dask scheduler address (``tcp://host:8786``).

:func:`current` is the active settings: those of the innermost :func:`using` block of this
thread (or asyncio task), else a fresh read of the environment. Library code never writes
``os.environ``; :func:`using` scopes an override to the block, and a new thread starts from
the environment (library thread pools come from :func:`thread_pool`, whose threads see the
settings of the code that made the pool).

Example:
    >>> with using(home="/data/emdata", offline=True):
    ...     downloads_dir("snemi3d").as_posix(), offline()
    ('/data/emdata/downloads/snemi3d', True)
    >>> downloads_dir("snemi3d").relative_to(emdata_home()).as_posix()
    'downloads/snemi3d'
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

MAX_BOX_ENV = "EMDATA_MAX_BOX_GB"
SCHEDULER_ENV = "EMDATA_SCHEDULER"
SCHEDULER_WORDS = ("in-process", "local")
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where emdata keeps its data and how it reaches the network.

    ``checksums`` is the ``{url: sha256}`` override: a mapping, or the path of a JSON file
    holding one (read when used), or None. ``max_box_gb`` None means the default limit.

    Example:
        >>> s = Settings.from_env({"EMDATA_HOME": "/srv/em", "EMDATA_OFFLINE": "yes", "EMDATA_MAX_BOX_GB": "64"})
        >>> s.home.as_posix(), s.mirror, s.offline, s.max_box_gb
        ('/srv/em', None, True, 64.0)
        >>> s.to_env()["EMDATA_HOME"], s.to_env()["EMDATA_OFFLINE"]
        ('/srv/em', '1')
    """

    home: Path
    mirror: str | None = None
    offline: bool = False
    checksums: Path | Mapping[str, str] | None = None
    quiet: bool = False
    max_box_gb: float | None = None
    scheduler: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "home", Path(self.home).expanduser())
        set_(self, "mirror", (self.mirror or "").strip().rstrip("/") or None)
        if isinstance(self.checksums, (str, os.PathLike)):
            set_(self, "checksums", Path(self.checksums))
        elif self.checksums is not None:
            set_(self, "checksums", dict(self.checksums))  # a copy: the settings stay as they were made
        if self.max_box_gb is not None:
            set_(self, "max_box_gb", _positive_gb(self.max_box_gb, "max_box_gb"))
        set_(self, "scheduler", _scheduler(self.scheduler))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default ``os.environ``); unset variables take their defaults."""
        env = os.environ if environ is None else environ
        home = env.get("EMDATA_HOME")
        if not home:
            import platformdirs

            home = platformdirs.user_data_dir("emdata")
        box = env.get(MAX_BOX_ENV, "").strip()
        max_box_gb = _positive_gb(box, MAX_BOX_ENV) if box else None
        return cls(home=Path(home), mirror=env.get("EMDATA_MIRROR"),
                   offline=env.get("EMDATA_OFFLINE", "").strip().lower() in TRUE_WORDS,
                   checksums=env.get("EMDATA_CHECKSUMS") or None,
                   quiet=env.get("EMDATA_QUIET", "").strip().lower() in TRUE_WORDS, max_box_gb=max_box_gb,
                   scheduler=env.get(SCHEDULER_ENV) or None)

    def to_env(self) -> dict[str, str]:
        """These settings as ``EMDATA_*`` variables, for the ``env`` of a subprocess (a mapping of
        checksums cannot travel this way: write it to a JSON file and pass its path)."""
        if self.checksums is not None and not isinstance(self.checksums, Path):
            raise ValueError("checksums given as a mapping cannot be passed as EMDATA_CHECKSUMS; write them to a "
                             "JSON file and use Settings(checksums=<that path>)")
        env = {"EMDATA_HOME": str(self.home), "EMDATA_MIRROR": self.mirror or "",
               "EMDATA_OFFLINE": "1" if self.offline else "0", "EMDATA_CHECKSUMS": str(self.checksums or ""),
               "EMDATA_QUIET": "1" if self.quiet else "0"}
        if self.max_box_gb is not None:
            env[MAX_BOX_ENV] = repr(self.max_box_gb)
        if self.scheduler is not None:
            env[SCHEDULER_ENV] = self.scheduler
        return env


def _scheduler(value: Any) -> str | None:
    """``value`` checked as a ``scheduler`` setting (None and ``auto`` mean the default).

    Example:
        >>> _scheduler("Local"), _scheduler("tcp://10.0.0.5:8786"), _scheduler(None)
        ('local', 'tcp://10.0.0.5:8786', None)
    """
    if value is None or not str(value).strip() or str(value).strip().lower() == "auto":
        return None
    text = str(value).strip()
    if text.lower() in SCHEDULER_WORDS:
        return text.lower()
    if "://" in text:
        return text
    raise ValueError(f"scheduler={value!r}: expected auto, in-process, local or a dask scheduler address such as "
                     "tcp://host:8786")


def _positive_gb(value: Any, name: str) -> float:
    try:
        gb = float(value)
    except (TypeError, ValueError):
        gb = math.nan
    if not (math.isfinite(gb) and gb > 0):
        raise ValueError(f"{name}={value!r} is not a positive number of GB (e.g. 64)")
    return gb


_active: ContextVar[Settings | None] = ContextVar("emdata_settings", default=None)


def current() -> Settings:
    """The active settings: the innermost :func:`using` block's, else read from the environment."""
    return _active.get() or Settings.from_env()


@contextmanager
def using(settings: Settings | None = None, /, **overrides: Any) -> Iterator[Settings]:
    """Make ``settings`` (default: :func:`current`) with ``overrides`` applied the active
    settings for the block, in this thread or asyncio task only; yields them.

    Example:
        >>> with using(mirror="http://127.0.0.1:8000/") as inside:
        ...     inside.mirror == mirror() == "http://127.0.0.1:8000"
        True
    """
    chosen = dataclasses.replace(settings or current(), **overrides)
    token = _active.set(chosen)
    try:
        yield chosen
    finally:
        _active.reset(token)


def _adopt(settings: Settings | None) -> None:
    _active.set(settings)


def thread_pool(max_workers: int, thread_name_prefix: str = "emdata") -> ThreadPoolExecutor:
    """A thread pool whose threads see the settings active where it was made.

    Example:
        >>> with using(home="/data/x"), thread_pool(2) as pool:
        ...     pool.submit(emdata_home).result().as_posix()
        '/data/x'
    """
    return ThreadPoolExecutor(max_workers, thread_name_prefix=thread_name_prefix, initializer=_adopt,
                              initargs=(_active.get(),))


def emdata_home() -> Path:
    """Root folder of all emdata data."""
    return current().home


def downloads_dir(namespace: str) -> Path:
    """Where the source files of one dataset are cached."""
    return emdata_home() / "downloads" / namespace


def prepared_dir(dataset: str) -> Path:
    """Where the canonical volumes of one dataset live."""
    return emdata_home() / "prepared" / dataset


def mirror() -> str | None:
    """The mirror base URL, or None."""
    return current().mirror


def offline() -> bool:
    """Whether the network is off limits."""
    return current().offline


def checksum_overrides() -> dict[str, str]:
    """``{url: sha256}`` from the active settings' checksums (empty when unset)."""
    source = current().checksums
    if source is None:
        return {}
    if isinstance(source, Path):
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"EMDATA_CHECKSUMS={source}: cannot read a JSON object {{url: sha256}}: {exc}") from exc
        where = f"EMDATA_CHECKSUMS={source}"
    else:
        data, where = source, "Settings.checksums"
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"{where}: expected a JSON object mapping URL strings to sha256 strings")
    return {k: v.lower().removeprefix("sha256:") for k, v in data.items()}


def set_quiet(value: bool) -> None:
    """Silence progress bars from now on in this thread's context (CLI ``--quiet`` and ``--json``)."""
    _active.set(dataclasses.replace(current(), quiet=value))


def quiet() -> bool:
    """Whether progress bars are off."""
    return current().quiet
