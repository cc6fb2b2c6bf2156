"""Collage builder on hand-made textured sources whose correspondences are known.

Each source subject is per-pixel random noise (the blue channel names the source); its
reference is the subject vertically mirrored; points join every `step`-th subject pixel to
its mirrored reference pixel, so joined pixels share a colour that almost no wrong pixel
has. After the collage, every kept point must still join two pixels of the same colour.
"""
import numpy as np
import pytest

from mosaic.data.collage import CollageLayout, build_collage, join_phrases, write_collages
from mosaic.data.records import DataError, DatasetWriter, Reference, Sample, iter_samples
from mosaic.data.validate import validate_dataset


def _source(idx: int, hh: int = 40, ww: int = 48, size: int = 64, ellipse: bool = True, step: int = 1) -> Sample:
    rng = np.random.default_rng(idx)
    texture = rng.integers(0, 256, (hh, ww, 3), dtype=np.uint8)
    texture[..., 2] = 200 - 20 * idx
    yy, xx = np.mgrid[:hh, :ww]
    m = ((yy - (hh - 1) / 2) / (hh / 2)) ** 2 + ((xx - (ww - 1) / 2) / (ww / 2)) ** 2 <= 1 if ellipse \
        else np.ones((hh, ww), bool)
    y0, x0 = 8 + idx % 2, 4 + 2 * idx  # odd offsets exercise the pixel-centre rounding
    target = np.full((size, size, 3), 255, np.uint8)
    mask = np.zeros((size, size), bool)
    target[y0:y0 + hh, x0:x0 + ww][m] = texture[m]
    mask[y0:y0 + hh, x0:x0 + ww] = m
    ref = np.full((hh, ww, 3), 255, np.uint8)
    ref[m[::-1]] = texture[::-1][m[::-1]]
    ys, xs = np.nonzero(m & (yy % step == step // 2) & (xx % step == step // 2))
    pts = np.stack([hh - 1 - ys, xs, ys + y0, xs + x0], 1).astype(np.int32)
    return Sample(f"s{idx}", "p", target, [Reference(ref, f"subject {idx}", pts, f"subj{idx}")], mask[None])


def _check_colours(s: Sample):
    for r in s.references:
        p = r.points
        assert len(p) > 0
        assert (s.target[p[:, 2], p[:, 3]] == r.image[p[:, 0], p[:, 1]]).all()


@pytest.mark.parametrize("step", [1, 8])  # dense (every pixel) and sparse (patch-centre) points
@pytest.mark.parametrize("seed", range(8))
def test_points_land_on_their_colour_and_masks_are_disjoint(seed, step):
    sources = [_source(i, step=step) for i in range(3)]
    s = build_collage(sources, seed=seed, layout=CollageLayout(canvas_size=(96, 128), scale_range=(0.4, 1.3),
                                                      flip_prob=0.5))
    assert s.k == 3 and s.masks.shape == (3, 96, 128) and s.target.shape == (96, 128, 3)
    assert s.masks.sum(0).max() == 1  # disjoint
    _check_colours(s)
    for k, r in enumerate(s.references):
        assert s.masks[k][r.points[:, 2], r.points[:, 3]].all()  # every point on its visible mask
        # Visible mask pixels show colours of that subject only (blue channel encodes the source).
        assert set(np.unique(s.target[s.masks[k]][:, 2])) == {200 - 20 * k}
        assert r.subject_id == f"subj{k}" and r.image is sources[k].references[0].image
    if step == 8:  # sparse points never share a canvas pixel at these scales
        assert s.meta["merged_points"] == [0, 0, 0]
    _check_geometry(s, sources)
    assert s.prompt == "subject 0, subject 1 and subject 2"


def _check_geometry(s, sources):
    """Each kept point sits where the recorded placement puts its source pixel (within 1 px)."""
    for k, (r, pl) in enumerate(zip(s.references, s.meta["placements"])):
        src = {tuple(p[:2]): p[2:] for p in sources[k].references[0].points.tolist()}
        t = np.array([src[tuple(p[:2])] for p in r.points.tolist()])
        y = pl["top"] + (t[:, 0] - pl["src_box"][0] + 0.5) * pl["scale"] - 0.5
        x = (t[:, 1] - pl["src_box"][1] + 0.5) * pl["scale"] - 0.5
        x = pl["left"] + (pl["width"] - 1 - x if pl["flip"] else x)
        assert np.abs(r.points[:, 2] - y).max() <= 1 and np.abs(r.points[:, 3] - x).max() <= 1


def test_exact_at_scale_one_with_flip():
    sources = [_source(0, step=8), _source(1, step=8)]  # sparse: most pixels are plain resampling
    s = build_collage(sources, seed=3, layout=CollageLayout(canvas_size=(128, 128), scale_range=(1, 1), flip_prob=1.0))
    _check_colours(s)
    _check_geometry(s, sources)
    for k, pl in enumerate(s.meta["placements"]):  # the visible subject is its source, mirrored, translated
        assert pl["flip"] and pl["scale"] == 1
        by, bx, bh, bw = pl["src_box"]
        src = sources[k].target[by:by + bh, bx:bx + bw][:, ::-1]
        placed = s.target[pl["top"]:pl["top"] + bh, pl["left"]:pl["left"] + bw]
        vis = s.masks[k][pl["top"]:pl["top"] + bh, pl["left"]:pl["left"] + bw]
        assert vis.any() and (placed[vis] == src[vis]).all()
        assert (vis <= sources[k].masks[0][by:by + bh, bx:bx + bw][:, ::-1]).all()


def test_occluded_points_are_dropped():
    # Full-rectangle subjects at scale 1 on a canvas too narrow for both: they must overlap.
    a, b = _source(0, ellipse=False), _source(1, ellipse=False)
    s = build_collage([a, b], seed=0,
                      layout=CollageLayout(canvas_size=(64, 80), scale_range=(1, 1), flip_prob=0, min_visible=0.05))
    p0, p1 = s.meta["placements"]
    # Independent expectation: at scale 1 a point moves by (top - box top, left - box left);
    # source 0's points under source 1's rectangle are hidden.
    pts = a.references[0].points
    ty = pts[:, 2] - p0["src_box"][0] + p0["top"]
    tx = pts[:, 3] - p0["src_box"][1] + p0["left"]
    hidden = (ty >= p1["top"]) & (ty < p1["top"] + p1["height"]) & (tx >= p1["left"]) & (tx < p1["left"] + p1["width"])
    assert hidden.any() and not hidden.all()
    kept = {tuple(x) for x in s.references[0].points[:, 2:].tolist()}
    assert kept == set(zip(ty[~hidden].tolist(), tx[~hidden].tolist()))
    assert s.meta["occluded_points"] == [int(hidden.sum()), 0] and s.meta["merged_points"] == [0, 0]
    assert len(s.references[1].points) == len(b.references[0].points)
    assert not (s.masks[0] & s.masks[1]).any() and s.masks[0].sum() < a.masks[0].sum()
    _check_colours(s)


def test_deterministic_and_configurable_prompt():
    src = [_source(0), _source(1)]
    layout = CollageLayout(canvas_size=(96, 96))
    a = build_collage(src, seed=5, layout=layout, prompt="a photo of {subjects}")
    b = build_collage(src, seed=5, layout=layout, prompt="a photo of {subjects}")
    c = build_collage(src, seed=6, layout=layout, prompt=lambda ph: " | ".join(ph))
    assert (a.target == b.target).all() and a.meta == b.meta
    assert a.prompt == "a photo of subject 0 and subject 1" and c.prompt == "subject 0 | subject 1"
    assert a.meta["placements"] != c.meta["placements"]
    assert join_phrases(["x"]) == "x"


def test_impossible_layout_and_bad_sources_raise():
    src = [_source(0, ellipse=False), _source(1, ellipse=False)]
    with pytest.raises(ValueError, match="no layout"):  # same size as the canvas: one hides the other
        build_collage(src, seed=0, layout=CollageLayout(canvas_size=(40, 48), scale_range=(1, 1), max_tries=5))
    two = Sample("two", "p", src[0].target, src[0].references * 2, np.concatenate([src[0].masks] * 2))
    with pytest.raises(DataError, match="sample two: collage sources must have K = 1"):
        build_collage([two], seed=0)


def test_write_collages(tmp_path):
    with DatasetWriter(tmp_path / "single") as w:
        for i in range(4):
            w.add(_source(i))
        twin = _source(0)  # a second sample of subject 0: never in one collage with the first
        twin.id = "s0b"
        w.add(twin)
    write_collages(tmp_path / "single", tmp_path / "multi", num=8, k=[2, 3, 4], seed=1,
                   layout=CollageLayout(canvas_size=(128, 128), scale_range=(0.6, 0.9)))
    out = list(iter_samples(tmp_path / "multi"))
    assert len(out) == 8 and {s.k for s in out} <= {2, 3, 4}
    for s in out:
        assert len({r.subject_id for r in s.references}) == s.k
        _check_colours(s)
    assert validate_dataset(tmp_path / "multi") == []
    with pytest.raises(DataError, match="4 distinct subjects, cannot draw K = 5"):
        write_collages(tmp_path / "single", tmp_path / "x", num=1, k=5, seed=0)
