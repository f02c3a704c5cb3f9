"""A randomized kill and race campaign against ``prepare``, ``cache clean`` and ``--force``.

Replicas of SNEMI3D and MitoEM2 (a zip that is extracted) are served on 127.0.0.1. Every case
starts from a fresh ``EMDATA_HOME`` (sometimes already prepared) and does one of:

- **kill**: a ``prepare`` (sometimes ``--force``) is SIGKILLed, either at a chosen point (a
  download block, an archive member, the raw or label pyramid, the commit, the link switch,
  retiring the old version, the manifest update) or after a random delay;
- **race**: two or three ``prepare`` runs (some ``--force``) at once, sometimes with a
  ``cache clean --prepared`` started at a random moment, while a reader keeps reading the
  volume it opened.

Then one plain ``prepare`` runs and the store is checked: it succeeds, ``verify --deep`` is
clean, nothing is left over, and every volume is bit-identical (timestamps and ids aside) to
a clean run's (one whose download was adopted after a kill between the file's rename and its
record is counted apart: its provenance names the local file as where it was fetched from).
A *data-loss event* is a volume that was complete before a kill and is not
listed, or not intact, right after it; readers must never see zeros or a raw error.

Run: .venv/bin/python benchmarks/torture.py [--cases N] [--minutes M] [--seed S]   (or `make torture`)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from emdata.testing import MirrorServer, replicas

DATASETS: dict[str, dict[str, Any]] = {
    "snemi3d": {"write": lambda root: replicas.write_snemi3d_replica(root, shape=(8, 128, 128)), "options": {}},
    "mitoem2": {"write": lambda root: replicas.write_mitoem2_replica(root, subsets=("beta",), shape=(16, 96, 112)),
                "options": {"subset": ["beta"]}},
}
KILL_POINTS = {
    "download": "emdata.sources.download._publish_record",
    "extraction": "emdata.sources.archive._copy_bounded",
    "raw pyramid": "emdata.store.writer._write_pyramid:1",
    "label pyramid": "emdata.store.writer._write_pyramid:2",
    "commit": "emdata.store.publish.commit",
    "link switch": "emdata.store.publish._link",
    "retire old version": "emdata.store.publish.retire",
    "manifest": "emdata.datasets._common.record_volume",
}
CHILD = """
import importlib, json, os, signal, sys
spec = json.loads(sys.argv[1])
for target, n in spec.get("kill", {}).items():
    mod_name, attr = target.rsplit(".", 1)
    mod = importlib.import_module(mod_name)
    real, calls = getattr(mod, attr), [0]
    def hooked(*a, _real=real, _calls=calls, _n=n, **k):
        _calls[0] += 1
        if _calls[0] == _n:
            os.kill(os.getpid(), signal.SIGKILL)
        return _real(*a, **k)
    setattr(mod, attr, hooked)
import emdata
if spec["verb"] == "clean":
    from emdata.cache import clean
    clean(spec["dataset"], prepared=True)
else:
    emdata.prepare(spec["dataset"], force=spec.get("force", False), **spec.get("options", {}))
"""


def _child(spec: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _pin(root: Path, target: Path) -> Path:
    from urllib.parse import unquote, urlsplit

    from emdata.catalog import get_card

    sums = {}
    for dataset in DATASETS:
        for source in get_card(dataset).sources:
            parts = urlsplit(source.url)
            path = root / parts.netloc / unquote(parts.path).lstrip("/")
            if path.is_file():
                sums[source.url] = hashlib.sha256(path.read_bytes()).hexdigest()
    target.write_text(json.dumps(sums))
    return target


def fingerprint(prepared: Path, origin: bool = True) -> dict[str, str]:
    """Per file of every volume's published version (the marker aside): a digest, timestamps left out
    (and with ``origin`` False, the URL or path each source was fetched from)."""
    from emdata.store.publish import COMPLETE_MARKER, resolve

    out = {}
    for vol in sorted(prepared.glob("*.ome.zarr")):
        folder = resolve(vol)
        for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER):
            data = f.read_bytes()
            if f.name == "zarr.json":
                doc = json.loads(data)
                em = doc.get("attributes", {}).get("emdata", {})
                em.pop("created", None)
                for source in [] if origin else em.get("provenance", {}).get("sources", []):
                    source.pop("fetched_from", None)
                data = json.dumps(doc, sort_keys=True).encode()
            out[f"{vol.name}/{f.relative_to(folder)}"] = hashlib.blake2b(data, digest_size=16).hexdigest()
    return out


class Campaign:
    def __init__(self, work: Path, seed: int) -> None:
        self.work = work
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.problems: list[str] = []
        self.reference: dict[str, dict[str, str]] = {}
        self.duration: dict[str, float] = {}  # seconds of a clean prepare, to aim random kills inside one

    def env(self, home: Path) -> dict[str, str]:
        return {**os.environ, "EMDATA_HOME": str(home), "EMDATA_QUIET": "1"}

    def run(self, spec: dict[str, Any], home: Path) -> int:
        proc = _child(spec, self.env(home))
        _, err = proc.communicate(timeout=300)
        if proc.returncode not in (0, -signal.SIGKILL):
            self.counts["runs refused with an error"] += 1
            self.last_error = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
        return proc.returncode

    def prepare_spec(self, dataset: str, force: bool = False) -> dict[str, Any]:
        return {"verb": "prepare", "dataset": dataset, "force": force, "options": DATASETS[dataset]["options"]}

    def setup(self) -> None:
        for dataset in DATASETS:
            home = self.work / f"reference-{dataset}"
            t0 = time.monotonic()
            assert self.run(self.prepare_spec(dataset), home) == 0, f"clean run of {dataset} failed"
            self.duration[dataset] = time.monotonic() - t0
            self.reference[dataset] = fingerprint(home / "prepared" / dataset)

    def check(self, dataset: str, home: Path, case: str) -> None:
        from emdata.cache import leftovers
        from emdata.store.verify import verify_volume

        code = self.run(self.prepare_spec(dataset), home)
        prepared = home / "prepared" / dataset
        os.environ["EMDATA_HOME"] = str(home)
        if code != 0:
            self.problems.append(f"{case}: the recovery prepare failed ({code}): {getattr(self, 'last_error', '')}")
            return
        bad = [p for v in sorted(prepared.glob("*.ome.zarr")) for p in verify_volume(v, deep=True).problems]
        if bad:
            self.problems.append(f"{case}: verify --deep: {bad[0]}")
        mine, ref = fingerprint(prepared), self.reference[dataset]
        if mine == ref:
            self.counts["stores bit-identical to a clean run"] += 1
        elif fingerprint(prepared, False) == fingerprint(self.work / f"reference-{dataset}/prepared/{dataset}", False):
            self.counts["stores identical but for provenance.fetched_from"] += 1
        else:
            differ = sorted(k for k in set(mine) | set(ref) if mine.get(k) != ref.get(k))
            self.problems.append(f"{case}: store differs from the clean run in {len(differ)} file(s): {differ[:4]}")
        left = leftovers(dataset)
        if left:
            self.problems.append(f"{case}: leftovers after the next run: {[x['path'] for x in left]}")

    def intact(self, prepared: Path) -> dict[str, str]:
        from emdata.store.publish import promise_problems

        return {v.name: "ok" for v in prepared.glob("*.ome.zarr") if not promise_problems(v)}

    def kill_case(self, dataset: str, home: Path, case: str) -> None:
        prepared = home / "prepared" / dataset
        before = self.intact(prepared)
        targeted = self.rng.random() < 0.5
        force = bool(before) and (not targeted or self.rng.random() < 0.6)  # a timed kill needs work to hit
        spec = self.prepare_spec(dataset, force)
        if targeted:
            point = self.rng.choice(sorted(KILL_POINTS))
            target, _, n = KILL_POINTS[point].partition(":")
            if point in ("download", "extraction"):
                shutil.rmtree(home / "downloads", ignore_errors=True)
            spec["kill"] = {target: int(n or 1)}
            code = self.run(spec, home)
            self.counts[f"kill at {point}"] += 1
            self.what = f"kill at {point}{' --force' if force else ''}"
        else:
            proc = _child(spec, self.env(home))
            delay = self.rng.uniform(0.5, self.duration[dataset])
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            code = proc.returncode
            self.counts["kill after a random delay"] += 1
            self.what = f"kill after {delay:.1f} s{' --force' if force else ''}"
        if code == -signal.SIGKILL:
            self.counts["kills"] += 1
        after = self.intact(prepared)
        lost = sorted(set(before) - set(after))
        if lost:
            self.counts["data-loss events"] += 1
            self.problems.append(f"{case}: complete volume(s) {lost} not intact right after the kill")
        self.check(dataset, home, f"{case}, {self.what}")

    def race_case(self, dataset: str, home: Path, case: str) -> None:
        from emdata.store.publish import VolumeReplacedError
        from emdata.store.volume import open_volume

        prepared = home / "prepared" / dataset
        n = self.rng.choice((2, 3))
        procs = [_child(self.prepare_spec(dataset, force=self.rng.random() < 0.5), self.env(home)) for _ in range(n)]
        cleaner = None
        stop = threading.Event()
        seen: Counter[str] = Counter()
        reader = None
        if prepared.is_dir() and any(prepared.glob("*.ome.zarr")):
            path = sorted(prepared.glob("*.ome.zarr"))[0]
            vol = open_volume(path)
            expected = np.asarray(vol.raw[...])

            def read() -> None:
                while not stop.is_set():
                    try:
                        same = np.array_equal(np.asarray(vol.raw[...]), expected)
                        seen["reads"] += 1
                        seen["wrong data"] += not same
                    except VolumeReplacedError:
                        seen["clear 'removed' errors"] += 1
                        return
                    except Exception as exc:  # a raw error is a failure
                        seen[f"raw error {type(exc).__name__}"] += 1
                        return

            reader = threading.Thread(target=read)
            reader.start()
        if self.rng.random() < 0.4:
            time.sleep(self.rng.uniform(0.0, 2.0))
            cleaner = _child({"verb": "clean", "dataset": dataset}, self.env(home))
            self.counts["cleans racing prepares"] += 1
        codes = [p.wait(300) for p in procs] + ([cleaner.wait(300)] if cleaner else [])
        stop.set()
        if reader is not None:
            reader.join(30)
            vol.close()
        self.counts["races"] += 1
        self.counts["runs refused with an error"] += sum(c != 0 for c in codes)
        if seen["wrong data"] or any(k.startswith("raw error") for k in seen):
            self.problems.append(f"{case}: reader saw {dict(seen)}")
        self.check(dataset, home, case)

    def case(self, i: int) -> None:
        dataset = self.rng.choice(sorted(DATASETS))
        home = self.work / f"case-{i}"
        if self.rng.random() < 0.5:
            shutil.copytree(self.work / f"reference-{dataset}", home, symlinks=True)
        os.environ["EMDATA_HOME"] = str(home)
        kind = "kill" if self.rng.random() < 0.6 else "race"
        name = f"case {i} ({dataset}, {kind})"
        before = len(self.problems)
        (self.kill_case if kind == "kill" else self.race_case)(dataset, home, name)
        self.counts["cases tried"] += 1
        self.counts["failures"] += len(self.problems) > before
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500, help="at most this many cases")
    parser.add_argument("--minutes", type=float, default=4.0, help="stop starting cases after this long")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with tempfile.TemporaryDirectory(prefix="emdata-torture-") as tmp:
        work = Path(tmp)
        mirror = work / "mirror"
        mirror.mkdir()
        for spec in DATASETS.values():
            spec["write"](mirror)
        sums = _pin(mirror, work / "checksums.json")
        with MirrorServer(mirror) as server:
            os.environ.update({"EMDATA_MIRROR": server.url, "EMDATA_CHECKSUMS": str(sums), "EMDATA_OFFLINE": "0"})
            campaign = Campaign(work, seed)
            t0 = time.monotonic()
            campaign.setup()
            i = 0
            while i < args.cases and time.monotonic() - t0 < args.minutes * 60:
                campaign.case(i)
                i += 1
    c = campaign.counts
    print(f"seed {seed}, {time.monotonic() - t0:.0f} s")
    for key in ("cases tried", "kills", "races", "failures", "stores bit-identical to a clean run",
                "stores identical but for provenance.fetched_from", "data-loss events"):
        print(f"{key}: {c[key]}")
    details = {k: v for k, v in sorted(c.items()) if k.startswith(("kill ", "cleans", "runs"))}
    print("details:", ", ".join(f"{k}: {v}" for k, v in details.items()))
    for p in campaign.problems[:20]:
        print("FAILURE", p)
    sys.exit(1 if campaign.problems else 0)


if __name__ == "__main__":
    main()
