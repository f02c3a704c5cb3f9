"""``emdata neutrostruct``: TEM-NeutroStruct tools (a dataset verb: ``VERB``, ``HELP`` and the
typer ``app``, found by :func:`emdata.datasets.dataset_verbs` and loaded when the verb runs).

Only typer, pathlib and typing are imported at module level; the work is imported when a
command runs. Errors are raised as exceptions, which the
``emdata`` entry point prints as one line.

Example:
    $ emdata neutrostruct reclassify annotations_4classes.json --scale train_images_statistics.xlsx \\
          --out out/ --cvat annotations_4classes.xml --images train/images
    $ emdata neutrostruct reclassify annotations_4classes.json --scale sheet.xlsx --out out/ --json
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

VERB = "neutrostruct"
HELP = "TEM-NeutroStruct tools (4→7 class reclassification)."

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="TEM-NeutroStruct tools: the 4 → 7 class reclassification.")


@app.callback()
def _group() -> None:
    """TEM-NeutroStruct tools: the 4 → 7 class reclassification."""


def _threshold(text: str) -> str | float:
    try:
        return float(text)
    except ValueError:
        return text


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    params = summary["parameters"]
    table = Table(title=f"{summary['input']}: {summary['images']} image(s), {summary['annotations']} annotation(s) "
                        f"→ 7 classes")
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("annotations", justify="right")
    for i, (name, n) in enumerate(summary["counts"].items(), start=1):
        table.add_row(str(i), name, str(n))
    con.print(table)
    con.print(f"empty-structure threshold: {params['empty_threshold']}   default px/µm: "
              f"{params['default_px_per_um']:g}   emptying vesicles 4-class id: {params['emptying_id']}")
    if summary["px_per_um_defaulted"]:
        con.print(f"[yellow]{len(summary['px_per_um_defaulted'])} image(s) not in the scale sheet used "
                  f"{params['default_px_per_um']:g} px/µm[/yellow]: {', '.join(summary['px_per_um_defaulted'][:5])}")
    if summary["overlays_missing"]:
        con.print(f"[yellow]no image file for {len(summary['overlays_missing'])} overlay(s)[/yellow]: "
                  f"{', '.join(summary['overlays_missing'][:5])}")
    for key, value in summary["outputs"].items():
        con.print(f"{key}: {value}", markup=False)


@app.command()
def reclassify(
        coco: Annotated[Path, typer.Argument(help="4-class COCO JSON (annotations_4classes.json).")],
        scale: Annotated[Path, typer.Option(help="Scale sheet (.xlsx or .csv): image_name, 'Pixles per microm'.")],
        out: Annotated[Path, typer.Option(help="Output folder.")],
        cvat: Annotated[Path | None, typer.Option(help="4-class CVAT XML to update to 7 classes.")] = None,
        images: Annotated[Path | None, typer.Option(help="Folder of the images, for overlays.")] = None,
        default_px_per_um: Annotated[float, typer.Option(help="Pixels per µm for images not in the sheet.")] = 375.0,
        empty_threshold: Annotated[str, typer.Option(
            help="Vacuole threshold per image: mean-of-class-means (default), pooled-mean, pooled-median, sheet "
                 "(column average_diameter_SG_PG) or a number in µm.")] = "mean-of-class-means",
        emptying_id: Annotated[int, typer.Option(help="4-class id of Emptying vesicles (inferred 4).")] = 4,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
        = False) -> None:
    """Reclassify 4-class TEM-NeutroStruct annotations into the 7 classes.

    Writes into --out: annotations_7classes.json, annotations_7classes.xml (with --cvat), statistics.csv, statistics.xlsx, masks/*.png, overlays/*.png (with --images).
    """  # noqa: E501
    import json
    import sys

    from emdata.datasets.tem_neutrostruct.reclassify import reclassify_files

    summary = reclassify_files(coco, scale, out, cvat_path=cvat, images_dir=images,
                               default_px_per_um=default_px_per_um, empty_threshold=_threshold(empty_threshold),
                               emptying_id=emptying_id)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        return
    _print_summary(summary)
