"""Contact sheet (mosaic.data.preview)."""
import numpy as np
import pytest
from PIL import Image

from mosaic.data.dataset import TokenSpec
from mosaic.data.preview import SUBJECT_COLOURS, write_preview
from mosaic.data.synthetic import generate_dataset, generate_sample


def test_preview_from_samples_and_folder(tmp_path):
    samples = [generate_sample(0, "train", i, k) for i, k in enumerate([1, 3])]
    out = write_preview(samples, tmp_path / "sheets" / "a.png", spec=TokenSpec((96, 96), (48, 48), 4, 2))
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        sheet = np.asarray(im.convert("RGB"))
    assert sheet.shape[0] > 2 * (96 + 288) and sheet.shape[1] >= 3 * 96
    # Correspondence lines/dots are drawn in each subject's colour.
    for colour in SUBJECT_COLOURS[:3]:
        assert (sheet == colour).all(-1).sum() > 20
    assert [p.name for p in (tmp_path / "sheets").iterdir()] == ["a.png"]  # no temp file left

    root = generate_dataset(tmp_path / "ds", 3, 0, "val", 1, 2)
    one, three = write_preview(root, tmp_path / "one.png", n=1), write_preview(root, tmp_path / "three.png", n=3)
    with Image.open(one) as a, Image.open(three) as b:
        assert b.height > 2 * a.height


def test_preview_of_nothing_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no samples"):
        write_preview([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
