"""The offline demo behind ``make demo`` / ``emdata demo``.

Writes replicas of datasets in their published layouts, serves them on a loopback mirror, runs
the real ``prepare`` through the real HTTP code and verifies every volume. By default it uses
SNEMI3D, MitoEM2 and CREMI and then draws batches from a ``CombineDataModule`` (weights
1:2:1), printing per-dataset shares, class coverage and patches/s, and ends with a round trip
(:func:`round_trip`): a tiny model trained for a few steps on the mixed loader, ``predict`` on a
held-out volume, ``evaluate`` with the dataset's metrics; with ``datasets`` it
prepares those (any dataset with a recipe) and reads patches from them. Its folder is kept
apart from real data, so replica files never enter a real cache.

The demo folder is marked with ``emdata-demo.json``: a later demo cleans only what an earlier
one wrote there, and a non-empty folder without the mark is refused, never deleted.

Example:
    >>> import tempfile
    >>> home = claim_home(Path(tempfile.mkdtemp()) / "demo")
    >>> sorted(p.name for p in home.iterdir())
    ['emdata-demo.json']
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DATASETS = ("snemi3d", "mitoem2", "cremi")
WEIGHTS = {"snemi3d": 1.0, "mitoem2": 2.0, "cremi": 1.0}
MARKER = "emdata-demo.json"
WRITTEN = ("mirror", "downloads", "prepared", "replica-checksums.json")
"""What a demo writes into its folder (besides the marker); the only entries it ever removes."""
PATCH = (16, 128, 128)


def claim_home(home: Path) -> Path:
    """Make ``home`` ready for a demo and return it (resolved).

    A new or empty folder is created and marked; a folder marked by an earlier demo loses what
    that demo wrote (:data:`WRITTEN`) and keeps anything else; any other non-empty folder is
    refused with an error, untouched.
    """
    home = Path(home).expanduser().resolve()
    if home.exists() and not home.is_dir():
        raise NotADirectoryError(f"demo folder {home} is a file; pass --home with a new or empty folder")
    if home.is_dir() and any(home.iterdir()):
        if not (home / MARKER).is_file():
            raise FileExistsError(f"demo folder {home} is not empty and was not made by `emdata demo` (no {MARKER}); "
                                  "nothing was removed: pass --home with a new or empty folder")
        for name in WRITTEN:
            path = home / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    home.mkdir(parents=True, exist_ok=True)
    from emdata import __version__

    (home / MARKER).write_text(json.dumps({"made_by": "emdata demo", "emdata": __version__,
                                           "removes_on_rerun": list(WRITTEN)}, indent=1) + "\n", encoding="utf-8")
    return home


def run_demo(home: Path, datasets: Sequence[str] | None = None, batches: int = 40, batch_size: int = 8) -> None:
    """Prepare replicas of ``datasets`` (default: SNEMI3D, MitoEM2, CREMI) under ``home``, verify
    them and draw patches; prints tables. ``home`` must be new, empty or an earlier demo's."""
    from rich.console import Console
    from rich.table import Table

    from emdata.store.verify import verify_volume
    from emdata.testing.replica_sets import check_datasets, prepared_replicas

    chosen = list(dict.fromkeys(datasets or DATASETS))
    check_datasets(chosen)
    home = claim_home(home)
    con = Console()
    con.print(f"[bold]emdata demo[/bold]: [yellow]replicas[/yellow] of {', '.join(chosen)} in their published "
              "layouts, served from a loopback mirror, prepared by the real recipes")
    t0 = time.perf_counter()
    with prepared_replicas(home, chosen) as prepared:
        t_prepare = time.perf_counter() - t0
    volumes = [v for vols in prepared.values() for v in vols]
    t1 = time.perf_counter()
    reports = {v.path: verify_volume(v.path, deep=True) for v in volumes}
    t_verify = time.perf_counter() - t1

    table = Table(title=f"{len(volumes)} prepared volumes (prepare {t_prepare:.1f} s, verify --deep {t_verify:.1f} s)")
    for col in ("dataset", "volume", "split", "shape (z,y,x)", "voxel nm", "labels", "verify"):
        table.add_column(col)
    for v in volumes:
        table.add_row(v.dataset, v.name, v.split, "×".join(map(str, v.shape)), "×".join(f"{s:g}" for s in v.voxel_size),
                      ", ".join(v.labels) or "-", "OK" if reports[v.path].ok else "FAILED")
    con.print(table)
    bad = [p for r in reports.values() for p in r.problems]
    if bad:
        raise RuntimeError("demo volumes failed verification: " + "; ".join(bad))
    if datasets:
        _read_patches(con, prepared, batches * batch_size)
    else:
        _draw(con, home, batches, batch_size)
        _round_trip(con, prepared)
    con.print(f"total {time.perf_counter() - t0:.1f} s; data under {home}")
    con.print("[yellow]This ran on small synthetic replicas in each dataset's published layout, not the real "
              f"data.[/yellow] With internet: `emdata prepare {chosen[0]}` (and the others) with EMDATA_MIRROR unset.")


def _read_patches(con: Any, prepared: dict[str, list[Any]], n: int) -> None:
    """Read ``n`` patches (at most 16×128×128, clipped to the smallest volume) from each dataset."""
    from rich.table import Table

    from emdata.torch import PatchDataset

    table = Table(title=f"{n} patches per dataset with emdata.torch.PatchDataset")
    for col in ("dataset", "patch (z,y,x) voxels", "voxel nm", "raw dtype", "label layers", "patches/s"):
        table.add_column(col)
    for name, vols in prepared.items():
        voxel = vols[0].voxel_size  # patches are read at the first volume's voxel size; fit every extent
        patch = tuple(max(1, min(p, *(int(v.shape[a] * v.voxel_size[a] // voxel[a]) for v in vols)))
                      for a, p in enumerate(PATCH))
        labels = sorted(set.intersection(*(set(v.labels) for v in vols)))
        ds = PatchDataset(vols, patch, labels=labels, samples_per_epoch=n)
        t = time.perf_counter()
        samples = [ds[i] for i in range(n)]
        rate = n / (time.perf_counter() - t)
        raw = samples[0]["raw"]
        table.add_row(name, "×".join(map(str, patch)), "×".join(f"{s:g}" for s in vols[0].voxel_size), str(raw.dtype),
                      ", ".join(labels) or "-", f"{rate:.0f}")
    con.print(table)


def _draw(con: Any, home: Path, batches: int, batch_size: int) -> None:
    from rich.table import Table

    from emdata.lightning import CombineDataModule, CREMIDataModule, MitoEM2DataModule, SNEMI3DDataModule
    from emdata.torch import IGNORE

    modules = {"snemi3d": SNEMI3DDataModule(data_root=home),
               "mitoem2": MitoEM2DataModule(data_root=home, prepare_options={"subset": ["beta", "mossy"]}),
               "cremi": CREMIDataModule(data_root=home, prepare_options={"volumes": ["A", "B"]})}
    dm = CombineDataModule({k: (m, WEIGHTS[k]) for k, m in modules.items()}, ignore_classes={"mito_boundary"},
                           patch_shape=(4, 64, 64), targets=["semantic"], batch_size=batch_size,
                           samples_per_epoch=batches * batch_size)
    dm.setup("fit")
    space = dm.train_set.datasets[0].space.classes  # type: ignore[union-attr]
    shares: Counter[str] = Counter()
    coverage: dict[str, Counter[int]] = {k: Counter() for k in modules}
    t = time.perf_counter()
    for batch in dm.train_dataloader():
        for source, target in zip(batch["meta"]["source"], batch["semantic"]):
            shares[source] += 1
            values, counts = np.unique(target.numpy(), return_counts=True)
            coverage[source].update(dict(zip(values.tolist(), counts.tolist())))
    rate = sum(shares.values()) / (time.perf_counter() - t)
    table = Table(title=f"CombineDataModule, weights {WEIGHTS}, ignore_classes={{'mito_boundary'}}: "
                        f"{sum(shares.values())} patches 4×64×64 at {rate:.0f} patches/s")
    table.add_column("dataset")
    table.add_column("share (expected)")
    for name in [*space, "ignore"]:
        table.add_column(name)
    total_w = sum(WEIGHTS.values())
    for name in modules:
        cov = coverage[name]
        voxels = sum(cov.values()) or 1
        cells = [f"{100 * cov.get(i, 0) / voxels:.0f}%" for i in range(len(space))] + [
            f"{100 * cov.get(IGNORE, 0) / voxels:.0f}%"]
        table.add_row(name, f"{100 * shares[name] / sum(shares.values()):.1f}% ({100 * WEIGHTS[name] / total_w:.0f}%)",
                      *cells)
    con.print(table)
    con.print("Classes a dataset does not annotate are never called background: those voxels are 'ignore'.")


ROUND_TRIP_VOXEL = (16.0, 16.0, 16.0)
"""The voxel size the round trip trains at: MitoEM2 beta's own, the others resampled to it."""
ROUND_TRIP_WEIGHTS = {"snemi3d": 1.0, "mitoem2": 4.0, "cremi": 1.0}
"""Mixing weights of the round trip: only MitoEM2 teaches mitochondria, the others neurons."""


def round_trip(prepared: dict[str, list[Any]], steps: int = 120, batch_size: int = 4, seed: int = 0,
               patch: tuple[int, int, int] = (8, 32, 32)) -> dict[str, Any]:
    """Train a tiny 3D network for ``steps`` steps on a :class:`~emdata.torch.MixedPatchDataset` of the
    prepared training volumes (semantic targets at 16 nm), run :func:`emdata.inference.predict` on a held-out
    MitoEM2 test volume, label the predicted mitochondria's connected components as instances, store them
    with :func:`~emdata.store.predictions.add_prediction` and score them with :func:`emdata.evaluation.evaluate`
    (MitoEM2's card: instance accuracy at IoU 0.75, Dice). Returns the evaluation document, with
    ``"seconds"`` (train, predict, evaluate) and the ``verify --deep`` outcome added.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: one thread is several times faster than contended ones
    try:
        return _round_trip_steps(prepared, steps, batch_size, seed, patch)
    finally:
        torch.set_num_threads(threads)


def _round_trip_steps(prepared: dict[str, list[Any]], steps: int, batch_size: int, seed: int,
                      patch: tuple[int, int, int]) -> dict[str, Any]:
    import torch
    from scipy import ndimage

    from emdata.evaluation import evaluate
    from emdata.inference import predict
    from emdata.store.predictions import add_prediction
    from emdata.store.verify import verify_volume
    from emdata.torch import CONNECTOMICS_LABEL_SPACE, IGNORE, MixedPatchDataset, PatchDataset, make_loader

    torch.manual_seed(seed)
    held_out = next(v for v in prepared["mitoem2"] if v.split == "test" and tuple(v.voxel_size) == ROUND_TRIP_VOXEL)
    parts = {name: (PatchDataset([v for v in vols if v.split == "train"], patch, voxel_size=ROUND_TRIP_VOXEL,
                                 targets=["semantic"], raw_dtype="float32", label_space=list(CONNECTOMICS_LABEL_SPACE),
                                 ignore_classes=["mito_boundary"],
                                 normalize="dtype", seed=seed), ROUND_TRIP_WEIGHTS[name])
             for name, vols in prepared.items()}
    mixed = MixedPatchDataset(parts, samples_per_epoch=steps * batch_size, seed=seed)
    classes = dict(mixed.class_names)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv3d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, len(classes), 1))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    t0 = time.perf_counter()
    losses = []
    for batch in make_loader(mixed, batch_size=batch_size):
        optimiser.zero_grad()
        loss = loss_fn(net(batch["raw"]), batch["semantic"].long())
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    t1 = time.perf_counter()
    # the network is fully convolutional: it predicts on tiles larger than its training patches
    vol = predict(net, held_out, "demo-semantic", tile=(16, 96, 96), halo=(2, 4, 4), overlap=(0, 8, 8),
                  voxel_size=ROUND_TRIP_VOXEL, classes=classes, model_name="demo tiny 3D CNN", progress=False)
    mito = next(i for i, name in classes.items() if name == "mitochondria")
    instances, _ = ndimage.label(np.asarray(vol.prediction("demo-semantic")) == mito)
    add_prediction(vol.path, "demo-mito", instances.astype(np.uint32),
                   provenance={"model": "demo tiny 3D CNN", "from": "demo-semantic",
                               "postprocess": "connected components (6-connected) of class mitochondria"})
    t2 = time.perf_counter()
    doc = evaluate(vol.path, "demo-mito")
    t3 = time.perf_counter()
    doc["seconds"] = {"train": t1 - t0, "predict": t2 - t1, "evaluate": t3 - t2}
    doc["training"] = {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1],
                       "classes": {str(k): v for k, v in classes.items()}}
    doc["verify_deep_problems"] = verify_volume(vol.path, deep=True).problems
    return doc


def _round_trip(con: Any, prepared: dict[str, list[Any]]) -> None:
    from rich.table import Table

    from emdata.evaluation import summary_rows

    doc = round_trip(prepared)
    sec, training = doc["seconds"], doc["training"]
    table = Table(title=f"round trip: tiny model trained {training['steps']} steps on the mixed loader (loss "
                        f"{training['first_loss']:.2f} → {training['last_loss']:.2f}, {sec['train']:.1f} s), "
                        f"predicted on held-out {doc['dataset']}/{doc['name']} ({sec['predict']:.1f} s), "
                        f"scored against {doc['gt_layer']!r} ({doc['metrics_from']}, {sec['evaluate']:.1f} s)")
    for col in ("metric", "values", "version"):
        table.add_column(col, overflow="fold")
    for row in summary_rows(doc):
        table.add_row(*row)
    con.print(table)
    if doc["verify_deep_problems"]:
        raise RuntimeError("the volume with the prediction layers failed verification: "
                           + "; ".join(doc["verify_deep_problems"]))
    con.print(f"prediction layers 'demo-semantic' and 'demo-mito' written into {doc['volume']} (verify --deep OK); "
              f"`emdata evaluate {doc['volume']} demo-mito --json` prints the document")
