"""emdata.torch.augment: label-exact geometry, zero strength is the identity, known permutations,
misalignment moves raw and labels together, no z mixing on anisotropic data, the margin read
from the volume, identical samples across loaders, the preview grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from emdata.store.writer import LabelLayerData, write_volume
from emdata.torch import IGNORE, PatchDataset, make_loader
from emdata.torch.augment import (
    Artefacts,
    Compose,
    ContrastBrightness,
    FlipTurn,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    LocalContrast,
    LowContrast,
    Misalign,
    MissingSection,
    MotionBlur,
    Sample,
    Warp,
    em_augment,
    preview_grid,
)
from emdata.torch.augment.preview import tile
from emdata.torch.collate import widen
from emdata.torch.targets import boundaries

ANISO = (30.0, 6.0, 6.0)
ISO = (8.0, 8.0, 8.0)
BIG = np.uint64(2**63 + 12345)


def sample_of(raw: np.ndarray, ids: np.ndarray, voxel: tuple[float, float, float]) -> Sample:
    return Sample(raw, {"cells": ids}, np.ones(raw.shape, bool), voxel)


def blocky_ids(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """uint64 ids ≥ 2**63 in blocks (a float32 cast would merge them)."""
    coarse = rng.integers(0, 50, (shape[0], shape[1] // 4 + 1, shape[2] // 4 + 1)).astype(np.uint64)
    return (np.repeat(np.repeat(coarse, 4, 1), 4, 2)[:, : shape[1], : shape[2]] * np.uint64(3) + BIG)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rotation=st.floats(0, 180), scale=st.floats(0, 0.3),
       sigma=st.floats(0, 30), tilt=st.floats(0, 30), iso=st.booleans(),
       shape=st.tuples(st.integers(1, 4), st.integers(4, 20), st.integers(4, 20)))
def test_warped_label_ids_are_a_subset_and_anisotropic_sections_stay_sections(
        seed: int, rotation: float, scale: float, sigma: float, tilt: float, iso: bool,
        shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(seed)
    voxel = ISO if iso else ANISO
    warp = Warp(rotation_deg=rotation, scale=scale, elastic_sigma_nm=sigma, tilt_deg=tilt,
                control_spacing_nm=(40.0, 40.0, 40.0))
    margin = warp.margin(shape, voxel)
    window = tuple(n + 2 * m for n, m in zip(shape, margin))
    ids = blocky_ids(rng, window)
    z_of = np.broadcast_to(np.arange(window[0], dtype=np.uint8)[:, None, None] * 10 + 5, window).copy()
    out = warp(sample_of(z_of, ids, voxel), rng, shape)
    assert out.shape == shape and out.labels["cells"].dtype == np.uint64
    assert set(np.unique(out.labels["cells"])) <= set(np.unique(ids))
    assert out.valid.all(), "the declared margin must cover every draw"
    if not iso:  # z never mixed: section z of the output comes from section z + margin of the input, raw and labels
        assert margin[0] == 0
        assert (out.raw == z_of[:, :1, :1][: shape[0]]).all()
        for z in range(shape[0]):
            assert set(np.unique(out.labels["cells"][z])) <= set(np.unique(ids[z]))


ZERO = [Warp(rotation_deg=0, scale=0, elastic_sigma_nm=0), Gamma(0.0),
        ContrastBrightness(0.0, 0.0), GaussianNoise(0.0), GaussianBlur(0.0), LocalContrast(0.0),
        MissingSection(p=0.0), LowContrast(p=0.0), MotionBlur(p=0.0), Misalign(0.0, p=1.0),
        Misalign(60.0, p=0.0, slip=True)]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), iso=st.booleans(), dtype=st.sampled_from(["uint8", "uint16", "float32"]))
def test_zero_strength_is_the_identity(seed: int, iso: bool, dtype: str) -> None:
    rng = np.random.default_rng(seed)
    shape = (3, 12, 12)
    raw = (rng.random(shape) * 200).astype(dtype)
    ids = blocky_ids(rng, shape)
    out = Compose(ZERO)(sample_of(raw, ids, ISO if iso else ANISO), rng, shape)
    assert Compose(ZERO).margin(shape, ANISO) == (0, 0, 0)
    assert np.array_equal(out.raw, raw) and out.raw.dtype == raw.dtype
    assert np.array_equal(out.labels["cells"], ids) and out.valid.all()


class Extreme:
    """A stand-in generator: ``uniform`` gives the top of its range, ``random`` 0 (p always fires)."""

    def uniform(self, lo: float, hi: float) -> float:
        return hi

    def random(self, *shape: int) -> float:
        return 0.0


def test_quarter_turns_and_flips_compose_to_known_permutations() -> None:
    shape = (2, 9, 9)
    ids = np.arange(np.prod(shape), dtype=np.uint64).reshape(shape) + BIG
    s = sample_of(ids.astype(np.float32), ids, ANISO)
    quarter = Warp(rotation_deg=90, scale=0, elastic_sigma_nm=0)
    once = quarter(s, Extreme(), shape)  # type: ignore[arg-type]
    assert np.array_equal(once.labels["cells"], np.rot90(ids, -1, axes=(1, 2)))
    twice = quarter(once, Extreme(), shape)  # type: ignore[arg-type]
    assert np.array_equal(twice.labels["cells"], ids[:, ::-1, ::-1])  # two quarter turns = flips of y and x
    assert np.array_equal(twice.raw, twice.labels["cells"].astype(np.float32))
    rng, again = np.random.default_rng(3), np.random.default_rng(3)
    flipped = FlipTurn()(s, rng, shape)
    flips = [axis for axis in range(3) if again.random() < 0.5]
    turns = int(again.integers(4))
    expected = np.rot90(np.flip(ids, axis=flips) if flips else ids, turns, axes=(1, 2))
    assert np.array_equal(flipped.labels["cells"], expected)


def test_misalignment_moves_raw_and_labels_by_the_same_offset() -> None:
    shape, voxel = (6, 16, 16), ANISO
    for slip in (False, True):
        shift = Misalign(36.0, p=1.0, slip=slip)
        margin = shift.margin(shape, voxel)
        assert margin == (0, 6, 6)
        window = tuple(n + 2 * m for n, m in zip(shape, margin))
        ids = np.arange(np.prod(window), dtype=np.uint64).reshape(window)
        drawn = shift.draw(np.random.default_rng(11), shape, voxel)
        out = shift(sample_of(ids.astype(np.float64), ids, voxel), np.random.default_rng(11), shape)
        moved, dy, dx = drawn
        assert (dy, dx) != (0, 0)
        assert np.array_equal(out.raw, out.labels["cells"].astype(np.float64))
        expected = ids[:, 6:22, 6:22].copy()
        expected[moved] = ids[moved, 6 + dy:22 + dy, 6 + dx:22 + dx]
        assert np.array_equal(out.labels["cells"], expected)
        still = [z for z in range(shape[0]) if z not in range(*moved.indices(shape[0]))]
        assert still and len(still) < shape[0]


def test_em_set_mixes_no_z_on_anisotropic_voxels() -> None:
    assert em_augment(ANISO).margin((16, 128, 128), ANISO)[0] == 0
    assert em_augment(ISO).margin((16, 64, 64), ISO)[0] > 0  # tilts only when near-isotropic
    assert not any(isinstance(t, Misalign | MissingSection) for t in em_augment(ISO).transforms)
    assert em_augment(ISO, planar=True).margin((1, 64, 64), ISO)[0] == 0  # 2D patches never reach into z


def write_cells(path: Path, shape: tuple[int, int, int] = (8, 96, 96), voxel=(30, 6, 6)) -> Path:
    rng = np.random.default_rng(0)
    raw = rng.integers(100, 200, shape, dtype=np.uint8)
    cells = blocky_ids(rng, shape)
    return write_volume(path, raw, voxel, labels=[LabelLayerData("cells", cells, "instance", instance_of="neuron")],
                        meta={"dataset": "demo", "volume": path.name.split(".")[0], "split": "train"})


def test_dataset_reads_the_warp_margin_and_ignores_what_comes_from_outside(tmp_path: Path) -> None:
    from emdata.store.volume import open_volume

    path = write_cells(tmp_path / "v.ome.zarr")
    ids = np.asarray(open_volume(path).labels["cells"][...]).view(np.int64)
    aug = Compose([Warp(rotation_deg=30, scale=0.1, elastic_sigma_nm=6, control_spacing_nm=(60, 60, 60))])
    ds = PatchDataset([path], (2, 32, 32), labels=["cells"], targets=["semantic", "boundaries", "instances"],
                      augment=aug, samples_per_epoch=40)
    margin = ds.margin
    assert margin[0] == 0 and margin[1] > 0
    inside, edge = 0, 0
    for i in range(40):
        s = widen(ds.sample(0, i))  # the int64 arrays, ignore value where the voxel came from outside
        valid = s["valid"][0].astype(bool)
        origin = np.rint(s["meta"]["offset_nm"] / ds.voxel_size).astype(int)
        assert set(np.unique(s["labels/cells"][valid])) <= set(np.unique(ids))
        assert (s["labels/cells"][~valid] == IGNORE).all() and (s["semantic"][~valid] == IGNORE).all()
        assert (s["raw"][0][valid] >= 50).all(), "a valid voxel never reads zero padding"
        if all(o - m >= 0 and o + p + m <= n for o, m, p, n in zip(origin, margin, ds.patch_shape, ids.shape)):
            inside += 1
            assert valid.all(), "a window inside the volume is read whole: no padding"
            assert np.array_equal(s["boundaries"][0], boundaries(s["labels/cells"]))  # targets after the warp
        else:
            edge += not valid.all()
    assert inside and edge


def test_zero_strength_compose_gives_the_plain_samples(tmp_path: Path) -> None:
    path = write_cells(tmp_path / "v.ome.zarr")
    kw = dict(labels=["cells"], targets=["semantic", "affinities"], samples_per_epoch=4)
    plain = PatchDataset([path], (4, 24, 24), **kw)
    zero = PatchDataset([path], (4, 24, 24), augment=Compose(ZERO), **kw)
    for i in range(4):
        a, b = plain.sample(1, i), zero.sample(1, i)
        for key in ("raw", "labels/cells", "semantic", "affinities", "affinities_mask"):
            assert np.array_equal(a[key], b[key]), key


def test_em_augmented_samples_are_identical_across_worker_types(tmp_path: Path) -> None:
    path = write_cells(tmp_path / "v.ome.zarr")
    ds = PatchDataset([path], (4, 32, 32), labels=["cells"], targets=["boundaries"], augment="em",
                      samples_per_epoch=8)

    def batches(**kw) -> list[np.ndarray]:
        loader = make_loader(ds, batch_size=4, **kw)
        return [np.concatenate([b[k].numpy().ravel() for k in ("raw", "labels/cells", "boundaries", "valid")])
                for b in loader]

    serial = batches()
    assert not np.array_equal(serial[0][: 4 * 32 * 32], PatchDataset([path], (4, 32, 32), samples_per_epoch=8)
                              .sample(0, 0)["raw"].ravel()[: 4 * 32 * 32])
    for kw in (dict(num_workers=2, worker_type="thread"), dict(num_workers=2, multiprocessing_context="fork")):
        other = batches(**kw)
        assert all(np.array_equal(a, b) for a, b in zip(serial, other, strict=True)), kw


def test_preview_grid_overlays_exactly_the_label_pixels(tmp_path: Path) -> None:
    from PIL import Image

    path = write_cells(tmp_path / "v.ome.zarr")
    ds = PatchDataset([path], (2, 32, 40), labels=["cells"], augment="em", samples_per_epoch=5)
    png = preview_grid(ds, 5, tmp_path / "grid.png", columns=3)
    grid = np.asarray(Image.open(png).convert("RGB"))
    assert grid.shape == (2 * 32, 3 * 40, 3)
    first = ds.sample(0, 4)
    labels = first["labels/cells"][1]  # the middle of 2 sections
    shown = (labels != 0) & first["valid"][0, 1].astype(bool)
    piece = grid[32:64, 40:80].astype(int)
    coloured = (piece.max(axis=2) - piece.min(axis=2)) > 20
    assert np.array_equal(coloured, shown) and coloured.any()
    assert np.array_equal(piece, tile(first))


@pytest.mark.parametrize("defect", [MissingSection(p=0.5), MissingSection(p=0.5, mode="interpolate"),
                                    LowContrast(p=0.5), MotionBlur(p=0.5, length_nm=60.0),
                                    Artefacts([np.full((6, 40), 255, np.uint8)], [np.full((6, 40), 0.5, np.float32)],
                                              p=0.5)])
def test_section_defects_change_raw_only_in_the_sections_they_hit(defect) -> None:
    rng = np.random.default_rng(5)
    shape = (8, 24, 24)
    raw = rng.integers(60, 200, shape).astype(np.uint8)
    ids = blocky_ids(rng, shape)
    hit = np.flatnonzero(np.random.default_rng(9).random(shape[0]) < 0.5)  # the draw the defect makes first
    out = defect(sample_of(raw, ids, ANISO), np.random.default_rng(9), shape)
    changed = np.flatnonzero((out.raw != raw).any(axis=(1, 2)))
    assert len(changed) and set(changed) <= set(hit.tolist())
    assert out.raw.dtype == raw.dtype and np.array_equal(out.labels["cells"], ids) and out.valid.all()


def test_em_set_on_float_raw_keeps_float_and_2d_patches(tmp_path: Path) -> None:
    path = write_cells(tmp_path / "v.ome.zarr")
    ds = PatchDataset([path], (48, 48), labels=["cells"], raw_dtype="float32", normalize="percentile",
                      augment="em", samples_per_epoch=4)
    assert ds.margin[0] == 0
    s = ds.sample(0, 1)
    assert s["raw"].dtype == np.float32 and s["raw"].shape == (1, 48, 48) and s["valid"].shape == (1, 48, 48)
    with pytest.raises(ValueError, match="augment must be"):
        PatchDataset([path], (48, 48), augment="strong")


def test_the_edge_of_the_volume_invents_no_boundary(tmp_path: Path) -> None:
    shape = (4, 48, 48)
    path = write_volume(tmp_path / "v.ome.zarr", np.full(shape, 120, np.uint8), (30, 6, 6),
                        labels=[LabelLayerData("cells", np.full(shape, 5, np.uint32), "instance",
                                               instance_of="neuron")],
                        meta={"dataset": "demo", "volume": "v", "split": "train"})
    ds = PatchDataset([path], (2, 48, 48), targets=["boundaries", "affinities"],
                      augment=Compose([Warp(rotation_deg=45, scale=0, elastic_sigma_nm=0)]), samples_per_epoch=6)
    for i in range(6):
        s = ds.sample(0, i)
        assert not s["valid"].all()  # a turned 48×48 patch of a 48×48 volume reaches past its edge
        assert not s["boundaries"].any(), "one cell everywhere: no boundary, not even along the volume's edge"
        assert s["affinities_mask"].any() and (s["affinities"][s["affinities_mask"] == 1] == 1).all()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
def test_pointwise_intensity_through_a_table_equals_the_float_computation(dtype: str) -> None:
    from emdata.torch.augment.intensity import in_unit_range

    info = np.iinfo(dtype)
    raw = np.random.default_rng(1).integers(info.min, int(info.max) + 1, (3, 17, 19)).astype(dtype)
    for change in (lambda x: np.power(np.clip(x, 0, None), np.float32(0.7)),
                   lambda x: (x - np.float32(0.5)) * np.float32(1.3) + np.float32(0.58)):
        assert np.array_equal(in_unit_range(raw, change, pointwise=True), in_unit_range(raw, change))


def test_warp_interpolation_is_the_same_with_and_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    from emdata.torch.augment import geometric

    rng = np.random.default_rng(4)
    shape = (3, 40, 40)
    raw = rng.integers(0, 256, shape).astype(np.uint8)
    warp = Warp(rotation_deg=180, scale=0.1, elastic_sigma_nm=12, control_spacing_nm=(60, 60, 60))
    s = sample_of(raw, blocky_ids(rng, shape), ANISO)
    with_torch = warp(s, np.random.default_rng(7), (3, 20, 20))
    monkeypatch.setattr(geometric, "_torch", lambda: None)
    numpy_only = warp(s, np.random.default_rng(7), (3, 20, 20))
    assert np.array_equal(with_torch.labels["cells"], numpy_only.labels["cells"])
    assert np.abs(with_torch.raw.astype(int) - numpy_only.raw.astype(int)).max() <= 1  # float rounding only


def test_noise_levels_follow_a_gaussian_and_stay_in_range() -> None:
    from emdata.torch.augment.intensity import gaussian_noise

    noise = gaussian_noise(np.random.default_rng(0), (200_000,))
    assert abs(float(noise.std()) - 1) < 0.01 and abs(float((np.abs(noise) < 1).mean()) - 0.6827) < 0.005
    raw = np.full((2, 64, 64), 250, np.uint8)
    out = GaussianNoise(0.1)(sample_of(raw, blocky_ids(np.random.default_rng(0), raw.shape), ANISO),
                             np.random.default_rng(3), raw.shape)
    assert out.raw.dtype == np.uint8 and out.raw.max() == 255 and out.raw.min() < 250  # clipped, not wrapped


def test_augmented_samples_are_contiguous_arrays(tmp_path: Path) -> None:
    path = write_cells(tmp_path / "v.ome.zarr")
    ds = PatchDataset([path], (4, 32, 32), labels=["cells"], targets=["instances"], augment=True, samples_per_epoch=8)
    for i in range(8):  # flips hand views through the pipeline; what leaves the dataset owns its memory
        s = ds.sample(0, i)
        assert all(v.flags.c_contiguous for v in s.values() if isinstance(v, np.ndarray))


def test_label_windows_read_only_a_box_and_pad_like_the_full_window(tmp_path: Path) -> None:
    path = write_cells(tmp_path / "v.ome.zarr", shape=(6, 48, 48))
    ds = PatchDataset([path], (2, 16, 16), labels=["cells"], augment="em", samples_per_epoch=4)
    plan = ds._plans[0]
    rng = np.random.default_rng(2)
    for _ in range(30):  # windows reaching past every side of the volume, boxes anywhere in them
        shape = (4, 40, 40)
        start = tuple(int(rng.integers(1 - s, n)) for s, n in zip(shape, (6, 48, 48)))  # overlapping the volume
        full, _ = ds._read_window(plan, ["cells"], start, shape)
        box = tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in
                    ((int(rng.integers(0, n)), n) for n in shape))
        assert np.array_equal(ds._read_clamped(plan, "cells", start, box), full["cells"][box])


@pytest.mark.parametrize("forced", [False, True])
def test_fused_geometry_equals_the_transforms_one_by_one(forced: bool) -> None:
    """Misalignments, warp, flips and turns resampled as one map: labels and validity exactly as
    applying them one by one (label layers handed over as windows, read only where the map
    reaches), raw up to rounding (OpenCV 5 interpolates float maps in float; 4.x in 1/32 voxel)."""
    from emdata.torch.augment.compose import Window, materialize
    from emdata.torch.augment.geometric import _cv2, fused_geometry

    cv2 = _cv2()
    float_maps = cv2 is not None and int(cv2.__version__.split(".")[0]) >= 5

    rng = np.random.default_rng(0)
    voxel, out_shape = ANISO, (6, 40, 40)
    if forced:  # every draw fires: shifts on both misalignments, a warp every time
        geo = [Misalign(48.0, p=1.0), Misalign(48.0, p=1.0, slip=True),
               Warp(rotation_deg=180, scale=0.1, elastic_sigma_nm=12, control_spacing_nm=(120, 120, 120)), FlipTurn()]
    else:
        geo = em_augment(voxel).transforms[:4]
    shapes = Compose(geo).shapes(out_shape, voxel)
    window = shapes[0]
    raw = rng.integers(0, 256, window).astype(np.uint8)
    ids = np.arange(np.prod(window), dtype=np.uint64).reshape(window) + BIG
    reads: list[tuple[slice, ...]] = []

    def read(box: tuple[slice, ...]) -> np.ndarray:
        reads.append(box)
        return ids[box].copy()

    fused_runs = 0
    for seed in range(40):
        s = Sample(raw, {"cells": Window(read, window, ids.dtype)}, np.ones(window, bool), voxel)
        fused = fused_geometry(geo, s, np.random.default_rng(seed), shapes)
        one_rng, one = np.random.default_rng(seed), sample_of(raw, ids, voxel)
        for t, shape in zip(geo, shapes[1:]):
            one = materialize(t(one, one_rng, shape))
        if fused is None:
            continue
        fused_runs += 1
        assert np.array_equal(fused.labels["cells"], one.labels["cells"])
        assert np.array_equal(fused.valid, one.valid)
        diff = np.abs(fused.raw.astype(int) - one.raw.astype(int))
        # float interpolation by both: rounding only; OpenCV 4's 1/32-voxel tables: 2 × 255 / 64 + rounding
        assert diff.max() <= (1 if float_maps else 9) and diff.mean() < 1.0
    assert fused_runs >= 35, "the em set's geometry fits its window: the fused path is the usual one"
    assert all(b[1].stop - b[1].start < window[1] or b[2].stop - b[2].start < window[2] for b in reads[:5])


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_fused_lookup_tables_equal_the_changes_one_by_one(dtype: str) -> None:
    from emdata.torch.augment.intensity import fused_tables

    info = np.iinfo(dtype)
    raw = np.random.default_rng(2).integers(0, int(info.max) + 1, (3, 20, 20)).astype(dtype)
    ts = [Gamma(0.3, p=0.7), ContrastBrightness(0.3, 0.1, p=0.7), Gamma(0.5)]
    for seed in range(10):
        s = sample_of(raw, blocky_ids(np.random.default_rng(0), raw.shape), ANISO)
        fused = fused_tables(ts, s, np.random.default_rng(seed), [raw.shape] * 4)
        rng, one = np.random.default_rng(seed), s
        for t in ts:
            one = t(one, rng, raw.shape)
        assert fused is not None and np.array_equal(fused.raw, one.raw)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_fast_blur_and_local_contrast_match_the_float_computation(dtype: str) -> None:
    """OpenCV's blur (8-bit) and the local contrast's path for 8- and 16-bit raw give the float
    computation on the integers themselves, rounded once (within 1 for the rounding of float sums)."""
    rng = np.random.default_rng(6)
    top = np.iinfo(dtype).max
    raw = np.clip(rng.normal(0.47 * top, 0.16 * top, (4, 64, 61)), 0, top).astype(dtype)
    s = sample_of(raw, blocky_ids(rng, raw.shape), ANISO)
    for t in (GaussianBlur(12.0), LocalContrast(0.5, size_nm=150.0))[(dtype == "uint16"):]:  # blur: 8-bit
        for seed in range(3):
            fast = t(s, np.random.default_rng(seed), raw.shape).raw
            change = t.change(np.random.default_rng(seed), s)  # the same draw, the float computation
            slow = np.clip(np.rint(change(raw.astype(np.float32))), 0, top).astype(dtype)
            assert fast.dtype == raw.dtype and np.abs(fast.astype(int) - slow.astype(int)).max() <= 1, t
            assert (fast != raw).mean() > 0.05, t  # it did change the patch


def test_noise_comes_from_the_bank_as_a_function_of_the_generator() -> None:
    raw = np.full((2, 32, 32), 128, np.uint8)
    s = sample_of(raw, blocky_ids(np.random.default_rng(0), raw.shape), ANISO)
    noise = GaussianNoise(0.05)
    a, b = (noise(s, np.random.default_rng(9), raw.shape).raw for _ in range(2))
    c = noise(s, np.random.default_rng(10), raw.shape).raw
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 1 < float(np.abs(a.astype(int) - 128).mean()) < 12


def test_the_em_set_gives_the_same_labels_without_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without OpenCV every transform runs one by one (numpy, torch): the same draws, so the same
    labels and validity, and raw within the interpolation and blur rounding."""
    from emdata.torch.augment import geometric, intensity

    rng = np.random.default_rng(8)
    aug, out_shape = em_augment(ANISO), (6, 40, 40)
    window = Compose(aug.transforms).shapes(out_shape, ANISO)[0]
    raw = np.clip(rng.normal(120, 30, window), 0, 255).astype(np.uint8)
    ids = blocky_ids(rng, window)
    fast = [aug(sample_of(raw, ids, ANISO), np.random.default_rng(seed), out_shape) for seed in range(12)]
    monkeypatch.setattr(geometric, "_cv2", lambda: None)
    monkeypatch.setattr(intensity, "_cv2", lambda: None)
    for seed, f in enumerate(fast):
        slow = aug(sample_of(raw, ids, ANISO), np.random.default_rng(seed), out_shape)
        assert np.array_equal(f.labels["cells"], slow.labels["cells"]) and np.array_equal(f.valid, slow.valid)
        assert np.median(np.abs(f.raw.astype(int) - slow.raw.astype(int))) <= 2


def test_dataset_reads_raw_only_where_the_augmentation_looks_and_gets_the_full_window_result(tmp_path: Path) -> None:
    """Raw and labels handed to the augmentation as windows (read over the box the map reaches)
    give exactly what the whole window read beforehand gives, at the volume's edges too."""
    path = write_cells(tmp_path / "v.ome.zarr", shape=(8, 72, 72))
    ds = PatchDataset([path], (4, 32, 32), labels=["cells"], augment="em", samples_per_epoch=16)
    shape = tuple(n + 2 * m for n, m in zip(ds.patch_shape, ds.margin))

    def drawn(i: int):  # type: ignore[no-untyped-def]
        rng = np.random.default_rng([ds.seed, 0, i])  # as sample() draws the volume and the origin
        plan = ds._plans[int(rng.choice(len(ds._plans), p=ds._volume_p))]
        return plan, ds._origin(plan, rng), rng

    edges = 0
    for i in range(16):
        plan, origin, rng = drawn(i)
        start = tuple(o - m for o, m in zip(origin, ds.margin))
        arrays, valid = ds._read_window(plan, ["raw", "cells"], start, shape, mask_layers=["raw", "cells"])
        edges += not valid.all()
        whole = ds.augment(Sample(arrays["raw"], {"cells": arrays["cells"]}, valid, ds.voxel_size), rng,
                           ds.patch_shape)
        plan, origin, rng = drawn(i)
        lazy = ds._augmented(plan, origin, None, rng)
        assert np.array_equal(lazy.raw, whole.raw) and np.array_equal(lazy.valid, whole.valid)
        assert np.array_equal(lazy.labels["cells"], whole.labels["cells"])
    assert edges, "some windows reach past the volume"
