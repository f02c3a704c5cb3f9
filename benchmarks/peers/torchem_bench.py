"""torch-em on the same volume, run inside the peers' virtual environment (see README.md).

Usage: <peers python> torchem_bench.py VOLUME.ome.zarr Z,Y,X WORKERS[,WORKERS...] N [--cold]
Prints one JSON line {"<case>|<workers>": patches/s}. Reads the emdata volume's level-0 arrays
directly (zarr v3, keys "0" and "labels/cells/0"), batch size 1, DataLoader workers forked, after
a warm-up. ``--cold``: the volume's pages are dropped from the page cache before each case
(``posix_fadvise(DONTNEED)`` on every file), as the emdata cases are.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
from torch_em.data import SegmentationDataset
from torch_em.segmentation import default_segmentation_dataset


def drop_pages(path: str) -> None:
    for folder, _, files in os.walk(os.path.realpath(path)):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def rate(dataset, workers: int, n: int, warm: int) -> float:  # type: ignore[no-untyped-def]
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers, shuffle=True,
                                         multiprocessing_context="fork" if workers else None)
    started = None
    for count, _ in enumerate(loader, start=1):
        if count == warm:
            started = time.perf_counter()
        if count == warm + n:
            break
    return n / (time.perf_counter() - started)


def main() -> None:
    path, patch = sys.argv[1], tuple(int(v) for v in sys.argv[2].split(","))
    workers_list, n, cold = [int(w) for w in sys.argv[3].split(",")], int(sys.argv[4]), "--cold" in sys.argv
    out = {}
    for workers in workers_list:
        warm = 4 + 2 * workers
        plain = SegmentationDataset(path, "0", path, "labels/cells/0", patch, raw_transform=None, label_transform=None,
                                    transform=None, n_samples=n + warm, dtype=torch.float32, label_dtype=torch.int64)
        default = default_segmentation_dataset(path, "0", path, "labels/cells/0", patch, n_samples=n + warm)
        for name, ds in (("torch-em SegmentationDataset (no transforms)", plain),
                         ("torch-em default_segmentation_dataset", default)):
            if cold:
                drop_pages(path)
            out[f"{name}|{workers}"] = rate(ds, workers, n, warm)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
