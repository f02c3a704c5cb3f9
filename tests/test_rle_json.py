"""The bio3d-vision run-length JSON label reader: round trips against an independent encoder,
the exact format rules (1-based starts, C order, .info shape/dtype), and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emdata.formats.rle_json import RleJsonFormatError, decode_rle_json, read_rle_json


def encode(labels: np.ndarray, dtype: str | None = None) -> dict[str, object]:
    """bio3d_vision's encoder, written out here: per non-zero value, 1-based 'start length' pairs."""
    doc: dict[str, object] = {}
    flat = labels.ravel(order="C")
    for value in np.unique(flat):
        if value == 0:
            continue
        runs, start = [], None
        for i, hit in enumerate([*(flat == value).tolist(), False]):
            if hit and start is None:
                start = i
            elif not hit and start is not None:
                runs += [start + 1, i - start]
                start = None
        doc[str(int(value))] = " ".join(map(str, runs))
    doc[".info"] = {"shape": list(labels.shape), "dtype": dtype or str(labels.dtype)}
    return doc


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int64"])
def test_round_trip_keeps_values_shape_and_dtype(dtype: str) -> None:
    rng = np.random.default_rng(3)
    labels = rng.choice([0, 0, 0, 1, 6, 34], size=(3, 5, 7)).astype(dtype)
    if dtype == "uint64":
        labels[labels == 34] = 2**63 + 5  # wide ids are kept, never narrowed
    decoded = decode_rle_json(encode(labels), "vol.json")
    assert decoded.data.dtype == np.dtype(dtype) and decoded.data.shape == (3, 5, 7)
    assert np.array_equal(decoded.data, labels)
    assert decoded.labels == tuple(int(v) for v in np.unique(labels) if v != 0)


def test_starts_are_one_based_over_the_c_order_flattening() -> None:
    doc = {".info": {"shape": [2, 2, 3], "dtype": "uint16"}, "5": "1 1 6 2", "9": "12 1"}
    data = decode_rle_json(doc, "x.json").data
    assert data.tolist() == [[[5, 0, 0], [0, 0, 5]], [[5, 0, 0], [0, 0, 9]]]


def test_reads_files_and_bytes_and_extra_info_keys(tmp_path: Path) -> None:
    doc = {"2": "2 3", ".info": {"shape": [1, 6], "dtype": "np.uint8", "note": "x"}}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    from_file = read_rle_json(path)
    from_bytes = read_rle_json(path.read_bytes(), name="a.json")
    assert from_file.data.tolist() == [[0, 2, 2, 2, 0, 0]] == from_bytes.data.tolist()
    assert from_file.info["note"] == "x" and from_file.runs == 1 and from_file.data.dtype == np.uint8


def test_empty_volume() -> None:
    data = decode_rle_json({".info": {"shape": [2, 3], "dtype": "uint16"}}, "e.json").data
    assert data.dtype == np.uint16 and not data.any()


@pytest.mark.parametrize(("doc", "message"), [
    ({"1": "1 2"}, r"no '.info' object"),
    ({".info": {"shape": [4], "dtype": "float32"}}, r"'.info' dtype 'float32' is not an integer type"),
    ({".info": {"shape": [4], "dtype": "blob"}}, r"'.info' dtype 'blob' is not a numpy dtype name"),
    ({".info": {"shape": "4", "dtype": "uint8"}}, r"'.info' shape '4' is not a list"),
    ({".info": {"shape": [4], "dtype": "uint8"}, "0": "1 1"}, r"key '0': label 0 is background"),
    ({".info": {"shape": [4], "dtype": "uint8"}, "cell": "1 1"}, r"key 'cell' is not an integer label"),
    ({".info": {"shape": [4], "dtype": "uint8"}, "300": "1 1"}, r"label 300 does not fit the '.info' dtype uint8"),
    ({".info": {"shape": [4], "dtype": "uint8"}, "1": "1 2 3"}, r"label 1: odd number of RLE tokens \(3\)"),
    ({".info": {"shape": [4], "dtype": "uint8"}, "1": "1 x"}, r"label 1: RLE token 'x' is not an integer"),
    ({".info": {"shape": [4], "dtype": "uint8"}, "1": "0 2"}, r"label 1: run start 0 is below 1 \(starts are "
                                                               r"1-based\)"),
    ({".info": {"shape": [4], "dtype": "uint8"}, "1": "1 0"}, r"label 1: run length 0 is below 1"),
    ({".info": {"shape": [4], "dtype": "uint8"}, "1": "3 3"}, r"label 1: run 'start 3 length 3' ends at voxel 5, "
                                                               r"past the 4 voxels"),
    ({".info": {"shape": [2, 2], "dtype": "uint8"}, "1": "1 2", "2": "2 2"}, r"labels 1 and 2 both claim the voxel "
                                                                              r"at \(0, 1\)"),
    ({".info": {"shape": [4], "dtype": "uint8"}, "1": [1, 2]}, r"label 1: expected an RLE string"),
])
def test_bad_documents_are_refused_with_file_and_value(doc: dict[str, object], message: str) -> None:
    with pytest.raises(RleJsonFormatError, match=r"^bad.json: " + message):
        decode_rle_json(doc, "bad.json")


def test_unreadable_json_names_the_file() -> None:
    with pytest.raises(RleJsonFormatError, match=r"^50-semantic.json: not a readable JSON label file"):
        read_rle_json(b"{not json", name="50-semantic.json")
    with pytest.raises(RleJsonFormatError, match=r"expected a JSON object"):
        read_rle_json(b"[1, 2]", name="l.json")
