"""Kills, races and full disks around publishing a volume, for real: child processes that
SIGKILL themselves at a chosen point, concurrent prepares of a replica served on loopback,
readers reading while the volume is replaced, and cleaning while a writer writes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import emdata
from emdata import config
from emdata.cache import cache_report, clean
from emdata.store.manifest import read_manifest
from emdata.store.publish import VolumeReplacedError, litter, promise_problems, resolve, versions
from emdata.store.verify import verify_volume
from emdata.store.volume import open_volume
from emdata.store.writer import write_volume
from emdata.testing import write_snemi3d_replica

SHAPE = (4, 64, 64)

# A child `prepare` with hooks: {"module.attr": action}; the hook runs instead of / before the real call.
#   kill        SIGKILL this process at the call
#   kill:N      SIGKILL at the N-th call
#   log:FILE    append a line to FILE, wait 1 s (so concurrent runs overlap), then call
#   pause:N:FILE at the N-th call, create FILE, wait 1.5 s, then call
CHILD = textwrap.dedent("""
    import importlib, json, os, signal, sys, time
    spec = json.loads(sys.argv[1])
    def hook(target, action):
        mod_name, attr = target.rsplit(".", 1)
        mod = importlib.import_module(mod_name)
        real, calls = getattr(mod, attr), [0]
        def hooked(*a, **k):
            calls[0] += 1
            kind, _, arg = action.partition(":")
            if kind == "kill" and calls[0] == int(arg or 1):
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "log":
                with open(arg, "a") as fh:
                    fh.write(f"{os.getpid()}\\n")
                time.sleep(1.0)
            if kind == "pause":
                n, _, flag = arg.partition(":")
                if calls[0] == int(n):
                    open(flag, "w").close()
                    time.sleep(1.5)
            return real(*a, **k)
        setattr(mod, attr, hooked)
    for target, action in spec.get("hooks", {}).items():
        hook(target, action)
    import emdata
    options = spec.get("options", {"volumes": ["train"]})
    emdata.prepare(spec.get("dataset", "snemi3d"), force=spec.get("force", False), **options)
""")


def _child(hooks: dict[str, str] | None = None, force: bool = False, **spec: Any) -> subprocess.Popen[str]:
    spec = json.dumps({"hooks": hooks or {}, "force": force, **spec})
    return subprocess.Popen([sys.executable, "-c", CHILD, spec], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _run(hooks: dict[str, str] | None = None, force: bool = False, **spec: Any) -> subprocess.CompletedProcess[str]:
    proc = _child(hooks, force, **spec)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def replica(mirror_root: Path, mirror: Any) -> Path:
    write_snemi3d_replica(mirror_root, shape=SHAPE)
    return config.prepared_dir("snemi3d")


def _train(prepared: Path) -> Path:
    return prepared / "train.ome.zarr"


def test_kill_between_publish_and_manifest_keeps_the_volume(replica: Path) -> None:
    killed = _run({"emdata.datasets._common.record_volume": "kill"})
    assert killed.returncode == -9
    assert verify_volume(_train(replica)).ok
    assert [v.name for v in emdata.volumes("snemi3d", "train")] == ["train"]  # listed from what is on disk
    emdata.prepare("snemi3d", volumes=["train"])  # a rerun reuses it and records it
    assert list(read_manifest(replica)["volumes"]) == ["train"]
    assert list(replica.glob("dataset.json.tmp-*")) == []


def test_full_disk_at_the_manifest_loses_nothing(replica: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.write_text

    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith("dataset.json.tmp-"):
            real(self, "{", encoding="utf-8")  # a partial temporary file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    emdata.prepare("snemi3d", volumes=["train"])
    assert [p.name for p in replica.glob("dataset.json*")] == ["dataset.json.lock"]  # no manifest, no temp file
    assert [v.name for v in emdata.volumes("snemi3d")] == ["train"]
    monkeypatch.setattr(Path, "write_text", real)
    emdata.prepare("snemi3d", volumes=["train"])
    assert list(read_manifest(replica)["volumes"]) == ["train"]
    assert not any(p.name.startswith("dataset.json.tmp") for p in replica.iterdir())


def test_clean_waits_for_the_writer_and_never_leaves_a_hollow_volume(replica: Path, tmp_path: Path) -> None:
    flag = tmp_path / "raw-written"
    # pause while writing the label pyramid: the raw pyramid is already in the temporary folder
    child = _child({"emdata.store.writer._write_pyramid": f"pause:2:{flag}"})
    deadline = time.monotonic() + 30
    while not flag.exists():
        assert time.monotonic() < deadline and child.poll() is None, child.stderr.read() if child.stderr else ""
        time.sleep(0.02)
    t0 = time.monotonic()
    clean("snemi3d", prepared=True)
    waited = time.monotonic() - t0
    assert child.wait(60) == 0, child.stderr.read() if child.stderr else ""
    assert waited > 0.5  # it waited for the writer instead of deleting under it
    for path in replica.glob("*.ome.zarr"):
        assert promise_problems(path) == []
    # whatever order they ran in, a new prepare gives an intact volume
    (train,) = emdata.prepare("snemi3d", volumes=["train"])
    assert verify_volume(train.path, deep=True).ok and train.raw[...].shape == SHAPE


def test_reuse_rebuilds_a_volume_missing_what_its_marker_promises(replica: Path) -> None:
    import shutil

    emdata.prepare("snemi3d", volumes=["train"])
    shutil.rmtree(resolve(_train(replica)) / "0")
    with pytest.raises(KeyError, match=r"\.train\.ome\.zarr\.v1/0: array missing from .*train\.ome\.zarr"):
        open_volume(_train(replica)).raw  # noqa: B018
    (train,) = emdata.prepare("snemi3d", volumes=["train"])
    assert verify_volume(train.path).ok
    assert train.raw[...].shape == SHAPE


def test_concurrent_prepares_write_once(replica: Path, tmp_path: Path) -> None:
    log = tmp_path / "writes.log"
    children = [_child({"emdata.datasets._common.write_volume": f"log:{log}"}) for _ in range(3)]
    for c in children:
        assert c.wait(60) == 0, c.stderr.read() if c.stderr else ""
    assert len(log.read_text().splitlines()) == 1
    assert verify_volume(_train(replica), deep=True).ok
    assert [n for n, _ in versions(_train(replica))] == [1]


def _write_uniform(path: Path, value: int) -> None:
    raw = np.full((8, 128, 128), value, np.uint8)
    write_volume(path, raw, (8, 8, 8), meta={"dataset": "demo", "volume": "v", "split": "train"})


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from emdata.store.writer import write_volume
    for value in (2, 3, 4, 5):
        write_volume(Path(sys.argv[1]), np.full((8, 128, 128), value, np.uint8), (8, 8, 8),
                     meta={"dataset": "demo", "volume": "v", "split": "train"})
""")


def test_readers_never_see_a_half_replaced_volume(tmp_path: Path) -> None:
    path = tmp_path / "v.ome.zarr"
    _write_uniform(path, 1)
    pinned = open_volume(path)
    assert int(pinned.raw[0, 0, 0]) == 1
    seen: dict[str, list[Any]] = {"pinned": [], "fresh": [], "errors": []}
    done = threading.Event()

    def read() -> None:
        rng = np.random.default_rng(0)
        while not done.is_set():
            z, y, x = rng.integers(0, 4), rng.integers(0, 96), rng.integers(0, 96)
            try:
                seen["pinned"].append(np.unique(pinned.raw[z:z + 4, y:y + 32, x:x + 32]).tolist())
                fresh = open_volume(path)
                seen["fresh"].append(np.unique(fresh.raw[z:z + 4, y:y + 32, x:x + 32]).tolist())
                fresh.close()
            except Exception as exc:
                seen["errors"].append(repr(exc))

    thread = threading.Thread(target=read)
    thread.start()
    writer = subprocess.run([sys.executable, "-c", WRITER, str(path)], capture_output=True, text=True, timeout=60)
    done.set()
    thread.join(10)
    assert writer.returncode == 0, writer.stderr
    assert seen["errors"] == []
    assert seen["pinned"] and all(v == [1] for v in seen["pinned"])  # the version it opened, all along
    assert seen["fresh"] and all(len(v) == 1 and v[0] in (1, 2, 3, 4, 5) for v in seen["fresh"])  # never zeros
    assert int(open_volume(path).raw[0, 0, 0]) == 5
    assert versions(path)[0][0] == 1  # the pinned version survived the replaces
    pinned.close()
    _write_uniform(path, 6)
    assert litter(path) == [] and len(versions(path)) == 1  # and is gone once nobody reads it


def test_reader_of_a_removed_volume_gets_an_error_not_zeros(emdata_home: Path) -> None:
    path = config.prepared_dir("demo") / "v.ome.zarr"
    _write_uniform(path, 7)
    vol = open_volume(path)
    assert int(vol.raw[0, 0, 0]) == 7
    clean("demo", prepared=True)
    with pytest.raises(VolumeReplacedError, match="removed while being read"):
        vol.raw[0:4, 0:64, 0:64]


def test_kill_during_force_replace_leaves_one_copy_after_the_next_run(replica: Path) -> None:
    emdata.prepare("snemi3d", volumes=["train"])
    killed = _run({"emdata.store.publish.retire": "kill"}, force=True)
    assert killed.returncode == -9
    assert verify_volume(_train(replica), deep=True).ok
    left = cache_report()["datasets"]["snemi3d"]["leftovers"]
    assert [Path(x["path"]).name for x in left] == [".train.ome.zarr.v1"] and left[0]["bytes"] > 0
    emdata.prepare("snemi3d", volumes=["train"])
    assert [n for n, _ in versions(_train(replica))] == [2] and litter(_train(replica)) == []


def test_kill_mid_write_leftovers_are_counted_then_removed(replica: Path) -> None:
    killed = _run({"emdata.store.writer._write_pyramid": "kill:2"})
    assert killed.returncode == -9
    assert not _train(replica).exists()
    left = cache_report()["datasets"]["snemi3d"]["leftovers"]
    assert len(left) == 1 and ".train.ome.zarr.tmp-" in left[0]["path"] and left[0]["bytes"] > 0
    emdata.prepare("snemi3d", volumes=["train"])
    assert cache_report()["datasets"]["snemi3d"]["leftovers"] == []


def test_kill_after_the_marker_before_the_link_is_rolled_forward(replica: Path) -> None:
    emdata.prepare("snemi3d", volumes=["train"])
    killed = _run({"emdata.store.publish._link": "kill"}, force=True)
    assert killed.returncode == -9
    assert resolve(_train(replica)).name == ".train.ome.zarr.v1"
    emdata.prepare("snemi3d", volumes=["train"])  # finds version 2 complete: links it, writes nothing new
    assert resolve(_train(replica)).name == ".train.ome.zarr.v2" and [n for n, _ in versions(_train(replica))] == [2]


def test_prepare_of_a_finished_volume_creates_no_file(replica: Path) -> None:
    emdata.prepare("snemi3d", volumes=["train"])
    for lock in replica.glob("*.lock"):
        lock.unlink()
    before = sorted(p.relative_to(replica) for p in replica.rglob("*"))
    emdata.prepare("snemi3d", volumes=["train"])
    assert sorted(p.relative_to(replica) for p in replica.rglob("*")) == before


ENOSPC_CHILD = textwrap.dedent("""
    import errno, sys
    import zarr.storage
    real, calls = zarr.storage.LocalStore.set, [0]
    async def full(self, key, value, *args, **kwargs):
        calls[0] += 1
        if calls[0] > 8:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.root / key))
        return await real(self, key, value, *args, **kwargs)
    zarr.storage.LocalStore.set = full
    from emdata.cli import main
    sys.argv = ["emdata", "prepare", "snemi3d", "--volume", "train"]
    main()
""")


def test_full_disk_during_the_store_write_is_one_line(replica: Path) -> None:
    run = subprocess.run([sys.executable, "-c", ENOSPC_CHILD], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    lines = [line for line in run.stderr.strip().splitlines() if "differs from the published" not in line]
    assert len(lines) == 1, run.stderr  # the replica's shape warning aside, one line
    assert lines[0].startswith("emdata: error: no space left on device writing") and ".train.ome.zarr.tmp-" in lines[0]
    assert litter(_train(replica)) == [] and not _train(replica).exists()
    assert os.path.isdir(replica)


def test_tidy_removes_only_leftovers_never_resumable_work(tmp_path: Path) -> None:
    from emdata.store.publish import tidy, volume_lock

    path = tmp_path / "v.ome.zarr"
    _write_uniform(path, 1)
    keep = [tmp_path / ".v.ome.zarr.building", tmp_path / ".v.ome.zarr.staging", tmp_path / ".w.ome.zarr.tmp-1-ab"]
    gone = [tmp_path / f".v.ome.zarr.{suffix}" for suffix in ("tmp-1-ab", "old-cd", "building.old-ef")]
    for folder in keep + gone:
        (folder / "0").mkdir(parents=True)
    with volume_lock(path):
        removed = tidy(path)
    assert sorted(removed) == sorted(gone) and all(f.is_dir() for f in keep) and not any(f.exists() for f in gone)
    assert int(open_volume(path).raw[0, 0, 0]) == 1


def test_pickled_volume_reads_the_version_it_was_opened_on(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "v.ome.zarr"
    _write_uniform(path, 1)
    vol = open_volume(path)
    assert int(vol.raw[0, 0, 0]) == 1
    blob = pickle.dumps(vol)
    _write_uniform(path, 2)  # `vol` pins version 1, so it stays
    copy = pickle.loads(blob)
    assert int(copy.raw[0, 0, 0]) == 1 and int(open_volume(path).raw[0, 0, 0]) == 2


def test_kill_mid_extraction_leftovers_are_removed_by_the_next_run(mirror_root: Path, mirror: Any) -> None:
    from emdata.testing import write_mitoem2_replica

    write_mitoem2_replica(mirror_root, subsets=("beta",), n_train=1, n_test=0)
    options = {"subset": ["beta"]}
    killed = _run({"emdata.sources.archive._copy_bounded": "kill:2"}, dataset="mitoem2", options=options)
    assert killed.returncode == -9
    downloads = config.downloads_dir("mitoem2")
    assert len(list(downloads.glob(".*.tmp-*"))) == 1
    assert [Path(x["path"]).parent.name for x in cache_report()["datasets"]["mitoem2"]["leftovers"]] == ["mitoem2"]
    emdata.prepare("mitoem2", **options)
    assert list(downloads.glob(".*.tmp-*")) == [] and cache_report()["datasets"]["mitoem2"]["leftovers"] == []


def test_download_leftovers_of_a_live_writer_are_kept(emdata_home: Path) -> None:
    from filelock import FileLock

    from emdata.cache import tidy_downloads

    root = config.downloads_dir("demo")
    leftover = root / ".x.tmp-1-ab"
    leftover.mkdir(parents=True)
    held, release = threading.Event(), threading.Event()

    def write() -> None:  # a live extraction of `x` holds its lock while its temporary folder exists
        with FileLock(str(root / "x.lock")):
            held.set()
            release.wait(10)

    writer = threading.Thread(target=write)
    writer.start()
    assert held.wait(10)
    assert tidy_downloads("demo") == [] and leftover.is_dir()
    release.set()
    writer.join(10)
    assert tidy_downloads("demo") == [leftover] and not leftover.exists()
