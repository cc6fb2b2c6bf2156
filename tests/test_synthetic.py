"""The synthetic multi-subject world (mosaic.data.synthetic)."""
import json
import re

import numpy as np
import pytest

import mosaic.data.synthetic as syn
from mosaic.data.records import iter_samples, read_metadata
from mosaic.data.synthetic import Pose, SyntheticConfig, generate_dataset, generate_sample, identities, vocabulary
from mosaic.data.tokens import map_correspondences

CFG = SyntheticConfig()
SAMPLES = [generate_sample(7, "train", i, k, CFG) for k in range(1, 7) for i in range(3)]


def _cell(pose_meta: dict, y, x, res: int) -> np.ndarray:
    u, v = Pose(**pose_meta).to_canonical(y + 0.5, x + 0.5)
    return np.floor((v + 1) * res / 2).astype(int) * res + np.floor((u + 1) * res / 2).astype(int)


@pytest.mark.parametrize("s", SAMPLES, ids=lambda s: f"k{s.k}-{s.id}")
def test_correspondences_exact_and_unoccluded(s):
    assert s.target.shape == (96, 96, 3) and s.masks.shape == (s.k, 96, 96)
    assert s.masks.sum(0).max() <= 1  # visible masks are disjoint: occlusion resolved by z-order
    for j, r in enumerate(s.references):
        p = r.points.astype(int)
        assert r.image.shape == (48, 48, 3) and len(p) > 0
        ry, rx, ty, tx = p.T
        # Exact colour equality at every correspondence (nearest-neighbour rendering).
        assert np.array_equal(r.image[ry, rx], s.target[ty, tx])
        # Each target point is visible for its own subject and hidden for all others.
        assert s.masks[j, ty, tx].all()
        assert not np.delete(s.masks, j, 0)[:, ty, tx].any()
        # Both pixels sample the same canonical cell (from the poses recorded in meta): the match is
        # geometric, not a colour coincidence.
        sub = s.meta["subjects"][j]
        assert np.array_equal(_cell(sub["ref_pose"], ry, rx, CFG.res), _cell(sub["target_pose"], ty, tx, CFG.res))
        # Every visible pixel of the subject gets a correspondence (every cell is sampled by the reference).
        assert len(p) == s.masks[j].sum()


def test_token_ownership_is_disjoint_at_tiny_spec():
    dropped = []
    for s in SAMPLES:
        tc = map_correspondences([r.points for r in s.references], [(48, 48)] * s.k, (96, 96), 4, 2)
        owners = {}
        for k, t in zip(tc.ref_index.tolist(), tc.target_token.tolist()):
            owners.setdefault(t, set()).add(k)
        assert all(len(o) == 1 for o in owners.values())
        assert set(tc.ref_index.tolist()) == set(range(s.k))  # every subject keeps some tokens
        dropped.append(tc.dropped)
    # Subjects that touch share boundary tokens; those points are dropped and counted.
    assert sum(d for d, s in zip(dropped, SAMPLES) if s.k == 1) == 0
    assert sum(d for d, s in zip(dropped, SAMPLES) if s.k >= 4) > 0


def test_prompt_phrases_and_vocabulary():
    voc = vocabulary()
    words = set(" ".join([*voc["colours"], *voc["backgrounds"], *voc["shapes"], *voc["patterns"].values()]).split())
    for s in SAMPLES:
        phrases = [r.phrase for r in s.references]
        assert len(set(phrases)) == s.k and all(p in s.prompt for p in phrases)
        assert s.prompt.endswith(f"on a {s.meta['background']['colour']} background")
        assert set(re.findall(r"[a-z]+", s.prompt)) - words <= {"a", "an", "and", "on", "background"}
        for r, sub in zip(s.references, s.meta["subjects"]):
            assert r.subject_id == sub["id"] and sub["shape"] in r.phrase and sub["primary"] in r.phrase


def test_splits_share_no_identity():
    pools = {split: identities(split, CFG) for split in ("train", "val", "test")}
    assert [len(pools[s]) for s in pools] == [CFG.n_train, CFG.n_val, CFG.n_test]
    ids = [{i.id for i in p} for p in pools.values()]
    combos = [{(i.shape, i.primary, i.secondary, i.pattern) for i in p} for p in pools.values()]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not ids[a] & ids[b] and not combos[a] & combos[b]
    assert len({i.shape for i in pools["train"]}) >= 6 and len({i.pattern for i in pools["train"]}) >= 4
    test_sample = generate_sample(7, "test", 0, 5, CFG)
    assert {r.subject_id for r in test_sample.references} <= ids[2]


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a = _files(generate_dataset(tmp_path / "a", 6, 11, "val", 1, 4))
    b = _files(generate_dataset(tmp_path / "b", 6, 11, "val", 1, 4))
    c = _files(generate_dataset(tmp_path / "c", 6, 12, "val", 1, 4))
    assert a == b
    assert any(name.endswith(".npz") for name in a) and "dataset.json" in a
    differing = {n for n in a if a[n] != c.get(n)}
    assert "manifest.jsonl" in differing and any(n.endswith("target.png") for n in differing)
    # A sample does not depend on the others: sample 3 alone equals sample 3 of the dataset.
    rec3 = [json.loads(line) for line in a["manifest.jsonl"].decode().splitlines()][3]
    alone = generate_sample(11, "val", 3, rec3["k"], CFG)
    loaded = list(iter_samples(tmp_path / "a"))[3]
    assert np.array_equal(alone.target, loaded.target) and alone.prompt == loaded.prompt
    assert all(np.array_equal(x.points, y.points) for x, y in zip(alone.references, loaded.references))


def test_dataset_metadata(tmp_path):
    meta = read_metadata(generate_dataset(tmp_path / "d", 4, 0, "test", 2, 3))
    assert meta["generator"] == "mosaic.data.synthetic" and meta["seed"] == 0 and meta["split"] == "test"
    assert meta["k_range"] == [2, 3] and meta["num_samples"] == 4
    assert meta["config"]["target_size"] == 96 and meta["vocabulary"] == json.loads(json.dumps(vocabulary()))
    assert set(meta["identities"]) == {i.id for i in identities("test", CFG)}
    assert all(2 <= s.k <= 3 for s in iter_samples(tmp_path / "d"))


def test_interrupted_generation_leaves_nothing_finished(tmp_path, monkeypatch):
    real, calls = syn.generate_sample, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(syn, "generate_sample", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        generate_dataset(tmp_path / "ds", 5, 0, "train", 1, 3)
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary folder


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        generate_sample(0, "holdout", 0, 2)
    with pytest.raises(ValueError, match="k = 9"):
        generate_sample(0, "train", 0, 9)
    with pytest.raises(ValueError, match="k range"):
        generate_dataset(tmp_path / "x", 2, 0, "train", 3, 2)
    generate_dataset(tmp_path / "x", 1, 0, "train", 1, 1)
    with pytest.raises(FileExistsError, match="already exists"):
        generate_dataset(tmp_path / "x", 1, 0, "train", 1, 1)


def test_pose_round_trip_and_other_sizes():
    pose = Pose(30.5, 20.25, 12.0, 23.0, True)
    u, v = np.array([-0.9, 0.1, 0.7]), np.array([0.3, -0.8, 0.0])
    y, x = pose.to_pixels(u, v)
    assert np.allclose(pose.to_canonical(y, x), (u, v))
    cfg = SyntheticConfig(target_size=64, ref_size=32, view_jitter=False)
    s = generate_sample(1, "train", 0, 3, cfg)
    assert s.target.shape == (64, 64, 3) and s.references[0].image.shape == (32, 32, 3)
    for r in s.references:
        p = r.points
        assert np.array_equal(r.image[p[:, 0], p[:, 1]], s.target[p[:, 2], p[:, 3]])
        assert s.meta["subjects"][0]["ref_pose"]["angle"] == 0 and not s.meta["subjects"][0]["ref_pose"]["flip"]


def test_subjects_of_a_sample_are_told_apart_by_colour():
    """Default: no shared colour while the split allows it (always up to K = 4 on the 40-identity
    val/test pools), never a shared primary colour; version 1's rule (distinct phrases only) shared
    colours in many K = 4 samples, which made token-level identity ambiguous."""
    def colours(s):
        return [(m["primary"], m["secondary"]) for m in s.meta["subjects"]]

    for split in ("train", "val", "test"):
        for k in (2, 4):
            for i in range(20):
                cs = [c for pair in colours(generate_sample(3, split, i, k)) for c in pair]
                assert len(set(cs)) == len(cs), (split, k, i)
        for i in range(10):  # 2K > 10 colours: primaries stay distinct
            primaries = [p for p, _ in colours(generate_sample(3, split, i, 6))]
            assert len(set(primaries)) == 6
    legacy = SyntheticConfig(distinct_colours=False)
    shared = 0
    for i in range(20):
        cs = [c for pair in colours(generate_sample(3, "val", i, 4, legacy)) for c in pair]
        shared += len(set(cs)) < len(cs)
    assert shared >= 5  # the old rule allowed it, and it happened often
