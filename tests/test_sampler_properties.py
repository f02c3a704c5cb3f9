"""Property-based tests of the patch geometry: over voxel ratios, patch sizes and volume sizes,
every origin is valid, every patch lies inside the volume, and a foreground voxel the sampler
can pick lies inside its patch."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from emdata.store.writer import LabelLayerData, write_volume
from emdata.torch import Foreground, PatchDataset
from emdata.torch.samplers import origin_range, reach_range, target_voxel

RATIOS = [0.5, 0.75, 1.0, 1.2, 4 / 3, 1.5, 5 / 3, 2.0, 2.5, 3.0]


@settings(max_examples=300, deadline=None)
@given(n0=st.integers(1, 400), vs0=st.sampled_from([1.0, 4.0, 6.0, 8.0, 30.0, 40.0]),
       ratio=st.sampled_from(RATIOS), patch=st.integers(1, 64),
       region=st.none() | st.tuples(st.floats(0, 1), st.floats(0, 1)))
@example(n0=1, vs0=1.0, ratio=0.5, patch=1, region=(0.0, 0.5))  # no level-0 centre in any patch: reach is empty
def test_origins_are_valid_and_reachable_voxels_lie_in_their_patch(n0: int, vs0: float, ratio: float, patch: int,
                                                                   region: tuple[float, float] | None) -> None:
    t = vs0 * ratio
    extent = n0 * vs0
    box = None if region is None else (min(region) * extent, max(region) * extent + 1e-3)
    lo, hi = origin_range(extent, t, patch, box)
    if hi < lo:
        return  # the patch does not fit: the volume is excluded
    assert lo >= 0 and (hi + patch) * t <= extent * (1 + 1e-9), "every patch lies inside the volume"
    if box is not None:
        assert lo * t >= box[0] - 1e-6 and (hi + patch) * t <= box[1] + 1e-6, "and inside its region"
    a, b = reach_range(n0, vs0, t, lo, hi, patch)
    voxels = np.arange(n0)
    g = target_voxel(voxels, (vs0,), (t,))
    assert 0 <= a <= b <= n0
    assert (a < b) == bool(((g >= lo) & (g <= hi + patch - 1)).any()), "empty only when no centre is in reach"
    for v in voxels:
        first = int(np.clip(g[v] - patch + 1, lo, hi))
        last = int(np.clip(g[v], first, hi))
        assert lo <= first <= last <= hi, "the sampler's origin range is never empty"
        holds = first <= g[v] <= last + patch - 1
        assert holds == (a <= v < b), (v, g[v], first, last)


def _volume(root: Path, shape: tuple[int, int, int], vs0: tuple[float, float, float], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    sem = (rng.random(shape) < 0.02).astype(np.uint8)
    sem[tuple(n - 1 for n in shape)] = 1  # always some foreground in the far corner
    raw = rng.integers(0, 255, shape, dtype=np.uint8)
    classes = [{"value": 0, "name": "bg", "ontology": "background"},
               {"value": 1, "name": "m", "ontology": "mitochondria"}]
    return write_volume(root / f"v{seed}.ome.zarr", raw, vs0, labels=[LabelLayerData("mito", sem, "semantic", classes)],
                        meta={"dataset": "demo", "volume": f"v{seed}", "split": "train"})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.tuples(st.integers(3, 12), st.integers(16, 70), st.integers(16, 70)),
       vs0=st.sampled_from([(30.0, 6.0, 6.0), (40.0, 4.0, 4.0), (8.0, 8.0, 8.0)]),
       ratios=st.tuples(st.sampled_from(RATIOS), st.sampled_from(RATIOS)),
       patch=st.tuples(st.integers(1, 3), st.integers(2, 16), st.integers(2, 16)), seed=st.integers(0, 1000),
       p_uniform=st.sampled_from([0.0, 0.3]))
def test_foreground_patches_are_always_inside(shape, vs0, ratios, patch, seed, p_uniform) -> None:
    target = (vs0[0] * ratios[0], vs0[1] * ratios[1], vs0[2] * ratios[1])
    with tempfile.TemporaryDirectory() as tmp:
        path = _volume(Path(tmp), shape, vs0, seed)
        extent = np.array(shape) * np.array(vs0)
        try:
            ds = PatchDataset([path], patch, voxel_size=target, sampler=Foreground("mito", p_uniform=p_uniform),
                              targets=["semantic"], samples_per_epoch=8, seed=seed)
        except ValueError as exc:  # NoValidLocationError: the patch does not fit, or no reachable foreground
            assert "excluded" in str(exc)
            return
        for i in range(8):
            s = ds.sample(0, i)
            start = s["meta"]["offset_nm"]
            assert (start >= 0).all() and (start + np.array(patch) * np.array(target) <= extent + 1e-6).all()
            assert s["raw"].shape == (1, *patch) and s["semantic"].shape == tuple(patch)
