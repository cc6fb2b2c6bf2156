"""Subjects200K reader on a fixture written in the released layout.

The fixture paints each 8-px patch of the target view a unique colour and paints the
same colour at the reference patch it truly corresponds to (a known shift). The DIFT
file holds the true map; the GeoAware file disagrees on a known set of patches. So the
right answer is known: kept points are the agreeing, in-mask patch centres, and every
kept point joins two pixels of the same colour.
"""
import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mosaic.data.records import DataError, iter_samples
from mosaic.data.subjects200k import (
    REF_BOX, TARGET_BOX, ReadReport, convert_subjects200k, crop_pair, iter_subjects200k, upstream_uid,
)
from mosaic.data.validate import validate_dataset

G, S = 64, 8  # 64x64 patch grid, 8 px per patch at 512 px
SHIFT = (5, -3)  # reference patch = target patch + SHIFT
MASK_BOX = (100, 60, 300, 260)  # target mask rows [100, 300), cols [60, 260)


def _true_ref(py, px):
    return np.clip(py + SHIFT[0], 0, G - 1), np.clip(px + SHIFT[1], 0, G - 1)


def _composite(seed: int) -> Image.Image:
    comp = np.zeros((528, 1056, 3), np.uint8)
    comp[:] = 17  # padding colour
    tgt = np.zeros((512, 512, 3), np.uint8)
    ref = np.zeros((512, 512, 3), np.uint8)
    for py in range(G):
        for px in range(G):
            colour = (py * 4, px * 4, seed)
            tgt[py * S:(py + 1) * S, px * S:(px + 1) * S] = colour
            ry, rx = _true_ref(py, px)
            if (ry, rx) == (py + SHIFT[0], px + SHIFT[1]):  # unclipped: the colour is unique
                ref[ry * S:(ry + 1) * S, rx * S:(rx + 1) * S] = colour
    x0, y0, x1, y1 = TARGET_BOX
    comp[y0:y1, x0:x1] = tgt
    x0, y0, x1, y1 = REF_BOX
    comp[y0:y1, x0:x1] = ref
    return Image.fromarray(comp)


def _coords():
    py, px = np.divmod(np.arange(G * G), G)
    ry, rx = _true_ref(py, px)
    dift = torch.from_numpy(np.stack([ry, rx], 1)).long()
    geo = dift.clone()
    disagree = (py + px) % 5 == 0
    geo[torch.from_numpy(disagree), 1] = (geo[torch.from_numpy(disagree), 1] + 1) % G
    return dift, geo, disagree


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _row(seed, item, collection="collection_2", score=5):
    return {
        "image": {"bytes": _png(_composite(seed)), "path": None},
        "description": {"item": item, "description_0": f"a {item} on a table", "description_1": f"a {item} outdoors"},
        "collection": collection,
        "quality_assessment": {"compositeStructure": score, "objectConsistency": 5, "imageQuality": 5},
        "uid": f"uid{seed}",
    }


@pytest.fixture
def fixture(tmp_path):
    rows = [_row(1, "red mug"), _row(2, "blue vase"), _row(3, "low score", score=4),
            _row(4, "other collection", collection="collection_1"), _row(5, "no annotations")]
    parquet = tmp_path / "train-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    ann = tmp_path / "semalign"
    for d in ("mask", "coord/dift", "coord/geoaware"):
        (ann / d).mkdir(parents=True)
    dift, geo, _ = _coords()
    for i, row in enumerate(rows[:4]):
        target, _ = crop_pair(Image.open(io.BytesIO(row["image"]["bytes"])))
        desc = row["description"]
        for uid in (upstream_uid(desc["item"], desc["description_0"], target), row["uid"]):
            mask = np.zeros((512, 512), np.uint8)
            y0, x0, y1, x1 = MASK_BOX
            mask[y0:y1, x0:x1] = 255
            size = 1024 if i == 1 else 512  # one mask stored at 1024 px: resized with nearest
            Image.fromarray(mask).resize((size, size), Image.NEAREST).save(ann / "mask" / f"{uid}.png")
            torch.save(dift, ann / "coord" / "dift" / f"{uid}_ref0.pt")
            torch.save(geo, ann / "coord" / "geoaware" / f"{uid}_ref0.pt")
    return parquet, ann


def _expected_target_points():
    _, _, disagree = _coords()
    py, px = np.divmod(np.arange(G * G), G)
    ty, tx = py * S + S // 2, px * S + S // 2
    y0, x0, y1, x1 = MASK_BOX
    keep = ~disagree & (ty >= y0) & (ty < y1) & (tx >= x0) & (tx < x1)
    return {(int(a), int(b)) for a, b in zip(ty[keep], tx[keep])}


def test_crop_boxes_match_upstream_layout():
    comp = _composite(9)
    target, ref = crop_pair(comp)
    assert target.size == ref.size == (512, 512)
    assert np.asarray(target)[0, 0].tolist() == [0, 0, 9]  # patch (0, 0) colour, not padding
    assert np.asarray(ref)[SHIFT[0] * S, 0].tolist() == [0, -SHIFT[1] * 4, 9]
    with pytest.raises(DataError, match="expected 1056x528"):
        crop_pair(Image.new("RGB", (1024, 512)))


def test_upstream_uid_formula():
    target, _ = crop_pair(_composite(1))
    h = hashlib.sha256(_png(target)).hexdigest()[:8]
    assert upstream_uid("mug", "a mug", target) == hashlib.sha256(f"mug_a mug_{h}".encode()).hexdigest()


def test_keeps_only_agreeing_in_mask_points_with_matching_colours(fixture):
    parquet, ann = fixture
    report = ReadReport()
    samples = list(iter_subjects200k([parquet], ann, report))
    assert [s.references[0].phrase for s in samples] == ["red mug", "blue vase"]
    assert report.rows == 5 and report.converted == 2 and report.filtered == 2
    assert len(report.missing) == 1 and "row 4" in report.missing[0] and "mask" in report.missing[0]
    expected = _expected_target_points()
    for s in samples:
        assert s.k == 1 and s.target.shape == (512, 512, 3) and s.masks.shape == (1, 512, 512)
        assert s.prompt == f"a {s.references[0].phrase} on a table"  # description_0
        p = s.references[0].points
        assert {(int(a), int(b)) for a, b in p[:, 2:]} == expected and len(p) == len(expected)
        # Corresponding pixels share the painted colour, and every target point is in the mask.
        assert (s.target[p[:, 2], p[:, 3]] == s.references[0].image[p[:, 0], p[:, 1]]).all()
        assert s.masks[0][p[:, 2], p[:, 3]].all()
    assert report.points == 2 * len(expected)


def test_uid_column_and_no_quality_filter(fixture):
    parquet, ann = fixture
    report = ReadReport()
    samples = list(iter_subjects200k([parquet], ann, report, uid_column="uid", quality_filter=False))
    assert [s.id for s in samples] == ["uid1", "uid2", "uid3", "uid4"]
    assert report.filtered == 0 and len(report.missing) == 1
    with pytest.raises(DataError, match="no column 'nope'"):
        next(iter_subjects200k([parquet], ann, uid_column="nope"))


def test_min_points_skips_sparse_rows(fixture):
    parquet, ann = fixture
    report = ReadReport()
    assert list(iter_subjects200k([parquet], ann, report, min_points=10_000)) == []
    assert report.sparse == 2 and "2 with too few points" in report.summary()


def test_bad_coord_file_names_path(fixture):
    parquet, ann = fixture
    for f in (ann / "coord" / "geoaware").iterdir():
        torch.save(torch.zeros(10, 2, dtype=torch.long), f)
    with pytest.raises(DataError, match=r"geoaware.*_ref0.pt: expected a tensor \[4096, 2\]"):
        list(iter_subjects200k([parquet], ann))


def test_convert_writes_a_dataset(fixture, tmp_path):
    parquet, ann = fixture
    out = tmp_path / "ds"
    report = convert_subjects200k([parquet], ann, out, limit=1)
    assert report.converted == 1
    (s,) = list(iter_samples(out))
    assert s.references[0].phrase == "red mug" and len(s.references[0].points) == len(_expected_target_points())
    assert s.meta["row"] == 0
    assert validate_dataset(out) == []
