"""validate_dataset: one test per problem kind, each on a small hand-made dataset."""
import json

import numpy as np
import pytest

from mosaic.data.dataset import TokenSpec
from mosaic.data.records import DatasetWriter, Reference, Sample
from mosaic.data.validate import Problem, validate_dataset

H = W = 32


def _sample(sid: str, k: int) -> Sample:
    rng = np.random.default_rng(len(sid) + k)
    target = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    masks = np.zeros((k, H, W), bool)
    refs = []
    for i in range(k):
        size = 16 + 8 * i
        x0 = i * W // k  # subject i owns a vertical band of the target
        masks[i, 4:28, x0:x0 + W // k] = True
        pts = np.array([(y % size, (y * 3) % size, y, x0 + (y % (W // k))) for y in range(4, 28, 3)], np.int32)
        refs.append(Reference(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), f"thing {i}", pts, f"{sid}-{i}"))
    return Sample(sid, "a photo of " + " and ".join(r.phrase for r in refs), target, refs, masks)


@pytest.fixture
def ds(tmp_path):
    root = tmp_path / "ds"
    with DatasetWriter(root, metadata={"source": "test"}) as w:
        w.add(_sample("a", 2))
        w.add(_sample("b", 1))
    return root


def _edit(root, sid, fn):
    path = root / "manifest.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for r in recs:
        if r["id"] == sid:
            fn(r)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _edit_corr(root, sid, fn):
    path = root / "samples" / sid / "corr.npz"
    with np.load(path) as z:
        arrays = {n: z[n] for n in z.files}
    fn(arrays)
    np.savez(path, **arrays)


def _only(problems, file, field):
    """The problems must be exactly one, naming `file` and `field`."""
    assert len(problems) == 1, "\n".join(map(str, problems))
    p = problems[0]
    assert (p.file, p.field) == (file, field), str(p)
    return p


def test_clean_dataset_has_no_problems(ds):
    assert validate_dataset(ds) == []
    assert validate_dataset(ds, TokenSpec((H, W), (16, 16), 4, 2)) == []


def test_a_prompt_without_its_subject_phrase(ds):
    _edit(ds, "a", lambda r: r.update(prompt="A photo of THING 1"))  # case-insensitive, as the consumers search
    p = _only(validate_dataset(ds), "manifest.jsonl:1", "references[0].phrase")
    assert "'thing 0' is not in the prompt 'A photo of THING 1'" in p.message
    _edit(ds, "a", lambda r: r.update(prompt=""))  # an empty prompt names no subject
    assert [p.field for p in validate_dataset(ds)] == ["references[0].phrase", "references[1].phrase"]
    _edit(ds, "b", lambda r: r["references"][0].update(phrase=""))  # nor does an empty phrase
    assert "references[0].phrase" in [p.field for p in validate_dataset(ds) if p.sample_id == "b"]


def test_problem_str():
    assert str(Problem("f.png", "target", "gone", "s")) == "f.png: target: gone"


def test_missing_metadata_means_unfinished(ds):
    (ds / "dataset.json").unlink()
    assert "unfinished" in _only(validate_dataset(ds), "dataset.json", "-").message


def test_metadata_count_disagrees(ds):
    (ds / "dataset.json").write_text(json.dumps({"num_samples": 5}))
    assert "5 but the manifest has 2" in _only(validate_dataset(ds), "dataset.json", "num_samples").message


def test_missing_and_empty_manifest(ds):
    (ds / "manifest.jsonl").write_text("\n")
    (ds / "dataset.json").write_text(json.dumps({"num_samples": 0}))
    assert "empty manifest" in _only(validate_dataset(ds), "manifest.jsonl", "-").message
    (ds / "manifest.jsonl").unlink()
    _only(validate_dataset(ds), "manifest.jsonl", "-")
    assert validate_dataset(ds / "nope")[0].message == "not a dataset folder"


def test_malformed_manifest_line(ds):
    lines = (ds / "manifest.jsonl").read_text().splitlines()
    (ds / "manifest.jsonl").write_text(lines[0] + "\n{not json\n")
    assert "not valid JSON" in _only(validate_dataset(ds), "manifest.jsonl:2", "-").message


def test_missing_manifest_field(ds):
    _edit(ds, "b", lambda r: r.pop("correspondences"))
    p = _only(validate_dataset(ds), "manifest.jsonl:2", "correspondences")
    assert p.sample_id == "b" and p.message == "missing field"


def test_missing_target_image(ds):
    (ds / "samples/a/target.png").unlink()
    p = _only(validate_dataset(ds), "samples/a/target.png", "target")
    assert p.message == "image file not found" and p.sample_id == "a"


def test_unreadable_reference_image(ds):
    (ds / "samples/a/ref1.png").write_bytes(b"not a png")
    assert "unreadable image" in _only(validate_dataset(ds), "samples/a/ref1.png", "references[1].image").message


def test_missing_mask(ds):
    (ds / "samples/b/mask0.png").unlink()
    _only(validate_dataset(ds), "samples/b/mask0.png", "references[0].mask")


def test_mask_of_wrong_size(ds):
    from PIL import Image
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(ds / "samples/a/mask1.png")
    assert "16x16, target is 32x32" in _only(validate_dataset(ds), "samples/a/mask1.png", "references[1].mask").message


def test_reference_coordinate_out_of_range(ds):
    def bad(a):
        a["ref0"][2, 1] = 16  # ref0 is 16x16
    _edit_corr(ds, "a", bad)
    p = _only(validate_dataset(ds), "samples/a/corr.npz", "ref0")
    assert "1 reference coordinates outside the 16x16 image" in p.message


def test_target_coordinate_out_of_range(ds):
    def bad(a):
        a["ref1"][0, 2] = -1
    _edit_corr(ds, "a", bad)
    assert "target coordinates outside the 32x32" in _only(validate_dataset(ds), "samples/a/corr.npz", "ref1").message


def test_k_disagrees_with_references(ds):
    _edit(ds, "a", lambda r: r.update(k=3))
    p = _only(validate_dataset(ds), "manifest.jsonl:1", "k")
    assert p.message == "K disagrees: k = 3, references = 2, masks = 2, correspondence arrays = 2"


def test_k_disagrees_with_masks(ds):
    _edit(ds, "a", lambda r: r["references"][1].pop("mask"))
    assert "masks = 1" in _only(validate_dataset(ds), "manifest.jsonl:1", "k").message


def test_extra_correspondence_array(ds):
    _edit_corr(ds, "b", lambda a: a.update(ref1=np.zeros((0, 4), np.int32)))
    problems = validate_dataset(ds)
    assert {(p.file, p.field) for p in problems} == {("manifest.jsonl:2", "k"), ("samples/b/corr.npz", "ref1")}


def test_missing_correspondences_file(ds):
    (ds / "samples/b/corr.npz").unlink()
    _only(validate_dataset(ds), "samples/b/corr.npz", "correspondences")


def test_num_points_disagrees(ds):
    _edit_corr(ds, "b", lambda a: a.update(ref0=a["ref0"][:3]))
    assert "but ref0 has 3" in _only(validate_dataset(ds), "manifest.jsonl:2", "references[0].num_points").message


def test_two_references_claim_one_target_pixel(ds):
    def clash(a):
        a["ref1"][0, 2:] = a["ref0"][0, 2:]
    _edit_corr(ds, "a", clash)
    p = _only(validate_dataset(ds), "samples/a/corr.npz", "correspondences")
    assert "1 target pixels claimed by more than one reference" in p.message and "[0, 1]" in p.message


def test_token_level_owners_only_with_spec(ds):
    def near(a):  # a ref1 point on a different pixel of the same 8-px token as a ref0 point
        a["ref1"][0, 2:] = a["ref0"][0, 2:] + [0, 1]
    _edit_corr(ds, "a", near)
    assert validate_dataset(ds) == []
    p = _only(validate_dataset(ds, TokenSpec((H, W), (16, 16), 4, 2)), "samples/a/corr.npz", "target tokens")
    assert "claimed by more than one reference" in p.message


def test_target_size_vs_spec_and_size_field(ds):
    problems = validate_dataset(ds, TokenSpec((64, 64), (16, 16), 4, 2))
    assert {(p.file, p.field) for p in problems} == {(f"samples/{s}/target.png", "target") for s in "ab"}
    assert "the token spec expects 64x64" in problems[0].message
    _edit(ds, "b", lambda r: r.update(size=[10, 10]))
    _only(validate_dataset(ds), "manifest.jsonl:2", "size")


def test_duplicate_sample_id(ds):
    _edit(ds, "b", lambda r: r.update(id="a"))
    fields = {(p.file, p.field) for p in validate_dataset(ds)}
    assert ("manifest.jsonl:2", "id") in fields


def test_reports_every_problem_not_just_the_first(ds):
    (ds / "dataset.json").unlink()
    (ds / "samples/a/target.png").unlink()
    (ds / "samples/b/mask0.png").write_bytes(b"")
    _edit_corr(ds, "a", lambda a: a["ref0"].__setitem__((0, 0), 99))
    got = {(p.file, p.field) for p in validate_dataset(ds)}
    assert got == {("dataset.json", "-"), ("samples/a/target.png", "target"),
                   ("samples/b/mask0.png", "references[0].mask"), ("samples/a/corr.npz", "ref0")}
