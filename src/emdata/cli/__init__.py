"""``emdata <verb>``: a thin command line over the public API.

Errors print one line on stderr and exit non-zero (``--debug`` shows the traceback);
``--json`` prints exactly one JSON document on stdout and nothing else there.

Example:
    >>> from typer.testing import CliRunner
    >>> CliRunner().invoke(app, ["--version"]).output.startswith("emdata ")
    True
    >>> from emdata.catalog import dataset_ids
    >>> first = dataset_ids()[0]
    >>> json.loads(CliRunner().invoke(app, ["cite", first, "--json"]).output)["dataset"] == first
    True
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from emdata import config


class _VerbGroup(TyperGroup):
    """The root command group, plus the verbs datasets declare (imported only when one runs or help lists them)."""

    def list_commands(self, ctx: Any) -> list[str]:
        from emdata.datasets import dataset_verbs

        return [*super().list_commands(ctx), *(name for name in dataset_verbs() if name not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        found = super().get_command(ctx, cmd_name)
        if found is not None:
            return found
        from emdata.datasets import dataset_verbs, load_verb

        verb = dataset_verbs().get(cmd_name)
        if verb is None:
            return None
        command = typer.main.get_command(load_verb(cmd_name).app)
        command.name, command.help, command.short_help = cmd_name, verb.help, verb.help
        return command


app = typer.Typer(cls=_VerbGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="emdata: volume-EM segmentation datasets, from a name to PyTorch batches.")
_state = {"debug": False}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]


def _console() -> Any:
    from rich.console import Console

    return Console()


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _fmt_voxel(nm: list[float] | tuple[float, ...] | None, verified: bool = True) -> str:
    if not nm:
        return "unknown"
    text = "×".join(f"{v:g}" for v in nm)
    return text if verified else text + " (unverified)"


def _print_version(value: bool) -> None:
    if value:
        from emdata import __version__

        sys.stdout.write(f"emdata {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(ctx: typer.Context,
          debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
          quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
          version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print the emdata version and exit.")] = False) -> None:
    _state["debug"] = debug
    # The environment is read once; the command runs under these settings (restored on exit).
    ctx.with_resource(config.using(config.Settings.from_env(), **({"quiet": True} if quiet else {})))


@app.command("list")
def list_cmd(species: Annotated[str | None, typer.Option(help="Filter by species (substring).")] = None,
             microscopy: Annotated[str | None, typer.Option(help="Filter by microscopy (substring).")] = None,
             as_json: JsonOpt = False) -> None:
    """List the datasets in the catalog."""
    from emdata.catalog import list_cards

    cards = list_cards(species=species, microscopy=microscopy)
    if as_json:
        _print_json([c.summary() for c in cards])
        return
    from rich.table import Table

    table = Table(title=f"{len(cards)} datasets (voxel size z×y×x nm)")
    for col in ("id", "species", "tissue", "microscopy", "voxel nm", "subsets"):
        table.add_column(col, overflow="fold")
    for c in cards:
        table.add_row(c.id, c.species, c.tissue, c.microscopy, _fmt_voxel(c.voxel_size.nm, c.voxel_size.verified),
                      ", ".join(s.id for s in c.subsets))
    _console().print(table)


@app.command()
def info(dataset: Annotated[str, typer.Argument(help="Dataset id.")], as_json: JsonOpt = False) -> None:
    """Show everything the catalog knows about one dataset."""
    import emdata
    from emdata.catalog import get_card

    card = get_card(dataset)
    doc = emdata.info(dataset)
    if as_json:
        _print_json(doc)
        return
    con = _console()
    con.print(f"[bold]{card.id}[/bold] — {card.title}")
    con.print(f"species: {card.species}   tissue: {card.tissue}   microscopy: {card.microscopy}")
    con.print(f"voxel size (z, y, x): {_fmt_voxel(card.voxel_size.nm, card.voxel_size.verified)}"
              f"  [dim]{card.voxel_size.source}[/dim]")
    licence_source = f" ({card.license_url})" if card.license_url else ""
    con.print(f"licence: {card.license}{licence_source}   homepage: {card.homepage}")
    for layer in card.labels:
        classes = ", ".join(f"{c.value}={c.name}" for c in layer.classes)
        of = f", of {layer.instance_of}" if layer.instance_of else ""
        stored = f", written as '{layer.written_as}'" if layer.written_as else ""
        stored += "" if layer.prepared else ", not written by prepare"
        con.print(f"labels [bold]{layer.name}[/bold] ({layer.kind}{of}{stored}): {classes}")
    for v in card.volumes:
        con.print(f"volume {v.name}: split {v.split}{' (unlabelled)' if not v.labelled else ''}"
                  f"{' shape ' + str(v.shape) if v.shape else ''}"
                  f"{' writes ' + ', '.join(v.cases) if v.cases else ''}"
                  f"{'' if v.prepared else ' (published; not written by prepare)'}")
    for s in card.subsets:
        con.print(f"subset {s.id}: {s.title} {_fmt_voxel(s.voxel_size_nm)}")
    for s in card.sources:
        con.print(f"source {s.name}: {s.url}  [{s.checksum}]")
    for p in card.pitfalls:
        con.print(f"[yellow]pitfall[/yellow]: {p}")
    prep = doc["prepare"]
    options = " ".join(f"--{o}" for o in prep["options"]) or "no options"
    con.print(f"prepare: emdata prepare {card.id} ({options})" if prep["available"] else
              "prepare: no recipe yet; `emdata fetch` downloads its files")
    for o in doc["prepare_options"]:
        value = "" if o["type"] == "bool" else " " + ("|".join(map(str, o["choices"])) if o["choices"] else o["type"])
        more = (" (repeatable)" if o["repeatable"] else "") + (f" [default: {o['default']}]" if o["default"] is not None
                                                               else "")
        con.print(f"  --{o['name'].replace('_', '-')}{value}: {o['help']}{more}", markup=False, highlight=False)
    con.print(f"cite with: emdata cite {card.id}")


@app.command()
def cite(dataset: Annotated[str, typer.Argument(help="Dataset id.")], as_json: JsonOpt = False) -> None:
    """Print the BibTeX citation of a dataset (with --json: id, title, homepage, licence and BibTeX)."""
    from emdata.catalog import get_card

    card = get_card(dataset)
    if as_json:
        _print_json({"dataset": card.id, "title": card.title, "homepage": card.homepage, "license": card.license,
                     "bibtex": card.citation})
        return
    sys.stdout.write(card.citation)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@app.command()
def fetch(dataset: Annotated[str, typer.Argument(help="Dataset id.")],
          subset: Annotated[str | None, typer.Option(help="Only the files of this subset.")] = None,
          source: Annotated[list[str] | None,
                            typer.Option("--source", help="Only this source file (repeatable).")] = None,
          all_sources: Annotated[bool, typer.Option("--all", help="Also the alternate sources prepare does not need.")]
          = False,
          as_json: JsonOpt = False) -> None:
    """Download the source files `prepare` needs into the cache (resumable, verified).

    Alternate sources (other hosts or formats of the same data, or data no recipe reads) are
    fetched with --all or --source; one the recipe can read replaces a primary that fails.
    """
    import emdata

    if as_json:
        config.set_quiet(True)
    report = emdata.fetch(dataset, subset=subset, sources=source or None, all_sources=all_sources)
    if as_json:
        _print_json(report)
        return
    from rich.table import Table

    table = Table(title=f"{dataset}: {len(report['files'])} file(s)")
    for col in ("file", "size", "sha256", "from"):
        table.add_column(col, overflow="fold")
    for f in report["files"]:
        origin = "cache" if f["from_cache"] else f["fetched_from"]
        table.add_row(f["name"], _human_bytes(f["bytes"]), f["sha256"][:16] + "…", origin)
    con = _console()
    con.print(table)
    for f in report["files"]:
        if f.get("instead_of"):
            con.print(f"{f['name']} was fetched instead of {f['instead_of']} ({f['because']})", style="yellow",
                      markup=False)
    for s in report["skipped"]:
        con.print(f"skipped {s['name']}: {s['reason']}", style="dim", markup=False)


cache_app = typer.Typer(help="What emdata keeps on disk, and removing it.", invoke_without_command=True)
app.add_typer(cache_app, name="cache")


@cache_app.callback()
def cache(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List cached downloads, prepared volumes, decoded chunks kept for the loaders and leftovers of
    interrupted runs per dataset."""
    if ctx.invoked_subcommand is not None:
        return
    from emdata.cache import cache_report

    report = cache_report()
    if as_json:
        _print_json(report)
        return
    from rich.table import Table

    table = Table(title=f"{report['home']}: {_human_bytes(report['bytes'])}")
    for col in ("dataset", "downloads", "prepared volumes", "decoded chunks", "leftovers", "size"):
        table.add_column(col)
    for name, d in report["datasets"].items():
        files = f"{sum(f['complete'] for f in d['downloads'])}/{len(d['downloads'])} complete"
        vols = ", ".join(v["volume"] + ("" if v["complete"] else " (incomplete)") for v in d["prepared"]) or "-"
        left = f"{len(d['leftovers'])} ({_human_bytes(d['leftover_bytes'])})" if d["leftovers"] else "-"
        decoded = _human_bytes(d["decoded_bytes"]) if d["decoded_bytes"] else "-"
        table.add_row(name, files, vols, decoded, left, _human_bytes(d["bytes"]))
    _console().print(table)


@cache_app.command("clean")
def cache_clean(dataset: Annotated[str | None, typer.Argument(help="Dataset id.")] = None,
                all_datasets: Annotated[bool, typer.Option("--all", help="Every dataset in the cache.")] = False,
                prepared: Annotated[bool, typer.Option(help="Also remove prepared volumes.")] = False,
                as_json: JsonOpt = False) -> None:
    """Remove a dataset's downloads (and with --prepared its volumes) and its decoded chunks no process reads;
    waits for a running writer of them. --all also removes the cached statistics and foreground indices."""
    from emdata.cache import cached_datasets, clean, clean_derived
    from emdata.catalog import get_card

    if (dataset is None) == (not all_datasets):
        raise ValueError("name one dataset id or pass --all (not both)")
    names = cached_datasets() if all_datasets else [dataset]
    if dataset is not None:
        get_card(dataset)
    freed = [clean(name, prepared=prepared) for name in names]
    derived = clean_derived() if all_datasets else 0
    if as_json:
        _print_json(freed[0] if dataset is not None else {"datasets": freed, "derived_bytes": derived})
        return
    if derived:
        _console().print(f"freed {_human_bytes(derived)} of statistics and foreground indices (recomputed on use)")
    for f in freed:
        _console().print(f"{f['dataset']}: freed {_human_bytes(f['downloads_bytes'])} of downloads"
                         + (f" and {_human_bytes(f['prepared_bytes'])} of volumes" if prepared else "")
                         + (f", {_human_bytes(f['decoded_bytes'])} of decoded chunks" if f.get("decoded_bytes")
                            else ""))
    if not freed:
        _console().print("nothing cached")


_PREPARE_CONTEXT = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _split_dataset(tokens: list[str]) -> tuple[str | None, list[str]]:
    """The dataset id among ``prepare``'s free tokens (the first catalog id, else the first word) and the rest."""
    from emdata.catalog import dataset_ids

    known = set(dataset_ids())
    words = [i for i, t in enumerate(tokens) if not t.startswith("-")]
    at = next((i for i in words if tokens[i] in known), words[0] if words else None)
    if at is None:
        return None, tokens
    return tokens[at], tokens[:at] + tokens[at + 1:]


@app.command(context_settings=_PREPARE_CONTEXT)
def prepare(ctx: typer.Context,
            dataset: Annotated[str | None, typer.Argument(help="Dataset id.", show_default=False)] = None,
            volume: Annotated[list[str] | None, typer.Option("--volume", help="Only this volume (repeatable).")] = None,
            force: Annotated[bool, typer.Option(help="Rebuild even if the volumes are complete.")] = False,
            scheduler: Annotated[str | None, typer.Option(
                help="Where large volumes are built: auto, in-process, local (dask LocalCluster) or a dask "
                     "scheduler address (tcp://host:8786).", show_default="auto")] = None,
            as_json: JsonOpt = False,
            show_help: Annotated[bool, typer.Option("--help", help="Show this message (after ID: that dataset's "
                                                                   "options) and exit.")] = False) -> None:
    """Fetch a dataset and write its canonical OME-Zarr volumes.

    Each dataset declares its own options (--subset, --bbox, ...): `emdata prepare ID --help`
    shows them, `emdata info ID` lists them; an option a dataset does not take is refused by name.
    """
    import emdata
    from emdata.cli.recipe_options import build_parser, parse_options
    from emdata.datasets import declared_options

    dataset, tokens = _split_dataset(([dataset] if dataset else []) + list(ctx.args))
    if dataset is None:
        if show_help:
            sys.stdout.write(ctx.get_help() + "\n")
            raise typer.Exit()
        ctx.fail("Missing argument 'dataset'.")
    declared = declared_options(dataset)
    if show_help:
        sys.stdout.write(build_parser(dataset, declared, with_common=True).format_help())
        raise typer.Exit()
    if as_json:
        config.set_quiet(True)
    options = parse_options(dataset, declared, tokens)
    if scheduler is not None:
        options["scheduler"] = scheduler
    vols = emdata.prepare(dataset, volumes=volume or None, force=force, **options)
    rows = [{"volume": v.name, "split": v.split, "path": str(v.path), "shape": list(v.shape),
             "voxel_size_nm": list(v.voxel_size), "labels": list(v.meta["labels"])} for v in vols]
    if as_json:
        _print_json(rows)
        return
    from rich.table import Table

    table = Table(title=f"{dataset}: {len(rows)} volume(s)")
    for col in ("volume", "split", "shape", "voxel nm", "labels", "path"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["volume"], r["split"], "×".join(map(str, r["shape"])), _fmt_voxel(r["voxel_size_nm"]),
                      ", ".join(r["labels"]) or "-", r["path"])
    _console().print(table)


@app.command()
def verify(target: Annotated[str, typer.Argument(
               help="A *.ome.zarr volume, a folder of them, or a dataset id (all its prepared volumes).")],
           deep: Annotated[bool, typer.Option(help="Decode every chunk and compare the recorded checksums; "
                                                   "check provenance against the cached downloads.")] = False,
           as_json: JsonOpt = False) -> None:
    """Check volumes: schema, completeness, metadata, shapes, dtypes (and content with --deep)."""
    from emdata.look import volume_paths
    from emdata.store.verify import verify_volume

    found = volume_paths(target)
    reports = [verify_volume(p, deep=deep) for p in found]
    ok = all(r.ok for r in reports)
    if as_json:
        _print_json({"ok": ok, "deep": deep, "volumes": [r.to_json() for r in reports]})
    else:
        con = _console()
        for r in reports:
            status = "[green]OK[/green]" if r.ok else "[red]FAILED[/red]"
            con.print(f"{status} {r.path} ({r.arrays} arrays{f', {r.blocks} blocks decoded' if deep else ''})")
            for p in r.problems:
                con.print(f"  - {p}", markup=False)
    if not ok:
        raise typer.Exit(1)


def _volumes_for(target: str, names: list[str] | None) -> list[Any]:
    """The prepared volumes a ``view``/``report`` argument names: a ``*.ome.zarr`` path, or a dataset id
    (its volumes named by ``names``; by default its first labelled volume)."""
    import emdata
    from emdata.store.volume import open_volume

    path = Path(target).expanduser()
    if (path / "zarr.json").is_file():
        return [open_volume(path)]
    if "/" in target or target.endswith(".ome.zarr"):
        raise FileNotFoundError(f"{path}: no OME-Zarr volume here (no zarr.json); pass a prepared *.ome.zarr "
                                "or a dataset id")
    found = emdata.volumes(target)
    if names:
        by_name = {v.name: v for v in found}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise KeyError(f"{target} has no prepared volume(s) {missing}; prepared: {sorted(by_name)}")
        return [by_name[n] for n in names]
    return [next((v for v in found if v.meta["labels"]), found[0])]


@app.command()
def view(target: Annotated[str, typer.Argument(help="A dataset id (a prepared one) or a *.ome.zarr path.")],
         volume: Annotated[list[str] | None, typer.Option("--volume", help="Show this volume of the dataset "
                                                          "(repeatable; default: its first labelled one).")] = None,
         port: Annotated[int, typer.Option(help="Port of the loopback data server (0: any free one).")] = 0,
         seconds: Annotated[float | None, typer.Option("--seconds", help="Stop serving after this many seconds "
                                                       "(default: until Ctrl-C).")] = None,
         open_browser: Annotated[bool, typer.Option("--open", help="Also open the URL in the default web browser.")]
         = False,
         as_json: JsonOpt = False) -> None:
    """Open a prepared volume in neuroglancer: serves its store on 127.0.0.1 and prints the viewer URL.

    With the `view` extra (pip install 'emdata[view]') neuroglancer's own client runs on loopback
    (offline); without it the URL opens neuroglancer's public client on the loopback data.
    The state has the raw image and every label layer with its class names and colours.
    """
    import time

    from emdata.view import ViewSession

    with ViewSession(_volumes_for(target, volume), port=port) as session:
        if as_json:
            _print_json({"url": session.url, "data_url": session.server.url, "state": session.state})
        else:
            sys.stdout.write(f"neuroglancer: {session.url}\nserving the data on {session.server.url} "
                             "(Ctrl-C stops)\n")
        sys.stdout.flush()
        if open_browser:
            import webbrowser

            webbrowser.open(session.url)
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2 if deadline is None else max(min(0.2, deadline - time.monotonic()), 0))


@app.command()
def report(out: Annotated[Path, typer.Option("-o", "--out", help="Folder to write the site into.")]
           = Path("emdata-report"),
           dataset: Annotated[list[str] | None, typer.Option(
               "--dataset", help="Only this dataset's page (repeatable; the table lists all).")] = None,
           as_json: JsonOpt = False) -> None:
    """Write a static HTML site of the catalog (opens from disk, offline): a sortable, filterable table and
    one page per dataset with its card, citation and, for prepared volumes, previews and statistics."""
    from emdata.report import build_report

    if as_json:
        config.set_quiet(True)
    site = build_report(out, datasets=dataset or None)
    index = (site / "index.html").resolve()
    if as_json:
        _print_json({"index": str(index), "pages": sorted(str(p) for p in (site / "datasets").glob("*.html"))})
        return
    _console().print(f"report written: {index.as_uri()}", markup=False, highlight=False)


def _sizes(text: str | None, what: str) -> list[float] | None:
    """``"8,64,64"`` -> [8, 64, 64] (None stays None)."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be numbers separated by commas (z,y,x or y,x), got {text!r}") from None


def _load_model(spec: str, weights: Path | None) -> Any:
    """A TorchScript file, or ``package.module:factory`` called without arguments (then ``weights``)."""
    import importlib

    import torch

    path = Path(spec).expanduser()
    if path.is_file():
        if weights is not None:
            raise ValueError("--weights goes with a MODULE:FACTORY model; a TorchScript file holds its weights")
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            raise ValueError(f"{path}: not a TorchScript file ({str(exc).splitlines()[0]}); save the model with "
                             "torch.jit.script(model).save(PATH), or pass MODULE:FACTORY and --weights") from None
    module, _, attr = spec.partition(":")
    if not attr:
        raise FileNotFoundError(f"model {spec!r}: no such file, and not MODULE:FACTORY (e.g. mypkg.nets:UNet)")
    model = getattr(importlib.import_module(module), attr)()
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    return model


@app.command()
def predict(volume: Annotated[str, typer.Argument(help="A *.ome.zarr volume, or DATASET/VOLUME of a prepared one.")],
            model: Annotated[str, typer.Option(help="TorchScript file, or MODULE:FACTORY (with --weights).")],
            tile: Annotated[str, typer.Option(help="Model input in voxels: z,y,x (or y,x for a 2D model).")],
            name: Annotated[str, typer.Option(help="Name of the prediction layer.")] = "prediction",
            weights: Annotated[Path | None, typer.Option(help="state_dict for a MODULE:FACTORY model.")] = None,
            halo: Annotated[str | None, typer.Option(help="Voxels cut from each side of a tile output "
                                                          "(default: tile/8).")] = None,
            overlap: Annotated[str | None, typer.Option(help="Voxels over which neighbouring tiles blend "
                                                             "(default: tile/8).")] = None,
            voxel_size: Annotated[str | None, typer.Option(help="nm z,y,x the model was trained at (default: the "
                                                                "volume's).")] = None,
            output: Annotated[str, typer.Option(help="labels (argmax / threshold) or probabilities.")] = "labels",
            activation: Annotated[str, typer.Option(help="auto, sigmoid, softmax or none.")] = "auto",
            batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 4,
            device: Annotated[str | None, typer.Option(help="torch device (default: cuda if available).")] = None,
            block: Annotated[str | None, typer.Option(help="Voxels per resumable block z,y,x.")] = None,
            as_json: JsonOpt = False) -> None:
    """Run a model over a prepared volume, tile by tile, into a prediction layer of it (resumable)."""
    from emdata.evaluation import resolve_volume
    from emdata.inference import predict as run

    if as_json:
        config.set_quiet(True)
    vol = resolve_volume(volume)
    sizes = {key: [int(v) for v in values] if values else None
             for key, values in (("tile", _sizes(tile, "--tile")), ("halo", _sizes(halo, "--halo")),
                                 ("overlap", _sizes(overlap, "--overlap")), ("block", _sizes(block, "--block")))}
    out = run(_load_model(model, weights), vol.path, name, tile=sizes["tile"], halo=sizes["halo"],
              overlap=sizes["overlap"], block=sizes["block"], voxel_size=_sizes(voxel_size, "--voxel-size"),
              output=output, activation=activation, batch_size=batch_size, device=device, model_name=model,
              progress=not config.quiet())
    layer = out.predictions[name]
    doc = {"volume": str(out.path), "layer": name, "kind": layer["kind"], "path": layer["path"],
           "shape": layer["levels"][0]["shape"], "provenance": layer["provenance"]}
    if as_json:
        _print_json(doc)
        return
    _console().print(f"{out.dataset}/{out.name}: wrote {layer['kind']} layer [bold]{name}[/bold] at {layer['path']} "
                     f"({'×'.join(map(str, doc['shape']))}); `emdata evaluate {out.path} {name}` scores it")


@app.command()
def evaluate(volume: Annotated[str, typer.Argument(help="A *.ome.zarr volume, or DATASET/VOLUME of a prepared one.")],
             prediction: Annotated[str, typer.Argument(help="A layer of the volume, a TIFF, file.h5:KEY, a zarr "
                                                            "array (a.zarr or g.zarr:PATH) or another volume.")],
             gt_layer: Annotated[str | None, typer.Option(help="Ground-truth layer (default: the dataset's).")] = None,
             pred_layer: Annotated[str | None, typer.Option(help="Layer of PREDICTION when it is another "
                                                                 "volume.")] = None,
             metric: Annotated[list[str] | None, typer.Option("--metric", help="Metric (repeatable) (default: "
                                                                               "the dataset card's).")] = None,
             gt_foreground: Annotated[list[int] | None, typer.Option(
                 "--gt-foreground", help="Ground-truth value counted as foreground by dice/iou (repeatable) "
                                         "(default: nonzero).")] = None,
             pred_foreground: Annotated[list[int] | None, typer.Option(
                 "--pred-foreground", help="Predicted value counted as foreground by dice/iou (repeatable) "
                                           "(default: nonzero).")] = None,
             as_json: JsonOpt = False) -> None:
    """Score a prediction against the volume's ground truth with the dataset's challenge metrics."""
    from emdata.evaluation import evaluate as run
    from emdata.evaluation import summary_rows

    doc = run(volume, prediction, gt_layer=gt_layer, pred_layer=pred_layer, metrics=metric or None,
              gt_foreground=gt_foreground or None, pred_foreground=pred_foreground or None)
    if as_json:
        _print_json(doc)
        return
    from rich.table import Table

    table = Table(title=f"{doc['dataset']}/{doc['name']}: {doc['prediction']['source']} vs {doc['gt_layer']} "
                        f"(metrics from {doc['metrics_from']})")
    for col in ("metric", "values", "version"):
        table.add_column(col, overflow="fold")
    for row in summary_rows(doc):
        table.add_row(*row)
    _console().print(table)


@app.command()
def stats(target: Annotated[str, typer.Argument(
              help="A *.ome.zarr volume, a folder of them, or a dataset id (all its prepared volumes).")],
          volume: Annotated[list[str] | None, typer.Option("--volume", help="Only this volume (repeatable).")] = None,
          as_json: JsonOpt = False) -> None:
    """Shape, voxel size, intensities, class and instance counts, annotated and foreground shares per volume."""
    from emdata.look import volume_paths
    from emdata.look.stats import format_stats, volume_stats

    docs = [volume_stats(p) for p in volume_paths(target, volume)]
    if as_json:
        _print_json(docs)  # a list, one document per volume, also for one volume
        return
    sys.stdout.write("\n\n".join(format_stats(d) for d in docs) + "\n")


@app.command()
def preview(target: Annotated[str, typer.Argument(
                help="A *.ome.zarr volume, a folder of them, or a dataset id (all its prepared volumes).")],
            volume: Annotated[list[str] | None, typer.Option("--volume", help="Only this volume (repeatable).")] = None,
            z: Annotated[int | None, typer.Option("--z", help="Slice through this section (level-0 index).")] = None,
            nm: Annotated[float | None, typer.Option("--nm", help="Slice at this depth in nm from the first section's "
                                                               "edge.")] = None,
            layer: Annotated[list[str] | None, typer.Option("--layer", help="Only this label layer (repeatable).")]
            = None,
            output: Annotated[Path | None, typer.Option("-o", "--output", help="PNG to write (several volumes: "
                                                                              "FILE-<volume>.png).")] = None,
            augment: Annotated[bool, typer.Option("--augment", help="Instead: a grid of augmented training samples "
                                                                    "(augment='em'; needs the torch extra).")] = False,
            samples: Annotated[int, typer.Option(help="With --augment: how many samples.")] = 8,
            as_json: JsonOpt = False) -> None:
    """Write a PNG: three orthogonal slices per label layer with the labels overlaid, legend and scale bar."""
    from emdata.look import volume_paths
    from emdata.look.preview import write_augmented_preview, write_preview

    paths = volume_paths(target, volume)
    prefix = "" if Path(target).expanduser().exists() else f"{target}-"  # a dataset id names the files

    def out(name: str) -> Path:
        if output is None:
            return Path(f"{prefix}{name}.png")
        if len(paths) == 1:
            return output
        return output.with_name(f"{output.stem}-{name}{output.suffix or '.png'}")

    if augment:
        if z is not None or nm is not None:
            raise ValueError("--augment draws random training samples: --z and --nm do not apply")
        stem = Path(target).name.removesuffix(".ome.zarr")
        written = [write_augmented_preview(paths, output or Path(f"{stem}-augmented.png"), n=samples,
                                           layer=layer[0] if layer else None)]
    else:
        written = [write_preview(p, out(p.name.removesuffix(".ome.zarr")), z=z, z_nm=nm, layers=layer or None)
                   for p in paths]
    if as_json:
        _print_json([str(w) for w in written])
        return
    for w in written:
        sys.stdout.write(f"{w}\n")


@app.command()
def demo(home: Annotated[Path, typer.Option(
             help="Folder for the demo's replicas and volumes (its EMDATA_HOME): new, empty or an earlier demo's.")
         ] = Path(".emdata-demo"),
         dataset: Annotated[list[str] | None, typer.Option(
             "--dataset", help="Demo this dataset instead of the default ones (repeatable; any with a recipe).")
         ] = None) -> None:
    """Run the whole pipeline offline on local replicas (no internet needed)."""
    from emdata.demo import run_demo

    run_demo(home, datasets=dataset or None)


def main() -> None:
    """Console entry point: one-line errors on stderr, non-zero exit codes."""
    try:
        app()  # standalone mode: usage errors print click's message and exit 2
    except KeyboardInterrupt:
        sys.stderr.write("emdata: interrupted\n")
        sys.exit(130)
    except Exception as exc:
        if _state["debug"]:
            raise
        sys.stderr.write(f"emdata: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        sys.exit(1)
