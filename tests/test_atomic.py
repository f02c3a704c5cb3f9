"""One atomic-publish helper: replace in one step, leave nothing behind on failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from emdata.atomic import replacing, unique_sibling, write_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "record.json"
    write_atomic(dest, "old")
    with pytest.raises(RuntimeError, match="interrupted"), replacing(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert dest.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_failed_folder_is_removed_and_named_temporary_is_used(tmp_path: Path) -> None:
    dest, named = tmp_path / "out", tmp_path / "out.complete.tmp"
    with pytest.raises(OSError), replacing(dest) as tmp:
        (tmp / "sub").mkdir(parents=True)
        raise OSError("disk full")
    assert not any(tmp_path.iterdir())
    write_atomic(tmp_path / "out.json", b"\x01", tmp=named)
    assert (tmp_path / "out.json").read_bytes() == b"\x01" and not named.exists()


def test_temporary_names_differ_per_call(tmp_path: Path) -> None:
    assert unique_sibling(tmp_path / "a") != unique_sibling(tmp_path / "a")
