"""``--bbox`` parsing: ASCII digits only, one-line errors naming the value; the box size guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from emdata.boxes import BoxTooLargeError, check_box_size, max_box_bytes, parse_bbox


@pytest.mark.parametrize("value", ["１２", "1_000", " +5", "+5", "٣", "5 ", "-3", "0x10", "1e3", "²"])
def test_bbox_takes_ascii_digits_only(value: str) -> None:
    text = f"{value}:20,0:8,0:8"
    with pytest.raises(ValueError) as err:
        parse_bbox(text)
    message = str(err.value)
    assert f"{value!r} is not a voxel coordinate (ASCII digits 0-9 only)" in message
    assert message.startswith(f"bbox {text!r}") and "\n" not in message


def test_bbox_open_ends_and_plain_digits_still_parse() -> None:
    assert parse_bbox("007:20,:8,3:") == (slice(7, 20), slice(None, 8), slice(3, None))
    with pytest.raises(ValueError, match=r"empty range 9:9"):
        parse_bbox("9:9,0:1,0:1")
    with pytest.raises(ValueError, match=r"is not 'z0:z1,y0:y1,x0:x1'"):
        parse_bbox("0:1,0:1")


def test_box_size_limit_and_its_override(monkeypatch: pytest.MonkeyPatch) -> None:
    box = parse_bbox("0:100,0:1000,0:1000")  # 1e8 voxels
    monkeypatch.delenv("EMDATA_MAX_BOX_GB", raising=False)
    assert max_box_bytes() == 16 * 10**9 and check_box_size("d", box, 9) == 9 * 10**8
    with pytest.raises(BoxTooLargeError, match=r"^d: the box z 0:100, y 0:1000, x 0:1000 \(100×1000×1000 voxels\) "
                                               r"would read 200.0 GB, over the limit of 16.0 GB; .*"
                                               r"EMDATA_MAX_BOX_GB=200 to allow it$"):
        check_box_size("d", box, 2000)
    monkeypatch.setenv("EMDATA_MAX_BOX_GB", "200")
    assert check_box_size("d", box, 2000) == 200 * 10**9
    monkeypatch.setenv("EMDATA_MAX_BOX_GB", "lots")
    with pytest.raises(ValueError, match=r"EMDATA_MAX_BOX_GB='lots' is not a positive number of GB"):
        max_box_bytes()


def test_cli_bbox_error_is_one_line_naming_the_value(tmp_path: Path) -> None:
    env = {**os.environ, "EMDATA_OFFLINE": "1", "EMDATA_HOME": str(tmp_path), "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "emdata", "prepare", "h01", "--bbox", "１２:20,0:8,0:8"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert "'１２' is not a voxel coordinate (ASCII digits 0-9 only)" in run.stderr
