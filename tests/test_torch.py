"""emdata.torch: reproducible patches, resampling, samplers, targets, mixing, DDP shares."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emdata.store.volume import open_volume  # noqa: E402
from emdata.testing.replica_sets import prepared_replicas  # noqa: E402
from emdata.torch import (  # noqa: E402
    CONNECTOMICS_LABEL_SPACE,
    IGNORE,
    Foreground,
    MinInstances,
    MixedPatchDataset,
    NoValidLocationError,
    PatchDataset,
    make_loader,
)
from emdata.torch.collate import widen  # noqa: E402
from emdata.torch.resample import resample  # noqa: E402
from emdata.torch.targets import affinities, boundaries, relabel  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    home = tmp_path_factory.mktemp("replicas")
    with prepared_replicas(home, ["snemi3d", "mitoem2", "cremi"]) as volumes:
        return {d: [str(v.path) for v in vols if v.split == "train"] for d, vols in volumes.items()}


def _samples(ds: PatchDataset, workers: int, context: str | None, n: int = 10) -> list[tuple]:
    loader = make_loader(ds, batch_size=1, num_workers=workers, multiprocessing_context=context)
    out = []
    for batch in loader:
        out.append((batch["raw"].numpy().tobytes(), batch["semantic"].numpy().tobytes(),
                    tuple(batch["meta"]["offset_nm"][0].tolist()), batch["meta"]["volume"][0]))
    return out[:n]


def test_samples_are_identical_across_workers_and_start_methods(prepared: dict[str, list[str]]) -> None:
    ds = PatchDataset(prepared["snemi3d"] + prepared["cremi"], (4, 32, 32), targets=["semantic"],
                      samples_per_epoch=10, seed=7, label_space=CONNECTOMICS_LABEL_SPACE, voxel_size=(40, 8, 8))
    reference = _samples(ds, 0, None)
    assert len({s[2] for s in reference}) > 5, "samples differ from each other"
    for workers, context in ((1, "fork"), (2, "fork"), (2, "spawn")):
        assert _samples(ds, workers, context) == reference, (workers, context)
    other_epoch = [ds.sample(1, i)["meta"]["offset_nm"].tolist() for i in range(10)]
    assert other_epoch != [list(s[2]) for s in reference]


def test_direct_read_is_voxel_exact(prepared: dict[str, list[str]]) -> None:
    vol = open_volume(prepared["snemi3d"][0])
    ds = PatchDataset([vol], (6, 40, 48), labels=["neurons"], samples_per_epoch=5)
    s = ds.sample(0, 3)
    o = (s["meta"]["offset_nm"] / np.array(vol.voxel_size)).astype(int)
    box = tuple(slice(a, a + n) for a, n in zip(o, (6, 40, 48)))
    assert s["raw"].dtype == np.uint8 and np.array_equal(s["raw"][0], vol.raw[box])
    assert np.array_equal(s["labels/neurons"], np.asarray(vol.labels["neurons"][box]).astype(np.int64))


def test_level_choice_and_anisotropic_resampling(prepared: dict[str, list[str]]) -> None:
    vol = open_volume(prepared["snemi3d"][0])  # 30×6×6 nm; level 1 is 30×12×12
    exact = PatchDataset([vol], (4, 32, 32), voxel_size=(30, 12, 12), samples_per_epoch=3).sample(0, 0)
    assert exact["meta"]["level"] == 1
    o = (exact["meta"]["offset_nm"] / np.array([30, 12, 12])).astype(int)
    assert np.array_equal(exact["raw"][0], vol.level(1)[o[0]:o[0] + 4, o[1]:o[1] + 32, o[2]:o[2] + 32])
    resampled = PatchDataset([vol], (4, 32, 32), voxel_size=(30, 9, 9), samples_per_epoch=3).sample(0, 1)
    assert resampled["meta"]["level"] == 0 and resampled["raw"].dtype == np.uint8
    # independent reference: scipy's linear interpolation at the target voxel centres, slice by slice
    # (each output slice comes from its own source slice only: z is never mixed into xy)
    from scipy.ndimage import map_coordinates

    z0 = int(np.rint(resampled["meta"]["offset_nm"][0] / 30))
    centres = [(resampled["meta"]["offset_nm"][axis] + (np.arange(32) + 0.5) * 9) / 6 - 0.5 for axis in (1, 2)]
    yy, xx = np.meshgrid(*centres, indexing="ij")
    for k in range(4):
        source = np.asarray(vol.raw[z0 + k], dtype=np.float64)
        expected = np.rint(map_coordinates(source, [yy, xx], order=1, mode="nearest"))
        assert np.abs(resampled["raw"][0, k].astype(np.float64) - expected).max() <= 1  # float32 vs float64 rounding
        assert (resampled["raw"][0, k] == expected).mean() > 0.98


def test_linear_resampling_on_a_hand_computed_example() -> None:
    row = np.array([[[0, 10, 20, 30]]], dtype=np.float32)
    # output voxel i sits at source position (i + 0.5) * 0.5 - 0.5, clamped to the array
    out = resample(row, (1, 1, 8), (1.0, 1.0, 0.5), 0.0, linear=True)
    assert out[0, 0].tolist() == [0.0, 2.5, 7.5, 12.5, 17.5, 22.5, 27.5, 30.0]
    halved = resample(np.array([[[0, 10, 20, 30]]], dtype=np.uint8), (1, 1, 2), (1.0, 1.0, 2.0), 0.0, linear=True)
    assert halved[0, 0].tolist() == [5, 25]  # positions 0.5 and 2.5: means of neighbours, integers kept


def test_patch_in_nm_and_2d(prepared: dict[str, list[str]]) -> None:
    ds = PatchDataset(prepared["snemi3d"], patch_size_nm=(120, 384, 384), samples_per_epoch=2)
    assert ds.patch_shape == (4, 64, 64)
    flat = PatchDataset(prepared["snemi3d"], (64, 64), targets=["semantic"], samples_per_epoch=2).sample(0, 0)
    assert flat["raw"].shape == (1, 64, 64) and flat["semantic"].shape == (64, 64)


def test_foreground_sampler_always_hits_the_class(prepared: dict[str, list[str]]) -> None:
    ds = PatchDataset(prepared["mitoem2"], (4, 16, 16), targets=["semantic"], samples_per_epoch=60,
                      sampler=Foreground("semantic", class_probs={2: 1.0}))  # mito_boundary only
    boundary = ds.space.index("mito_boundary")
    assert all((ds.sample(0, i)["semantic"] == boundary).any() for i in range(60))


def test_min_instances_sampler(prepared: dict[str, list[str]]) -> None:
    ds = PatchDataset(prepared["cremi"], (2, 24, 24), labels=["neuron_ids"], samples_per_epoch=30,
                      sampler=MinInstances("neuron_ids", k=3))
    for i in range(30):
        s = ds.sample(0, i)
        assert s["meta"]["sampler_ok"] and len(np.unique(s["labels/neuron_ids"])) >= 3


def test_volumes_without_a_valid_location_are_excluded(prepared: dict[str, list[str]], caplog) -> None:
    vols = prepared["snemi3d"] + prepared["mitoem2"]
    ds = PatchDataset(vols, (20, 140, 140), samples_per_epoch=5)  # 600×840×840 nm; mitoem2 volumes are smaller
    assert {p.dataset for p in ds._plans} == {"snemi3d"}
    assert "mitoem2/beta-train01 excluded" in caplog.text and "do not fit" in caplog.text
    with pytest.raises(NoValidLocationError, match="no volume can provide these patches"):
        PatchDataset(prepared["mitoem2"], (20, 140, 140))


def test_unannotated_classes_never_appear_as_background(prepared: dict[str, list[str]]) -> None:
    space = list(CONNECTOMICS_LABEL_SPACE)
    snemi = PatchDataset(prepared["snemi3d"], (4, 32, 32), targets=["semantic", "classes"], label_space=space,
                         samples_per_epoch=20)
    mito = PatchDataset(prepared["mitoem2"], (4, 32, 32), targets=["semantic"], label_space=space,
                        samples_per_epoch=20)
    for i in range(20):
        s, m = widen(snemi.sample(0, i)), widen(mito.sample(0, i))  # int64, ignore value for unknown
        assert s["annotated"].tolist() == [True, True, False, False, False]
        assert not (s["semantic"] == 0).any() and set(np.unique(s["semantic"])) <= {IGNORE, 1}
        assert s["classes"].shape == (4, 4, 32, 32) and not s["classes"][1:].any()
        assert m["annotated"].tolist() == [True, False, False, True, True]
        assert not (m["semantic"] == 0).any() and set(np.unique(m["semantic"])) <= {IGNORE, 3, 4}
    # a dataset that annotates the whole space does get background
    full = PatchDataset(prepared["mitoem2"], (4, 32, 32), targets=["semantic"], samples_per_epoch=5)
    assert any((full.sample(0, i)["semantic"] == 0).any() for i in range(5))


def test_ignore_classes_become_background_or_ignore(prepared: dict[str, list[str]]) -> None:
    common = dict(targets=["semantic"], samples_per_epoch=40, sampler=Foreground("semantic", class_probs={2: 1.0}))
    as_bg = PatchDataset(prepared["mitoem2"], (4, 16, 16), ignore_classes=["mito_boundary"], **common)
    as_ignore = PatchDataset(prepared["mitoem2"], (4, 16, 16), ignore_classes=["mito_boundary"],
                             ignore_mode="ignore", **common)
    b = as_bg.space.index("mito_boundary")
    for i in range(10):
        bg, ig = widen(as_bg.sample(0, i)), widen(as_ignore.sample(0, i))
        assert not (bg["semantic"] == b).any() and not (ig["semantic"] == b).any()
        assert ((bg["semantic"] == 0) & (ig["semantic"] == IGNORE)).any()


def test_ignore_classes_do_not_need_to_be_annotated() -> None:
    from emdata.torch.targets import LabelSpace, plan_labels, semantic_target

    meta = {"cells": {"kind": "semantic", "annotates": ["background", "neuron", "cleft", "mitochondria"],
                      "mapping": {"0": {"name": "background"}, "1": {"name": "neuron"}}}}
    strict = plan_labels(meta, LabelSpace(list(CONNECTOMICS_LABEL_SPACE)))
    merged = plan_labels(meta, LabelSpace(list(CONNECTOMICS_LABEL_SPACE), ignore_classes=["mito_boundary"]))
    assert not strict.complete and merged.complete
    labels = {"cells": np.array([[[0, 1]]])}
    assert semantic_target(labels, strict, LabelSpace(list(CONNECTOMICS_LABEL_SPACE))).tolist() == [[[IGNORE, 1]]]
    space = LabelSpace(list(CONNECTOMICS_LABEL_SPACE), ignore_classes=["mito_boundary"])
    assert semantic_target(labels, merged, space).tolist() == [[[0, 1]]]


def test_mixing_follows_the_weights_not_the_sizes(prepared: dict[str, list[str]]) -> None:
    small = PatchDataset(prepared["cremi"][:1], (2, 16, 16), samples_per_epoch=1)
    large = PatchDataset(prepared["snemi3d"] + prepared["mitoem2"], (2, 16, 16), samples_per_epoch=1)
    mixed = MixedPatchDataset({"small": (small, 1.0), "large": (large, 2.0)}, samples_per_epoch=3000)
    sources = [mixed.sample(0, i)["meta"]["source"] for i in range(3000)]
    share = sources.count("large") / 3000
    assert abs(share - 2 / 3) <= 0.03, share


def test_targets_on_known_labels() -> None:
    ids = np.zeros((1, 4, 4), np.uint64)
    ids[0, :, :2] = 2**63 + 5
    ids[0, :, 2:] = 7
    ids[0, 3, 3] = 0
    assert relabel(ids).tolist() == [[[2, 2, 1, 1], [2, 2, 1, 1], [2, 2, 1, 1], [2, 2, 1, 0]]]
    assert boundaries(ids)[0].tolist() == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 1], [0, 1, 1, 1]]
    aff, mask = affinities(ids, [(0, 0, 1)])
    assert aff[0, 0].tolist() == [[1, 0, 1, 0], [1, 0, 1, 0], [1, 0, 1, 0], [1, 0, 0, 0]]
    assert mask[0, 0, :, 3].tolist() == [0, 0, 0, 0]


def _rank_worker(rank: int, world: int, init: str, paths: list[str], out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    ds = PatchDataset(paths, (2, 16, 16), samples_per_epoch=24, seed=3)
    seen = [(int(k), float(b["meta"]["offset_nm"][0, 1])) for k, b in enumerate(make_loader(ds, batch_size=1))]
    Path(out).write_text(repr([(rank, s) for s in seen]))
    dist.destroy_process_group()


def test_ddp_ranks_draw_disjoint_shares(prepared: dict[str, list[str]], tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_rank_worker, args=(r, 2, init, prepared["snemi3d"], str(tmp_path / f"r{r}")))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    shares = [eval((tmp_path / f"r{r}").read_text()) for r in range(2)]
    assert [len(s) for s in shares] == [12, 12]
    ds = PatchDataset(prepared["snemi3d"], (2, 16, 16), samples_per_epoch=24, seed=3)
    expected = {i: float(ds.sample(0, i)["meta"]["offset_nm"][1]) for i in range(24)}
    for rank, share in enumerate(shares):
        for k, (_, (_, y)) in enumerate(share):
            assert y == expected[rank + 2 * k]  # rank r draws samples r, r+2, r+4, …
