"""examples/: the quick-start notebook (catalog, prepare from a replica, look, train, predict and evaluate)
runs top to bottom in a fresh kernel (nbclient), offline, and its plain-script twin holds the same cells."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def script_cells(text: str) -> list[tuple[str, str]]:
    """The ``# %%`` cells of a percent-format script: (kind, source); markdown cells lose their ``# ``."""
    cells = []
    for block in re.split(r"^# %%", text, flags=re.MULTILINE)[1:]:
        header, _, body = block.partition("\n")
        if header.strip() == "[markdown]":
            cells.append(("markdown", "\n".join(line.removeprefix("#").removeprefix(" ")
                                                for line in body.strip().splitlines())))
        else:
            cells.append(("code", body.strip()))
    return cells


def test_notebook_and_script_hold_the_same_cells() -> None:
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    nbformat.validate(notebook)
    cells = [(c.cell_type, c.source.strip()) for c in notebook.cells]
    assert cells == script_cells((EXAMPLES / "quickstart.py").read_text(encoding="utf-8"))
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), "commit it without outputs"


def test_quickstart_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMDATA_QUICKSTART_HOME", str(tmp_path / "home"))
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",  # ipykernel's kernel: this interpreter
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "lucchi-pp/train (split train)" in text and "mitochondria" in text
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the preview sheet
    losses = re.search(r"\{0: 'background', 1: 'mitochondria'\} \[([^\]]+)\]", text)
    assert losses is not None and len(losses.group(1).split(",")) == 4
    assert (tmp_path / "home" / "prepared" / "lucchi-pp" / "train.ome.zarr" / "zarr.json").is_file()
    scores = dict(re.findall(r"^(dice|iou) = ([0-9.e-]+) \(", text, flags=re.MULTILINE))
    assert set(scores) == {"dice", "iou"} and all(0 <= float(v) <= 1 for v in scores.values())
    assert "'test/quickstart (prediction)'" in text  # the prediction is a layer of the volume now
