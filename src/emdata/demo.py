"""The offline demo behind ``make demo`` / ``emdata demo``.

Writes a SNEMI3D replica in the organisers' layout, serves it on a loopback mirror, runs
the real ``prepare`` through the real HTTP code, verifies the volumes and prints a summary.
Its ``EMDATA_HOME`` is kept apart from real data so replica files never enter a real cache.

Example:
    >>> run_demo(Path(".emdata-demo"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np


def run_demo(home: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    import emdata
    from emdata.store.verify import verify_volume
    from emdata.testing import MirrorServer, write_snemi3d_replica

    con = Console()
    home = Path(home).resolve()
    shutil.rmtree(home, ignore_errors=True)
    mirror_root = home / "mirror"
    t0 = time.perf_counter()
    truth = write_snemi3d_replica(mirror_root, shape=(32, 256, 256))
    saved = {k: os.environ.get(k) for k in ("EMDATA_HOME", "EMDATA_MIRROR", "EMDATA_OFFLINE")}
    try:
        with MirrorServer(mirror_root) as server:
            os.environ.update({"EMDATA_HOME": str(home), "EMDATA_MIRROR": server.url, "EMDATA_OFFLINE": "0"})
            con.print(f"[bold]emdata demo[/bold]: SNEMI3D [yellow]replica[/yellow] served at {server.url} "
                      f"(loopback mirror of rhoana.rc.fas.harvard.edu)")
            t1 = time.perf_counter()
            volumes = emdata.prepare("snemi3d")
            t_prepare = time.perf_counter() - t1
            requests = len(server.log)
        t2 = time.perf_counter()
        reports = [verify_volume(v.path, deep=True) for v in volumes]
        t_verify = time.perf_counter() - t2
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    table = Table(title="prepared volumes")
    for col in ("volume", "split", "shape (z,y,x)", "voxel nm", "levels", "labels", "verify --deep"):
        table.add_column(col)
    for vol, rep in zip(volumes, reports):
        label_text = "-"
        if "neurons" in vol.labels:
            ids = np.asarray(vol.labels["neurons"][...])
            exact = np.array_equal(ids, truth["train_labels"]) and np.array_equal(vol.raw[...], truth["train_raw"])
            label_text = (f"neurons: {len(np.unique(ids[ids > 0]))} instances, {100 * (ids == 0).mean():.1f}% "
                          f"background, {'voxel-exact' if exact else 'MISMATCH'}")
        table.add_row(vol.name, vol.split, "×".join(map(str, vol.shape)), "×".join(f"{v:g}" for v in vol.voxel_size),
                      str(vol.n_levels), label_text, "OK" if rep.ok else "; ".join(rep.problems))
    con.print(table)
    con.print(f"prepare {t_prepare:.2f} s over {requests} HTTP request(s); verify --deep {t_verify:.2f} s; "
              f"total {time.perf_counter() - t0:.2f} s")
    con.print(f"volumes under {home / 'prepared' / 'snemi3d'}")
    con.print("[yellow]This ran on a small synthetic replica in SNEMI3D's published layout, not the real "
              "data.[/yellow] "
              "For the real data (internet needed): `emdata prepare snemi3d` with EMDATA_MIRROR unset.")
    if not all(r.ok for r in reports):
        raise RuntimeError("demo volumes failed verification: " + "; ".join(p for r in reports for p in r.problems))
