"""torch-em on the same volume, run inside the peers' virtual environment (see README.md).

Usage: <peers python> torchem_bench.py VOLUME.ome.zarr Z,Y,X WORKERS N
Prints one JSON line {case: patches/s}. Reads the emdata volume's level-0 arrays directly
(zarr v3, keys "0" and "labels/cells/0"), batch size 1, after a warm-up.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from torch_em.data import SegmentationDataset
from torch_em.segmentation import default_segmentation_dataset


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
    workers, n = int(sys.argv[3]), int(sys.argv[4])
    warm = 4 + 2 * workers
    plain = SegmentationDataset(path, "0", path, "labels/cells/0", patch, raw_transform=None, label_transform=None,
                                transform=None, n_samples=n + warm, dtype=torch.float32, label_dtype=torch.int64)
    default = default_segmentation_dataset(path, "0", path, "labels/cells/0", patch, n_samples=n + warm)
    print(json.dumps({"torch-em SegmentationDataset (no transforms)": rate(plain, workers, n, warm),
                      "torch-em default_segmentation_dataset": rate(default, workers, n, warm)}))


if __name__ == "__main__":
    main()
