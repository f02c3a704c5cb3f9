"""`emdata view`: the loopback store server (Range, CORS, nothing outside the store) and the neuroglancer
state (sources, voxel size in nm, every label layer with its class names and colours), on prepared replicas."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import emdata
from emdata.cli import app
from emdata.store.volume import open_volume
from emdata.view import StaticServer, ViewSession, neuroglancer_state, segment_properties
from emdata.view.neuroglancer import data_path


@pytest.fixture(scope="module")
def prepared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cremi A (three uint64 layers) and lucchi-pp (binary semantic mitochondria), prepared from replicas."""
    from emdata.testing import serve_replicas

    home = tmp_path_factory.mktemp("view")
    with serve_replicas(["cremi", "lucchi-pp"], home, small=True) as served:
        emdata.prepare("cremi", **{**served.options["cremi"], "volumes": ["A"]})
        emdata.prepare("lucchi-pp", **served.options["lucchi-pp"])
    return home


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as reply:
            return reply.status, reply.read(), dict(reply.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_server_ranges_cors_and_no_escape(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    (root / "a.bin").write_bytes(bytes(range(100)))
    (tmp_path / "secret.txt").write_text("outside")
    with StaticServer({"/data/": root}, documents={"/doc/info": b'{"x": 1}'}) as server:
        status, body, headers = _get(server.url + "/data/a.bin", {"Range": "bytes=10-19"})
        assert (status, body, headers["Content-Range"]) == (206, bytes(range(10, 20)), "bytes 10-19/100")
        assert headers["Access-Control-Allow-Origin"] == "*" and headers["Accept-Ranges"] == "bytes"
        assert _get(server.url + "/data/a.bin", {"Range": "bytes=-5"})[1] == bytes(range(95, 100))
        status, _, headers = _get(server.url + "/data/a.bin", {"Range": "bytes=100-"})
        assert (status, headers["Content-Range"]) == (416, "bytes */100")
        assert _get(server.url + "/data/a.bin")[:2] == (200, bytes(range(100)))
        assert _get(server.url + "/data/../secret.txt")[0] == 404
        assert _get(server.url + "/data/%2e%2e/secret.txt")[0] == 404
        assert _get(server.url + "/data/missing")[0] == 404
        assert json.loads(_get(server.url + "/doc/info")[1]) == {"x": 1}
        request = urllib.request.Request(server.url + "/data/a.bin", method="OPTIONS",
                                         headers={"Origin": "http://example.org",
                                                  "Access-Control-Request-Headers": "range"})
        with urllib.request.urlopen(request) as reply:
            assert reply.status == 204 and "Range" in reply.headers["Access-Control-Allow-Headers"]


def test_state_has_every_label_layer_with_names_colours_and_nm(prepared_home: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMDATA_HOME", str(prepared_home))
    cremi = emdata.volumes("cremi")[0]
    state = neuroglancer_state([cremi], "http://127.0.0.1:1234")
    z, y, x = cremi.voxel_size
    assert state["dimensions"] == {"x": [x / 1e9, "m"], "y": [y / 1e9, "m"], "z": [z / 1e9, "m"]}
    assert state["position"] == [cremi.shape[2] / 2, cremi.shape[1] / 2, cremi.shape[0] / 2]
    image, *segs = state["layers"]
    assert image["source"] == "zarr3://http://127.0.0.1:1234/data/cremi/A/"
    lo, hi = image["shaderControls"]["normalized"]["range"]
    assert (lo, hi) == (cremi.meta["raw"]["intensity"]["percentiles"]["0.5"],
                        cremi.meta["raw"]["intensity"]["percentiles"]["99.5"])
    assert [s["name"] for s in segs] == [f"A/{name}" for name in cremi.meta["labels"]]
    for seg, name in zip(segs, cremi.meta["labels"]):
        assert seg["source"] == [f"zarr3://http://127.0.0.1:1234/data/cremi/A/labels/{name}/",
                                 f"precomputed://http://127.0.0.1:1234/segment-properties/cremi/A/{name}"]
        ids = np.unique(cremi.label_level(name, len(cremi.meta["labels"][name]["levels"]) - 1)[...])
        assert seg["segments"] == [str(v) for v in ids if v != 0]  # instance layers: the ids present

    lucchi = next(v for v in emdata.volumes("lucchi-pp") if v.name == "train")
    (seg,) = neuroglancer_state([lucchi], "http://h")["layers"][1:]
    # the card's colour is white, which vanishes on EM: the preview sheets' colour instead
    from emdata.look.preview import label_colors

    r, g, b, _ = label_colors({1: [255, 255, 255, 255]}, [1])[0].tolist()
    assert seg["segments"] == ["1"] and seg["segmentColors"] == {"1": f"#{r:02x}{g:02x}{b:02x}"} != {"1": "#ffffff"}
    props = segment_properties(lucchi, "mitochondria")
    assert props["inline"]["ids"] == ["0", "1"]
    assert props["inline"]["properties"][0] == {"id": "label", "type": "label",
                                                "values": ["background", "mitochondria"]}


def test_session_serves_the_store_and_segment_properties(prepared_home: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMDATA_HOME", str(prepared_home))
    vol = next(v for v in emdata.volumes("lucchi-pp") if v.name == "train")
    with ViewSession([vol], bundled=False) as session:
        base = session.server.url
        root = json.loads(_get(base + data_path(vol) + "zarr.json")[1])
        assert root["attributes"]["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0][
            "scale"] == list(vol.voxel_size)
        chunk = next((vol.folder / "labels" / "mitochondria" / "0" / "c").rglob("*"))
        while chunk.is_dir():
            chunk = next(chunk.iterdir())
        rel = chunk.relative_to(vol.folder).as_posix()
        status, body, _ = _get(base + data_path(vol) + rel, {"Range": "bytes=0-3"})
        assert (status, body) == (206, chunk.read_bytes()[:4])
        info = json.loads(_get(base + "/segment-properties/lucchi-pp/train/mitochondria/info")[1])
        assert info == segment_properties(vol, "mitochondria")
        assert _get(base + data_path(vol) + "../../../dataset.json")[0] == 404
        assert session.url.startswith("https://neuroglancer-demo.appspot.com/#!")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + data_path(vol) + "zarr.json", timeout=2)  # stopped


def test_cli_view_prints_url_and_state_then_stops(prepared_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMDATA_HOME", str(prepared_home))
    result = CliRunner().invoke(app, ["view", "lucchi-pp", "--volume", "test", "--seconds", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["url"].startswith("http://127.0.0.1:") and "/v/" in doc["url"]  # neuroglancer's loopback viewer
    assert [layer["name"] for layer in doc["state"]["layers"]] == ["test", "test/mitochondria"]
    path = emdata.volumes("lucchi-pp", split="test")[0].path
    by_path = CliRunner().invoke(app, ["view", str(path), "--seconds", "0", "--json"])
    assert json.loads(by_path.output)["state"]["layers"][0]["name"] == "test"
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    text = CliRunner().invoke(app, ["view", str(path), "--seconds", "0", "--open"]).output
    assert text.startswith(f"neuroglancer: {opened[0]}\n") and "/v/" in opened[0]
    missing = CliRunner().invoke(app, ["view", "lucchi-pp", "--volume", "nope", "--seconds", "0"])
    assert missing.exit_code != 0 and "prepared: ['test', 'train']" in str(missing.exception)
    assert open_volume(path).name == "test"


def test_napari_reader_manifest_and_layers(prepared_home: Path, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    import importlib
    import tomllib

    import yaml

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["entry-points"]["napari.manifest"] == {"emdata": "emdata:napari.yaml"}
    assert "napari.yaml" in project["tool"]["setuptools"]["package-data"]["emdata"]
    manifest = yaml.safe_load((root / "src" / "emdata" / "napari.yaml").read_text(encoding="utf-8"))
    (command,) = manifest["contributions"]["commands"]
    (reader,) = manifest["contributions"]["readers"]
    assert manifest["name"] == "emdata" and reader["command"] == command["id"] and reader["accepts_directories"]
    module, name = command["python_name"].split(":")
    get_reader = getattr(importlib.import_module(module), name)

    monkeypatch.setenv("EMDATA_HOME", str(prepared_home))
    cremi = emdata.volumes("cremi")[0]
    assert get_reader(str(tmp_path)) is None  # not a volume: napari asks the next reader
    layers = get_reader(str(cremi.path))(str(cremi.path))
    assert [(kw["name"], kind) for _, kw, kind in layers] == [
        ("A", "image"), *((f"A/{n}", "labels") for n in cremi.meta["labels"])]
    for data, kwargs, _ in layers:
        assert kwargs["scale"] == cremi.voxel_size
        first = data[0] if kwargs["multiscale"] else data
        assert tuple(first.shape) == cremi.shape
    np.testing.assert_array_equal(np.asarray(layers[1][0][...] if not layers[1][1]["multiscale"]
                                             else layers[1][0][0][...]), cremi.labels["neuron_ids"][...])
    lucchi = next(v for v in emdata.volumes("lucchi-pp") if v.name == "train")
    (_, seg, kind) = get_reader(str(lucchi.path))(str(lucchi.path))[1]
    assert kind == "labels" and seg["features"] == {"index": [0, 1], "class": ["background", "mitochondria"]}
    from emdata.look.preview import label_colors

    assert seg["colormap"][1] == [v / 255 for v in label_colors({1: [255, 255, 255, 255]}, [1])[0].tolist()]
    assert seg["colormap"][0][3] == seg["colormap"][None][3] == 0.0  # background and unlisted ids: transparent


def test_large_instance_layers_open_without_a_scan(prepared_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emdata.view import neuroglancer as ng

    monkeypatch.setenv("EMDATA_HOME", str(prepared_home))
    cremi = emdata.volumes("cremi")[0]
    monkeypatch.setattr(ng, "MAX_SCANNED_VOXELS", int(np.prod(cremi.shape)) - 1)
    segs = neuroglancer_state([cremi], "http://h")["layers"][1:]
    assert [s["segments"] for s in segs] == [[], [], []]
    lucchi = emdata.volumes("lucchi-pp", split="train")[0]
    assert neuroglancer_state([lucchi], "http://h")["layers"][1]["segments"] == ["1"]  # semantic: the classes


def test_label_predictions_are_layers_too(tmp_path: Path) -> None:
    from emdata.store.predictions import add_prediction
    from emdata.store.writer import LabelLayerData, write_volume
    from emdata.view.napari import read_volume

    truth = np.zeros((4, 32, 32), "u1")
    truth[:, 8:24, 8:24] = 1
    path = write_volume(tmp_path / "v.ome.zarr", np.full((4, 32, 32), 90, "u1"), (30, 6, 6),
                        meta={"dataset": "demo", "volume": "v", "split": "test"},
                        labels=[LabelLayerData("mito", truth, "semantic", [{"value": 0, "name": "background"},
                                                                           {"value": 1, "name": "mitochondria"}])])
    guess = np.zeros((4, 32, 32), "u1")
    guess[:, 10:20, 10:20] = 1
    add_prediction(path, "guess", guess, provenance={"model": "by hand"},
                   classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "mitochondria"}])
    add_prediction(path, "ids", guess.astype("u4") * 7, provenance={"model": "by hand"})
    vol = open_volume(path)
    state = neuroglancer_state([vol], "http://h")
    assert [layer["name"] for layer in state["layers"]] == ["v", "v/mito", "v/guess (prediction)", "v/ids (prediction)"]
    guess_layer, ids_layer = state["layers"][2:]
    assert guess_layer["source"][0] == "zarr3://http://h/data/demo/v/labels/guess/"
    assert guess_layer["segments"] == ["1"] and ids_layer["segments"] == ["7"]  # classes; ids found in the data
    assert segment_properties(vol, "guess")["inline"]["properties"][0]["values"] == ["background", "mitochondria"]
    with ViewSession([vol], bundled=False) as session:
        info = json.loads(_get(session.server.url + "/segment-properties/demo/v/guess/info")[1])
        assert info == segment_properties(vol, "guess")
        assert _get(session.server.url + "/data/demo/v/labels/guess/zarr.json")[0] == 200
    napari_layers = read_volume(str(path))
    assert [kw["name"] for _, kw, _ in napari_layers] == ["v", "v/mito", "v/guess (prediction)", "v/ids (prediction)"]
    np.testing.assert_array_equal(np.asarray(napari_layers[2][0][...]), guess)
