"""Sample format round trip, Dataset and collate (mosaic.data.records / dataset)."""
import numpy as np
import pytest
import torch

from mosaic.data.dataset import MultiSubjectDataset, TokenSpec, collate
from mosaic.data.records import DataError, DatasetWriter, Reference, Sample, iter_samples, read_metadata

SPEC = TokenSpec(target_size=(32, 32), ref_size=(16, 16), downsample=4, patch=2)


def make_sample(i: int, k: int, n_points: int) -> Sample:
    rng = np.random.default_rng(i)
    refs, masks = [], np.zeros((k, 32, 32), bool)
    for j in range(k):
        # Subject j owns target rows [8j, 8j+8): points never conflict.
        ty = rng.integers(8 * j, 8 * j + 8, n_points)
        tx = rng.integers(0, 32, n_points)
        pts = np.stack([rng.integers(0, 16, n_points), rng.integers(0, 16, n_points), ty, tx], 1)
        refs.append(Reference(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), f"thing {j}", pts, f"id{j}"))
        masks[j, 8 * j: 8 * j + 8] = True
    return Sample(f"s{i}", " and ".join(r.phrase for r in refs), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                  refs, masks, {"i": i})


def test_round_trip_and_atomic_writer(tmp_path):
    samples = [make_sample(0, 1, 5), make_sample(1, 3, 7)]
    with DatasetWriter(tmp_path / "ds", {"source": "test"}) as w:
        for s in samples:
            w.add(s)
    assert read_metadata(tmp_path / "ds")["num_samples"] == 2
    for a, b in zip(samples, iter_samples(tmp_path / "ds")):
        assert a.id == b.id and a.prompt == b.prompt and b.meta == {"i": a.meta["i"]}
        assert np.array_equal(a.target, b.target) and np.array_equal(a.masks, b.masks)
        for ra, rb in zip(a.references, b.references):
            assert np.array_equal(ra.image, rb.image) and np.array_equal(ra.points, rb.points)
            assert (ra.phrase, ra.subject_id) == (rb.phrase, rb.subject_id)
    # Failure mid-way leaves nothing that looks finished, and no temp folder.
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "bad") as w:
            w.add(samples[0])
            raise RuntimeError("boom")
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    with pytest.raises(FileExistsError, match="already exists"):
        with DatasetWriter(tmp_path / "ds"):
            pass


def test_collate_pads_k_and_points(tmp_path):
    with DatasetWriter(tmp_path / "ds") as w:
        w.add(make_sample(0, 1, 3))
        w.add(make_sample(1, 3, 9))
    ds = MultiSubjectDataset(tmp_path / "ds", SPEC)
    items = [ds[0], ds[1]]
    batch = collate(items)
    assert batch["refs"].shape == (2, 3, 3, 16, 16)
    assert batch["ref_mask"].tolist() == [[True, False, False], [True, True, True]]
    assert batch["target"].shape == (2, 3, 32, 32) and batch["target"].abs().max() <= 1
    pmax = batch["point_mask"].shape[-1]
    assert pmax == max(len(t) for it in items for t in it["ref_tokens"])
    for b, it in enumerate(items):
        for k, (r, t) in enumerate(zip(it["ref_tokens"], it["target_tokens"])):
            n = len(r)
            assert batch["point_mask"][b, k].sum() == n
            assert torch.equal(batch["ref_tokens"][b, k, :n], r)
            assert torch.equal(batch["target_tokens"][b, k, :n], t)
    assert not batch["point_mask"][0, 1:].any()
    # Token masks: subject j of sample 1 owns token row j of the 4x4 target grid.
    assert batch["token_masks"][1, 2].nonzero()[:, 0].unique().tolist() == [2]
    # Target tokens of each subject lie inside its own token mask.
    for k in range(3):
        t = batch["target_tokens"][1, k][batch["point_mask"][1, k]]
        assert batch["token_masks"][1, k].flatten()[t].all()


def test_dataset_errors(tmp_path):
    with DatasetWriter(tmp_path / "ds") as w:
        w.add(make_sample(0, 3, 3))
    with pytest.raises(DataError, match="exceeds the model's limit of 2"):
        MultiSubjectDataset(tmp_path / "ds", SPEC, max_k=2)[0]
    with pytest.raises(DataError, match="target size"):
        MultiSubjectDataset(tmp_path / "ds", TokenSpec((64, 64), (16, 16), 4, 2))[0]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "manifest.jsonl").write_text("")
    with pytest.raises(DataError, match="empty manifest"):
        MultiSubjectDataset(tmp_path / "empty", SPEC)
    (tmp_path / "ds" / "samples" / "s0" / "ref1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="ref1.png: unreadable image"):
        MultiSubjectDataset(tmp_path / "ds", SPEC)[0]
