"""TEM-NeutroStruct 4 → 7 reclassification (hand-computed example), COCO ⇄ CVAT, rendering, CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openpyxl import Workbook, load_workbook
from PIL import Image
from typer.testing import CliRunner

from emdata.datasets.tem_neutrostruct.annotations import (
    AnnotationFormatError,
    Ellipse,
    coco_to_cvat,
    cvat_to_coco,
    cvat_to_string,
    read_cvat,
    relabel_cvat,
    render_ellipses,
)
from emdata.datasets.tem_neutrostruct.cli import app
from emdata.datasets.tem_neutrostruct.reclassify import (
    CLASSES_7,
    PALETTE_7,
    STAT_COLUMNS,
    ReclassifyError,
    read_scale_sheet,
    reclassify,
)

CATS_4 = [{"id": 1, "name": "Primary granules", "supercategory": "granule/vesicle"},
          {"id": 2, "name": "Secondary granules", "supercategory": "granule/vesicle"},
          {"id": 3, "name": "Empty vesicles", "supercategory": "granule/vesicle"},
          {"id": 4, "name": "Emptying vesicles", "supercategory": "granule/vesicle"}]


def _ann(i: int, image: int, cat: int, bbox: list[float]) -> dict[str, Any]:
    return {"id": i, "image_id": image, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}


def example() -> tuple[dict[str, Any], dict[str, float]]:
    """The hand-computed example: three images, 14 annotations, a scale sheet missing b.png."""
    images = [{"id": 10, "file_name": "a.png", "width": 200, "height": 200},
              {"id": 20, "file_name": "b.png", "width": 400, "height": 400},
              {"id": 30, "file_name": "c.png", "width": 420, "height": 420}]
    anns = [
        _ann(10, 20, 2, [0, 0, 180, 195]),      # b.png listed first: order must survive
        _ann(1, 10, 1, [0, 0, 40, 60]),
        _ann(2, 10, 1, [10, 10, 100, 100]),
        _ann(3, 10, 1, [5, 5, 150, 150]),
        _ann(4, 10, 2, [0, 0, 50, 50]),
        _ann(5, 10, 2, [0, 0, 125, 125]),
        _ann(6, 10, 3, [0, 0, 90, 90]),
        _ann(7, 10, 3, [0, 0, 100, 125]),
        _ann(8, 10, 4, [0, 0, 10, 10]),
        _ann(9, 10, 3, [1.5, 2.5, 93.5, 94]),
        _ann(11, 20, 2, [0, 0, 375, 375]),
        _ann(12, 20, 3, [0, 0, 300, 300]),
        _ann(13, 30, 3, [0, 0, 400, 400]),
        _ann(14, 30, 4, [8, 8, 20, 20]),
    ]
    return {"images": images, "annotations": anns, "categories": CATS_4}, {"a.png": 100.0, "c.png": 200.0}


# Hand computation, d = (w + h) / (2 · px/µm):
# a.png, 100 px/µm (sheet):
#   PG: #1 (40+60)/200 = 0.5, #2 200/200 = 1.0, #3 300/200 = 1.5      → PG mean 3.0/3 = 1.0
#   SG: #4 100/200 = 0.5, #5 250/200 = 1.25                            → SG mean 1.75/2 = 0.875
#   pooled [0.5, 1.0, 1.5, 0.5, 1.25] → sorted [0.5, 0.5, 1.0, 1.25, 1.5]: median 1.0, mean 4.75/5 = 0.95
#   threshold (mean of class means) = (1.0 + 0.875) / 2 = 0.9375
#   #1 0.5 ≤ 1 → 1 Specific; #2 1.0 ≤ 1 (tie) → 1 Specific; #3 1.5 > 1 → 2 NS primary
#   #4 0.5 ≤ 1 → 3 NS tertiary; #5 1.25 > 1 → 4 NS secondary
#   empty: #6 180/200 = 0.9 ≤ 0.9375 → 5 Empty; #7 225/200 = 1.125 > 0.9375 → 7 Vacuole;
#          #9 187.5/200 = 0.9375, not > 0.9375 (tie) → 5 Empty;  emptying #8 → 6
# b.png, not in the sheet → 375 px/µm:
#   SG: #10 375/750 = 0.5, #11 750/750 = 1.0 → median 0.75, mean 0.75; no PG → threshold = SG mean 0.75
#   #10 0.5 ≤ 0.75 → 3; #11 1.0 > 0.75 → 4; empty #12 600/750 = 0.8 > 0.75 → 7 Vacuole
# c.png, 200 px/µm: no granules → no median, no threshold → empty #13 (800/400 = 2.0) stays 5; #14 → 6
EXPECTED_IDS = {10: 3, 1: 1, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 7, 8: 6, 9: 5, 11: 4, 12: 7, 13: 5, 14: 6}
RULE = "mean-of-class-means"
EXPECTED_STATS = [
    {"image_name": "a.png", "image_id": 10, "px_per_um": 100.0, "px_per_um_source": "sheet", "n_annotations": 9,
     "n_granules": 5, "mean_diameter": 0.95, "median_diameter": 1.0, "mean_diameter_PG": 1.0,
     "mean_diameter_SG": 0.875, "average_diameter_SG_PG": 0.9375, "empty_threshold_rule": RULE,
     "n_specific_granules": 2, "n_non_specific_primary_granules": 1, "n_non_specific_tertiary_granules": 1,
     "n_non_specific_secondary_granules": 1, "n_empty_vesicles": 2, "n_emptying_vesicles": 1, "n_vacuoles": 1},
    {"image_name": "b.png", "image_id": 20, "px_per_um": 375.0, "px_per_um_source": "default", "n_annotations": 3,
     "n_granules": 2, "mean_diameter": 0.75, "median_diameter": 0.75, "mean_diameter_PG": None,
     "mean_diameter_SG": 0.75, "average_diameter_SG_PG": 0.75, "empty_threshold_rule": RULE,
     "n_specific_granules": 0, "n_non_specific_primary_granules": 0, "n_non_specific_tertiary_granules": 1,
     "n_non_specific_secondary_granules": 1, "n_empty_vesicles": 0, "n_emptying_vesicles": 0, "n_vacuoles": 1},
    {"image_name": "c.png", "image_id": 30, "px_per_um": 200.0, "px_per_um_source": "sheet", "n_annotations": 2,
     "n_granules": 0, "mean_diameter": None, "median_diameter": None, "mean_diameter_PG": None,
     "mean_diameter_SG": None, "average_diameter_SG_PG": None, "empty_threshold_rule": RULE,
     "n_specific_granules": 0, "n_non_specific_primary_granules": 0, "n_non_specific_tertiary_granules": 0,
     "n_non_specific_secondary_granules": 0, "n_empty_vesicles": 1, "n_emptying_vesicles": 1, "n_vacuoles": 0},
]


def test_hand_computed_example_is_reproduced_exactly() -> None:
    coco, scale = example()
    before = json.dumps(coco)
    new, stats = reclassify(coco, scale)
    assert json.dumps(coco) == before, "the input is not modified"
    assert [a["id"] for a in new["annotations"]] == [a["id"] for a in coco["annotations"]]
    assert {a["id"]: a["category_id"] for a in new["annotations"]} == EXPECTED_IDS
    assert [a["bbox"] for a in new["annotations"]] == [a["bbox"] for a in coco["annotations"]]
    assert new["categories"] == [{"id": i, "name": n, "supercategory": "granule/vesicle"} for i, n in
                                 CLASSES_7.items()]
    assert new["images"] == coco["images"]
    assert stats == EXPECTED_STATS
    assert list(stats[0]) == list(STAT_COLUMNS)


def test_threshold_rules_and_parameters() -> None:
    coco, scale = example()
    ids = lambda new: [a["category_id"] for a in new["annotations"] if a["image_id"] == 10]  # noqa: E731
    # pooled-median: threshold 1.0 → #6 0.9 empty, #7 1.125 vacuole, #9 0.9375 empty
    new, stats = reclassify(coco, scale, empty_threshold="pooled-median")
    assert ids(new)[5:] == [5, 7, 6, 5] and stats[0]["average_diameter_SG_PG"] == 1.0
    # a fixed 0.5 µm: every empty structure of a.png is a vacuole, and c.png's too (2.0 > 0.5)
    new, stats = reclassify(coco, scale, empty_threshold=0.5)
    assert ids(new)[5:] == [7, 7, 6, 7] and new["annotations"][12]["category_id"] == 7
    assert stats[2]["empty_threshold_rule"] == "fixed 0.5 um"
    # a per-image table (the scripts' average_diameter_SG_PG column)
    new, _ = reclassify(coco, scale, empty_threshold={"a.png": 0.95, "b.png": 0.9, "c.png": 3.0})
    assert ids(new)[5:] == [5, 7, 6, 5] and new["annotations"][11]["category_id"] == 5
    with pytest.raises(ReclassifyError, match=r"image 'c.png' has empty structures but no entry"):
        reclassify(coco, scale, empty_threshold={"a.png": 0.95, "b.png": 0.9})
    # the default px/µm for images the sheet lacks: b.png at 750 px/µm → #10 0.25, #11 0.5, median 0.375
    _, stats = reclassify(coco, scale, default_px_per_um=750.0)
    assert stats[1]["median_diameter"] == 0.375 and stats[1]["px_per_um"] == 750.0
    # the sheet may name images by base name
    coco["images"][0]["file_name"] = "train/images/a.png"
    assert reclassify(coco, scale)[1][0]["px_per_um_source"] == "sheet"
    # a different 4-class id for Emptying vesicles
    for ann in coco["annotations"]:
        ann["category_id"] = 9 if ann["category_id"] == 4 else ann["category_id"]
    coco["categories"] = [*CATS_4[:3], {"id": 9, "name": "Emptying vesicles"}]
    assert {a["id"]: a["category_id"] for a in reclassify(coco, scale, emptying_id=9)[0]["annotations"]} == \
        EXPECTED_IDS
    with pytest.raises(ReclassifyError, match=r"not a rule; choose from"):
        reclassify(coco, scale, empty_threshold="average", emptying_id=9)
    with pytest.raises(ReclassifyError, match=r"category 9 is named 'Emptying vesicles', but the 4-class scheme "
                                              r"uses ids \[1, 2, 3, 4\]"):
        reclassify(coco, scale)


def test_wrong_schemes_are_refused_clearly() -> None:
    coco, scale = example()
    coco["annotations"][1]["category_id"] = 0
    with pytest.raises(ReclassifyError, match=r"annotation 1 \(image 10\) has category_id 0.*shifted by \+1"):
        reclassify(coco, scale, where="ann.json")
    coco, _ = example()
    coco["categories"] = [{"id": 1, "name": "Specific granules"}]
    with pytest.raises(ReclassifyError, match=r"ann.json: category 1 'Specific granules' is a 7-class name"):
        reclassify(coco, scale, where="ann.json")
    coco, _ = example()
    coco["categories"] = [{"id": 1, "name": "Secondary granules"}, {"id": 2, "name": "Primary granules"}]
    with pytest.raises(ReclassifyError, match=r"category 1 is named 'Secondary granules'"):
        reclassify(coco, scale)
    coco, _ = example()
    coco["annotations"][0]["image_id"] = 99
    with pytest.raises(AnnotationFormatError, match=r"annotations\[0\] \(id 10\): image_id 99 is not among"):
        reclassify(coco, scale)


def test_coco_cvat_round_trips_exactly() -> None:
    coco, _ = example()
    xml = cvat_to_string(coco_to_cvat(coco))
    root = ET.fromstring(xml)
    assert root.tag == "annotations" and root.find("meta/task/labels/label/name").text == "Primary granules"
    ellipse = root.find("image[@name='a.png']/ellipse[9]")  # #9: bbox [1.5, 2.5, 93.5, 94]
    assert dict(ellipse.attrib) == {"label": "Empty vesicles", "occluded": "0", "cx": "48.25", "cy": "49.50",
                                    "rx": "46.75", "ry": "47.00", "z_order": "0"}
    back = cvat_to_coco(read_cvat(xml.encode()), coco["categories"])
    assert back["images"] == coco["images"] and back["categories"] == coco["categories"]
    by_image = lambda doc: [(a["image_id"], a["category_id"], a["bbox"])  # noqa: E731
                            for im in doc["images"] for a in doc["annotations"] if a["image_id"] == im["id"]]
    assert by_image(back) == by_image(coco)
    assert cvat_to_string(coco_to_cvat(back)) == xml
    # CVAT → COCO → CVAT keeps any 2-decimal string
    odd = ('<annotations><meta><task><labels><label><name>Vacuoles</name></label></labels></task></meta>'
           '<image id="3" name="x.jpg" width="50" height="40"><ellipse label="Vacuoles" cx="10.33" cy="7.01" '
           'rx="0.07" ry="2.50" occluded="0" z_order="0"/><box label="Vacuoles" xtl="1" ytl="1" xbr="2" ybr="2"/>'
           '</image></annotations>')
    doc = read_cvat(odd.encode())
    assert doc.images[0].other_shapes == 1
    again = cvat_to_coco(doc)
    assert again["annotations"][0]["bbox"] == [10.26, 4.51, 0.14, 5.0]
    assert 'cx="10.33" cy="7.01" rx="0.07" ry="2.50"' in cvat_to_string(coco_to_cvat(again))


def test_cvat_parsing_is_safe_and_errors_name_the_item(tmp_path: Path) -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx"><!ENTITY y "&x;&x;&x;&x;">]>'
            b'<annotations>&y;</annotations>')
    with pytest.raises(AnnotationFormatError, match=r"refused unsafe XML"):
        read_cvat(bomb)
    bad = tmp_path / "bad.xml"
    bad.write_text('<annotations><image id="0" name="a.png" width="5" height="5">'
                   '<ellipse label="Vacuoles" cx="x1" cy="2" rx="1" ry="1"/></image></annotations>')
    with pytest.raises(AnnotationFormatError, match=r"bad.xml: <image> #0 \('a.png'\) ellipse #0: attribute "
                                                    r"cx='x1' is not a number"):
        read_cvat(bad)
    with pytest.raises(AnnotationFormatError, match=r"root element is <html>"):
        read_cvat(b"<html/>")


def test_cvat_labels_are_updated_by_geometry() -> None:
    coco, scale = example()
    new, _ = reclassify(coco, scale)
    root = coco_to_cvat(coco)
    image_a = root.find("image[@name='a.png']")
    first = image_a[0]
    image_a.remove(first)
    image_a.insert(2, first)  # order #2, #3, #1, #4, …: matched by geometry, not position
    assert [e.get("cx") for e in image_a][:3] == ["60.00", "80.00", "20.00"]
    n = relabel_cvat(root, coco, new, colours={CLASSES_7[i]: c for i, c in PALETTE_7.items()})
    assert n == 14
    assert [e.get("label") for e in root.find("image[@name='b.png']")] == [
        "Non-specific tertiary granules", "Non-specific secondary granules", "Vacuoles"]
    assert [e.get("label") for e in image_a][:4] == ["Specific granules", "Non-specific primary granules",
                                                     "Specific granules", "Non-specific tertiary granules"]
    assert [n.text for n in root.iterfind("meta/task/labels/label/name")] == list(CLASSES_7.values())
    assert root.find("meta/task/labels/label/color").text == "#e69f00"
    root = coco_to_cvat(coco)
    root.find("image[@name='c.png']/ellipse").set("cx", "300.00")
    with pytest.raises(AnnotationFormatError, match=r"image 'c.png' ellipse #0 \(label 'Empty vesicles'\), "
                                                    r"cx=300.00 .*no annotation"):
        relabel_cvat(root, coco, new, where="in.xml")


def test_rendering_rule() -> None:
    # two overlapping ellipses: the later one is on top
    inst, sem = render_ellipses([Ellipse.from_bbox([0, 0, 6, 4]), Ellipse.from_bbox([3, 0, 4, 4])], [1, 7], (4, 8))
    assert inst.dtype == np.uint32 and sem.dtype == np.uint8
    assert inst.tolist() == [[0, 1, 1, 1, 2, 2, 0, 0],
                             [1, 1, 1, 2, 2, 2, 2, 0],
                             [1, 1, 1, 2, 2, 2, 2, 0],
                             [0, 1, 1, 1, 2, 2, 0, 0]]
    assert sem[1].tolist() == [1, 1, 1, 7, 7, 7, 7, 0]
    # an ellipse thinner than a pixel centre marks the pixel that holds its centre; clipping at the border
    inst, _ = render_ellipses([Ellipse.from_bbox([2.1, 1.1, 0.2, 0.2]), Ellipse.from_bbox([6, 2, 6, 6])], [3, 3],
                              (4, 8))
    assert inst[1, 2] == 1 and int((inst == 1).sum()) == 1 and inst[3, 7] == 2 and int((inst == 2).sum()) == 3
    # a CVAT rotation of 90° swaps the axes
    flat, _ = render_ellipses([Ellipse(5, 5, 4, 1)], [1], (10, 10))
    turned, _ = render_ellipses([Ellipse(5, 5, 4, 1, rotation=90)], [1], (10, 10))
    assert np.array_equal(turned, flat.T)


def test_scale_sheet_reader(tmp_path: Path) -> None:
    wb = Workbook()
    ws = wb.active
    ws.append(["", "image_name", "Pixles per microm", "average_diameter_SG_PG"])
    ws.append([0, "a.png", 100, 0.9])
    ws.append([None, None, None, None])
    ws.append([1, "b.png", 375.5, None])
    wb.save(tmp_path / "s.xlsx")
    table = read_scale_sheet(tmp_path / "s.xlsx")
    assert table.px_per_um == {"a.png": 100.0, "b.png": 375.5} and table.average_diameter_sg_pg == {"a.png": 0.9}
    (tmp_path / "s.csv").write_text("image_name,Pixels per microm\nc.png,250\n")
    assert read_scale_sheet(tmp_path / "s.csv").px_per_um == {"c.png": 250.0}
    (tmp_path / "bad.csv").write_text("image_name,um per pixel\nc.png,0.004\n")
    with pytest.raises(ReclassifyError, match=r"bad.csv: no column 'Pixles per microm' .*\['image_name', "
                                              r"'um per pixel'\]"):
        read_scale_sheet(tmp_path / "bad.csv")
    (tmp_path / "neg.csv").write_text("image_name,Pixles per microm\nc.png,-3\n")
    with pytest.raises(ReclassifyError, match=r"neg.csv row 2 \('c.png'\): Pixles per microm = '-3' is not a "
                                              r"positive number"):
        read_scale_sheet(tmp_path / "neg.csv")
    (tmp_path / "dup.csv").write_text("image_name,Pixles per microm\nc.png,3\nc.png,4\n")
    with pytest.raises(ReclassifyError, match=r"row 3 .*differs from 3.0"):
        read_scale_sheet(tmp_path / "dup.csv")


def _files(tmp_path: Path) -> dict[str, Path]:
    coco, scale = example()
    coco_path = tmp_path / "annotations_4classes.json"
    coco_path.write_text(json.dumps(coco))
    wb = Workbook()
    wb.active.append(["image_name", "Pixles per microm"])
    for name, value in scale.items():
        wb.active.append([name, value])
    wb.save(tmp_path / "train_images_statistics.xlsx")
    cvat = tmp_path / "annotations_4classes.xml"
    cvat.write_text(cvat_to_string(coco_to_cvat(coco)))
    images = tmp_path / "images"
    images.mkdir()
    for im in coco["images"][:2]:  # c.png is missing: its overlay is skipped and reported
        Image.fromarray(np.full((im["height"], im["width"]), 100, np.uint8)).save(images / im["file_name"])
    return {"coco": coco_path, "scale": tmp_path / "train_images_statistics.xlsx", "cvat": cvat, "images": images}


def test_cli_writes_every_output(tmp_path: Path) -> None:
    f = _files(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["reclassify", str(f["coco"]), "--scale", str(f["scale"]), "--out", str(out),
                                      "--cvat", str(f["cvat"]), "--images", str(f["images"]), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 3 and summary["annotations"] == 14
    assert summary["counts"] == {"Specific granules": 2, "Non-specific primary granules": 1,
                                 "Non-specific tertiary granules": 2, "Non-specific secondary granules": 2,
                                 "Empty vesicles": 3, "Emptying vesicles": 2, "Vacuoles": 2}
    assert summary["px_per_um_defaulted"] == ["b.png"] and summary["overlays_missing"] == ["c.png"]
    assert summary["parameters"]["empty_threshold"] == "mean-of-class-means"
    new = json.loads((out / "annotations_7classes.json").read_text())
    assert {a["id"]: a["category_id"] for a in new["annotations"]} == EXPECTED_IDS
    cvat = read_cvat(out / "annotations_7classes.xml")
    assert cvat.labels == list(CLASSES_7.values())
    assert [e.label for e in cvat.images[1].ellipses] == ["Non-specific tertiary granules",
                                                          "Non-specific secondary granules", "Vacuoles"]
    with open(out / "statistics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["average_diameter_SG_PG"] == "0.9375" and rows[0]["mean_diameter"] == "0.95"
    assert rows[2]["median_diameter"] == "" and rows[1]["px_per_um_source"] == "default"
    sheet = load_workbook(out / "statistics.xlsx").active
    values = list(sheet.iter_rows(values_only=True))
    assert list(values[0]) == list(STAT_COLUMNS)
    assert [dict(zip(values[0], v)) for v in values[1:]] == EXPECTED_STATS
    mask = np.asarray(Image.open(out / "masks" / "a.png"))
    assert mask.shape == (200, 200, 3)
    assert tuple(mask[100, 100]) == PALETTE_7[4]  # under #3 (class 2) and #5 (class 4): the later one shows
    assert tuple(mask[49, 48]) == PALETTE_7[5]  # #9 (Empty vesicles), drawn last, over #1–#7
    assert tuple(mask[199, 199]) == (0, 0, 0)
    lay = np.asarray(Image.open(out / "overlays" / "b.png"))
    assert lay.shape == (400, 400, 3) and tuple(lay[399, 399]) == (100, 100, 100)
    assert tuple(lay[200, 200]) == tuple(round(0.55 * 100 + 0.45 * c) for c in PALETTE_7[7])
    assert not (out / "overlays" / "c.png").exists() and (out / "masks" / "c.png").is_file()
    plain = CliRunner().invoke(app, ["reclassify", str(f["coco"]), "--scale", str(f["scale"]), "--out", str(out),
                                     "--empty-threshold", "1.0"])
    assert plain.exit_code == 0 and "Vacuoles" in plain.stdout and "fixed 1 um" in plain.stdout


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    f = _files(tmp_path)
    (tmp_path / "s.csv").write_text("name,px\n")
    result = CliRunner().invoke(app, ["reclassify", str(f["coco"]), "--scale", str(tmp_path / "s.csv"), "--out",
                                      str(tmp_path / "o")])
    assert result.exit_code != 0 and "no header row with 'image_name'" in str(result.exception)
    result = CliRunner().invoke(app, ["reclassify", str(f["coco"]), "--scale", str(f["scale"]), "--out",
                                      str(tmp_path / "o"), "--empty-threshold", "sheet"])
    assert "needs a column 'average_diameter_SG_PG'" in str(result.exception)
    result = CliRunner().invoke(app, ["reclassify", str(f["coco"]), "--scale", str(f["scale"]), "--out",
                                      str(tmp_path / "o"), "--images", str(tmp_path)])
    assert "none of the 3 images" in str(result.exception)


def test_cli_module_imports_only_typer() -> None:
    code = ("import sys, emdata.datasets.tem_neutrostruct.cli as c; heavy = ('openpyxl', 'defusedxml', 'PIL', "
            "'emdata.datasets.tem_neutrostruct.reclassify'); print([m for m in heavy if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failure_midway_leaves_no_partial_output(tmp_path: Path) -> None:
    f = _files(tmp_path)
    args = ["reclassify", str(f["coco"]), "--scale", str(f["scale"]), "--cvat", str(f["cvat"]),
            "--images", str(f["images"])]
    Image.fromarray(np.zeros((7, 7), np.uint8)).save(f["images"] / "b.png")  # the 2nd image: a.png's outputs exist
    fresh = tmp_path / "fresh"
    result = CliRunner().invoke(app, [*args, "--out", str(fresh)])
    assert isinstance(result.exception, AnnotationFormatError)
    assert "b.png: image is 7×7 (W×H) but the COCO file says width 400 height 400" in str(result.exception)
    assert not fresh.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left

    Image.fromarray(np.full((400, 400), 100, np.uint8)).save(f["images"] / "b.png")
    done = tmp_path / "done"
    assert CliRunner().invoke(app, [*args, "--out", str(done)]).exit_code == 0
    before = _tree(done)
    assert {"annotations_7classes.json", "statistics.xlsx", "masks/a.png", "overlays/b.png"} <= set(before)
    Image.fromarray(np.zeros((7, 7), np.uint8)).save(f["images"] / "b.png")
    result = CliRunner().invoke(app, [*args, "--out", str(done), "--empty-threshold", "1.0"])
    assert isinstance(result.exception, AnnotationFormatError)
    assert _tree(done) == before  # the earlier run's outputs, untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
