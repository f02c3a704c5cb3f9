"""Environment variables read by every layer.

- ``EMDATA_HOME``: root of downloads and prepared data (default: platformdirs user data dir).
- ``EMDATA_MIRROR``: base URL that replaces every upstream host (``<mirror>/<host>/<path>``).
- ``EMDATA_OFFLINE=1``: never touch the network.
- ``EMDATA_CHECKSUMS``: JSON file ``{url: sha256}`` overriding catalog checksums.

Example:
    >>> downloads_dir("snemi3d").relative_to(emdata_home()).as_posix()
    'downloads/snemi3d'
"""

from __future__ import annotations

import json
import os
from pathlib import Path

_quiet = False


def emdata_home() -> Path:
    """Root folder of all emdata data."""
    env = os.environ.get("EMDATA_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("emdata"))


def downloads_dir(namespace: str) -> Path:
    """Where the source files of one dataset are cached."""
    return emdata_home() / "downloads" / namespace


def prepared_dir(dataset: str) -> Path:
    """Where the canonical volumes of one dataset live."""
    return emdata_home() / "prepared" / dataset


def mirror() -> str | None:
    """The mirror base URL, or None."""
    value = os.environ.get("EMDATA_MIRROR", "").strip()
    return value.rstrip("/") or None


def offline() -> bool:
    return os.environ.get("EMDATA_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def checksum_overrides() -> dict[str, str]:
    """``{url: sha256}`` from the file named by ``EMDATA_CHECKSUMS`` (empty when unset)."""
    path = os.environ.get("EMDATA_CHECKSUMS")
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"EMDATA_CHECKSUMS={path}: cannot read a JSON object {{url: sha256}}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"EMDATA_CHECKSUMS={path}: expected a JSON object mapping URL strings to sha256 strings")
    return {k: v.lower().removeprefix("sha256:") for k, v in data.items()}


def set_quiet(value: bool) -> None:
    """Silence progress bars (CLI ``--quiet`` and ``--json``)."""
    global _quiet
    _quiet = value


def quiet() -> bool:
    return _quiet or os.environ.get("EMDATA_QUIET", "") == "1"
