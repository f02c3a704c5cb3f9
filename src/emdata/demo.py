"""The offline demo behind ``make demo`` / ``emdata demo``.

Writes replicas of SNEMI3D, MitoEM2 and CREMI in their published layouts, serves them on a
loopback mirror, runs the real ``prepare`` through the real HTTP code, verifies every
volume, then draws batches from seed 004's ``CombineDataModule`` (weights 1:2:1) and prints
per-dataset shares, class coverage and patches/s. Its ``EMDATA_HOME`` is kept apart from
real data so replica files never enter a real cache.

Example:
    >>> run_demo(Path(".emdata-demo"))  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

DATASETS = ("snemi3d", "mitoem2", "cremi")
WEIGHTS = {"snemi3d": 1.0, "mitoem2": 2.0, "cremi": 1.0}


def run_demo(home: Path, batches: int = 40, batch_size: int = 8) -> None:
    from rich.console import Console
    from rich.table import Table

    from emdata.store.verify import verify_volume
    from emdata.testing.replica_sets import prepared_replicas

    con = Console()
    home = Path(home).resolve()
    shutil.rmtree(home, ignore_errors=True)
    con.print(f"[bold]emdata demo[/bold]: [yellow]replicas[/yellow] of {', '.join(DATASETS)} in their published "
              "layouts, served from a loopback mirror, prepared by the real recipes")
    t0 = time.perf_counter()
    with prepared_replicas(home, DATASETS) as prepared:
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
    _draw(con, home, batches, batch_size)
    con.print(f"total {time.perf_counter() - t0:.1f} s; data under {home}")
    con.print("[yellow]This ran on small synthetic replicas in each dataset's published layout, not the real "
              "data.[/yellow] With internet: `emdata prepare snemi3d` (and mitoem2, cremi) with EMDATA_MIRROR unset.")


def _draw(con: object, home: Path, batches: int, batch_size: int) -> None:
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
    con.print(table)  # type: ignore[attr-defined]
    con.print("Classes a dataset does not annotate are never called background: those voxels are 'ignore'.")  # type: ignore[attr-defined]
