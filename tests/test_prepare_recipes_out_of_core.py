"""Every recipe that decodes its own inputs (per-slice PNGs, colour-coded or run-length labels,
NIfTI, HDF5 masks, rendered annotations) prepares out of core: its peak RSS does not follow the
size of the volume.

One subprocess prepares the dataset's replica twice, on one writer thread with
``scheduler="in-process"`` (so the region-by-region writer is used whatever the size): first a
small replica, then one four times larger (a few tens of MB decoded), each through the real
download code (its own loopback mirror and ``EMDATA_HOME``). The peak RSS of the second run may
exceed the first by less than half of the extra decoded voxels (the rest is allocator noise); a
recipe that decodes its inputs whole exceeds it by at least the extra volume. One case per kind
of input: HDF5 with a value mapping, PNG slices, gzip NIfTI with derived components, run-length
JSON with TIFF images. The fixed bounds of the writer and the
sources (the decoded-page cache, the slabs of the checks over every voxel, the foreground
index's pieces) are lowered in the subprocess so that volumes this small stay above them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from emdata import config
from emdata.testing.offline import offline_environment
from emdata.testing.replica_sets import replica_sets

_MEASURE = r"""
import json, resource, sys
import h5py, nibabel, numcodecs, PIL.Image, scipy.ndimage, scipy.sparse.csgraph, tifffile, zarr  # noqa: F401
import emdata
import emdata.store.writer as writer
from emdata import config
from emdata.store import sharded, fgindex, pyramid, intensity  # noqa: F401
from emdata.formats import lazy
writer.IN_PROCESS_THREADS = 1  # each further thread adds one region in flight
lazy._pages.limit = 4 << 20  # 256 MiB by default
lazy.SLAB_BYTES = 4 << 20  # 64 MiB by default
lazy.reduce_slabs.__defaults__ = (lazy.SLAB_BYTES,)
fgindex.INDEX_PIECE_BYTES = 4 << 20  # 32 MiB by default
dataset, runs = sys.argv[1], json.loads(sys.argv[2])
out = []
for run in runs:
    with config.using(home=run["home"], mirror=run["mirror"], checksums=run["checksums"], offline=False):
        vols = emdata.prepare(dataset, scheduler="in-process", **run["options"])
    with open("/proc/self/status") as f:  # VmHWM: this process's own peak so far
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    out.append({"peak": peak, "volume": max(sum(a.nbytes for a in [v.raw, *v.labels.values()]) for v in vols)})
print(json.dumps(out))
"""


def measure_prepares(dataset: str, cases: list[tuple[dict[str, Any], dict[str, Any]]], workdir: Path) -> list[dict]:
    """Write one replica of ``dataset`` per ``(writer options, prepare options)`` and prepare them one
    after the other in one subprocess; returns per run its peak RSS so far and its largest volume's
    decoded bytes."""
    kit = replica_sets()[dataset]
    writer = getattr(sys.modules[kit.write.__module__], f"write_{dataset.replace('-', '_')}_replica")
    runs = []
    with ExitStack() as stack:
        for k, (writer_options, prepare_options) in enumerate(cases):
            root, home = workdir / f"mirror{k}", workdir / f"home{k}"
            truth = writer(root, **writer_options)
            stack.enter_context(offline_environment(root, home, [dataset]))
            for folder, name in (kit.placed(truth) if kit.placed else {}).items():
                shutil.copytree(folder, config.downloads_dir(dataset) / name, dirs_exist_ok=True)
            here = config.current()
            runs.append({"home": str(here.home), "mirror": here.mirror, "checksums": str(here.checksums),
                         "options": {**kit.options_for(truth), **prepare_options}})
            del truth
        env = {**os.environ, "EMDATA_QUIET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        run = subprocess.run([sys.executable, "-c", _MEASURE, dataset, json.dumps(runs)], capture_output=True,
                             text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


# dataset → (writer options of the small replica, of the one four times larger, prepare options)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "isbi2012": ({"shape": (64, 256, 256), "n_cells": 6, "segmentation_dtype": "uint32"},  # HDF5, value mapping
                 {"shape": (256, 256, 256), "n_cells": 6, "segmentation_dtype": "uint32"}, {}),
    "lucchi-pp": ({"slices": (64, 1), "shape": (256, 256), "label_mode": "grey"},  # PNG slices
                  {"slices": (256, 1), "shape": (256, 256), "label_mode": "grey"}, {"volumes": ["train"]}),
    "mitoem2": ({"subsets": ("mossy",), "n_train": 1, "n_test": 0, "shape": (64, 256, 256)},  # .nii.gz, components
                {"subsets": ("mossy",), "n_train": 1, "n_test": 0, "shape": (256, 256, 256)}, {"subset": "mossy"}),
    "platelet-em": ({"shapes": {"50": (64, 256, 256), "24": (4, 64, 64)}},  # run-length JSON, TIFF in a zip
                    {"shapes": {"50": (256, 256, 256), "24": (4, 64, 64)}}, {"volumes": ["volume-50"]}),
}


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads its RSS from /proc (Linux)")
@pytest.mark.parametrize("dataset", sorted(CASES))
def test_peak_memory_does_not_follow_the_volume(dataset: str, tmp_path: Path) -> None:
    small, large, options = CASES[dataset]
    first, second = measure_prepares(dataset, [(small, options), (large, options)], tmp_path)
    extra_volume = second["volume"] - first["volume"]
    extra_peak = second["peak"] - first["peak"]
    assert extra_volume > 8 << 20, f"{dataset}: the larger replica adds only {extra_volume / 2**20:.0f} MiB"
    assert extra_peak < extra_volume / 2, (
        f"{dataset}: preparing a volume {extra_volume / 2**20:.0f} MiB larger raised the peak RSS by "
        f"{extra_peak / 2**20:.0f} MiB (from {first['peak'] / 2**20:.0f} MiB); memory follows the volume")
