"""The places world (mosaic.data.synthetic, world "places") and its per-subject scores (metrics.subjects)."""
import re

import numpy as np
import pytest

from mosaic.data.synthetic import COLOURS, PATTERNS, Pose, background_only, generate_sample, identities, world_config
from mosaic.data.tokens import map_correspondences
from metrics.subjects import palette_histogram, place_scores

CFG = world_config("places", target_size=72, ref_size=24)
SAMPLES = [generate_sample(3, split, i, k, CFG) for split in ("train", "test") for k in range(1, 7) for i in range(2)]
PLACES = dict(CFG.places())


def _cell(pose_meta: dict, y, x, res: int) -> np.ndarray:
    u, v = Pose(**pose_meta).to_canonical(y + 0.5, x + 0.5)
    return np.floor((v + 1) * res / 2).astype(int) * res + np.floor((u + 1) * res / 2).astype(int)


def test_six_named_places_tile_the_image():
    names = [n for n, _ in CFG.places()]
    assert names == ["top left", "top centre", "top right", "bottom left", "bottom centre", "bottom right"]
    cover = np.zeros((72, 72), int)
    for y0, x0, y1, x1 in PLACES.values():
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()


@pytest.mark.parametrize("s", SAMPLES, ids=lambda s: f"k{s.k}-{s.id}")
def test_correspondences_exact_and_each_subject_in_its_named_place(s):
    assert s.target.shape == (72, 72, 3) and s.masks.shape == (s.k, 72, 72)
    places = [m["place"] for m in s.meta["subjects"]]
    assert len(set(places)) == s.k  # one subject per place
    for j, (r, sub) in enumerate(zip(s.references, s.meta["subjects"])):
        ry, rx, ty, tx = r.points.astype(int).T
        assert np.array_equal(r.image[ry, rx], s.target[ty, tx])
        assert np.array_equal(_cell(sub["ref_pose"], ry, rx, CFG.res), _cell(sub["target_pose"], ty, tx, CFG.res))
        assert len(ty) == s.masks[j].sum() > 0  # no occlusion: every visible pixel corresponds
        y0, x0, y1, x1 = sub["slot"]
        assert PLACES[sub["place"]] == (y0, x0, y1, x1)
        ys, xs = np.nonzero(s.masks[j])
        assert ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1  # inside its place
        assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 >= 17  # 17-23 px: about 5 tokens of 4 px


def test_prompt_names_kind_and_place_only():
    identity_words = set(COLOURS) | set(PATTERNS.values()) | {"bullseye"}
    for s in SAMPLES:
        for r, sub in zip(s.references, s.meta["subjects"]):
            assert r.phrase == f"{'an' if sub['shape'][0] in 'aeiou' else 'a'} {sub['shape']} at the {sub['place']}"
            assert r.phrase in s.prompt
        words = set(re.findall(r"[a-z]+", s.prompt.replace(s.meta["background"]["colour"], "")))
        assert not words & identity_words, s.prompt  # no colour or texture word names a subject


def test_splits_disjoint_and_kinds_shared():
    pools = {split: identities(split, CFG) for split in ("train", "val", "test")}
    combos = [{(i.shape, i.primary, i.secondary, i.pattern) for i in p} for p in pools.values()]
    assert not combos[0] & combos[1] and not combos[0] & combos[2] and not combos[1] & combos[2]
    assert {i.shape for i in pools["test"]} == {i.shape for i in pools["train"]} == set(CFG.shapes)
    assert {r.subject_id for s in SAMPLES if s.id.startswith("test") for r in s.references} <= {i.id for i in pools["test"]}


def test_deterministic_and_background_only_matches():
    a, b = generate_sample(5, "val", 4, 3, CFG), generate_sample(5, "val", 4, 3, CFG)
    assert a.prompt == b.prompt and np.array_equal(a.target, b.target)
    assert all(np.array_equal(x.points, y.points) for x, y in zip(a.references, b.references))
    bg = background_only(5, "val", 4, 3, CFG)
    assert np.array_equal(bg[~a.masks.any(0)], a.target[~a.masks.any(0)])


def test_tokens_of_a_subject_stay_in_its_place():
    for s in SAMPLES:
        tc = map_correspondences([r.points for r in s.references], [(24, 24)] * s.k, (72, 72), 2, 2)
        assert tc.dropped == 0  # places do not touch: no shared boundary tokens
        assert set(tc.ref_index.tolist()) == set(range(s.k))


def test_bad_world_settings_are_refused():
    with pytest.raises(ValueError, match="phrase = 'kind' needs layout = 'places'"):
        world_config("blobs", phrase="kind")
    with pytest.raises(ValueError, match="max_k = 7"):
        world_config("places", max_k=7)
    with pytest.raises(ValueError, match="world 'nowhere'"):
        world_config("nowhere")


# ---------------------------------------------------------------- per-subject scores

def _boxes(s):
    return [tuple(m["slot"]) for m in s.meta["subjects"]]


def test_real_target_scores_own_high_and_other_low():
    for s in [x for x in SAMPLES if 2 <= x.k <= 5]:
        scores = place_scores(s.target, _boxes(s), [r.image for r in s.references])
        own, other = np.array([o for o, _, _ in scores]), np.array([x for _, x, _ in scores])
        assert own.min() > 80 and other.max() < 5, (s.id, own, other)


def test_swapped_subjects_score_as_leakage():
    s = next(x for x in SAMPLES if x.k == 2)
    (a, b) = _boxes(s)
    img = s.target.copy()
    bg = background_only(3, s.id.split("-")[0], int(s.id.split("-")[1]), 2, CFG)
    img[a[0]:a[2], a[1]:a[3]] = bg[a[0]:a[2], a[1]:a[3]]
    # paste subject 2's reference (its colours) into subject 1's place
    h = min(a[2] - a[0], 24)
    ref = s.references[1].image
    img[a[0]:a[0] + h, a[1]:a[1] + 24] = ref[:h]
    (own0, other0, _), (own1, other1, _) = place_scores(img, [a, b], [r.image for r in s.references])
    assert own0 < 10 and other0 > 80  # place 1 carries the other reference's colours
    assert own1 > 80


def test_empty_place_and_single_subject_reasons():
    s = next(x for x in SAMPLES if x.k == 1)
    bg = background_only(3, s.id.split("-")[0], int(s.id.split("-")[1]), 1, CFG)
    (own, other, why), = place_scores(bg, _boxes(s), [s.references[0].image])
    assert own == 0 and np.isnan(other) and why == "no subject colour in its place"
    assert palette_histogram(bg).sum() == 0
