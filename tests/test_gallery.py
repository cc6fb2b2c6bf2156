"""workflow.lib.gallery (the comparison gallery built from MLflow): its structure on a small store, and what a
person checks in a browser, on that store and on the micro DAG's (the `gallery` rule)."""
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mosaic.inference.bounds import write_bounds
from mosaic.data.synthetic import generate_dataset
from mosaic.infra.tracking import store as ms
from tests.browser_helpers import browser
from tests.workflow_helpers import micro_run_counts, snakemake
from workflow.lib import gallery

NASTY = 'a <script>alert("x")</script> & <b>bold</b> prompt'
TRAINED = {"none": "-SCAL -MDL", "mosaic": "+SCAL <b>+MDL</b>"}  # a label with markup, escaped too
SEEDS = (0, 1)


def _samples(results, dataset, method, source, attention):
    """A sample folder of `method` on heldout-k2 (write_bounds' layout and manifest), with attention maps."""
    folder = results / "samples" / source / "evalset~heldout-k2"
    bound = method if method in ("ceiling", "floor") else "floor"
    write_bounds(dataset, bound, [0], folder, method=method)
    lines = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    for i, rec in enumerate(lines):
        if i == 0:
            rec["prompt"] = NASTY
        if i == 1:  # a benchmark's reference names its subject by word only (no phrase)
            rec["references"][1].pop("phrase", None)
            rec["references"][1]["word"] = "backpack"
        if attention:
            maps = []
            for j in range(len(rec["references"])):
                rel = f"attention/{rec['id']}_ref{j}.png"
                (folder / rel).parent.mkdir(exist_ok=True)
                Image.fromarray(np.full((8, 8), 40 * (j + 1), np.uint8)).save(folder / rel)
                maps.append(rel)
            rec.setdefault("meta", {})["attention_maps"] = maps
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder, lines


def _eval(results, source, lines, base):
    """An evaluation folder with eval/metrics.csv: CLIP-I and DINO per reference, CLIP-T per image."""
    folder = results / "evals" / source / "evalset~heldout-k2"
    (folder / "eval").mkdir(parents=True)
    rows = []
    for i, rec in enumerate(lines):
        for j in range(len(rec["references"])):
            for metric, off in (("CLIP-I", 0.0), ("DINO", 10.0)):
                rows.append({"id": rec["id"], "metric": metric, "label": f"{metric} (tiny-world)", "reference": j,
                             "value": base + off + i + j / 4, "reason": ""})
        rows.append({"id": rec["id"], "metric": "CLIP-T", "label": "CLIP-T (tiny-world)", "reference": None,
                     "value": base / 2 + i, "reason": ""})
    pd.DataFrame(rows).to_csv(folder / "eval" / "metrics.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A results folder: a test split of 2 prompts x 2 subjects, ceiling and floor, two methods x two seeds
    (studies ablation; mosaic also in scaling, the same evaluation folders), logged as the DAG logs them."""
    work = tmp_path_factory.mktemp("g")
    results = work / "results"
    dataset = generate_dataset(results / "data" / "synthetic" / "test_k2", 2, 0, "test", 2, 2)
    uri = ms.ensure_store(results / "mlflow", ["ablation", "scaling"])
    runs = [("ceiling", None, "bounds/method~ceiling", "ceiling: the real targets", 90.0),
            ("floor", None, "bounds/method~floor", "floor", 20.0)]
    runs += [(m, s, f"method~{m}/ktrain~2/seed~{s}", label, 50.0 + 10 * s + (m == "mosaic"))
             for m, label in TRAINED.items() for s in SEEDS]
    for method, seed, source, label, base in runs:
        samples, lines = _samples(results, dataset, method, source, attention=seed is not None)
        ev = _eval(results, source, lines, base)
        tags = {"kind": "eval", "method": method, "label": label, "evalset": "heldout-k2", "n": "2",
                "samples_dir": str(samples), "eval_dir": str(ev)}
        if seed is not None:
            tags.update(seed=str(seed), ktrain="2")
        for study in ["ablation"] + (["scaling"] if method == "mosaic" else []):
            ms.log_record(uri, study, f"eval:{ev}", f"{method}-{seed}", {"artifacts": ["eval/metrics.csv"]}, ev,
                          {**tags, "study": study})
    return work, uri


class Page(HTMLParser):
    """The gallery's rows and cards: attributes, image sources (main image, attention maps) and text."""

    def __init__(self):
        super().__init__()
        self.rows, self.cards, self.imgs, self.text, self._card, self._details = [], [], [], [], None, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class", "")
        if tag == "div" and cls == "row":
            self.rows.append({**a, "cards": [], "refs": [], "truth": []})
        elif tag == "figure" and cls == "card":
            self._card = {**a, "img": [], "maps": []}
            self.rows[-1]["cards"].append(self._card)
            self.cards.append(self._card)
        elif tag == "figure" and cls in ("ref", "truth"):
            self._card = {"kind": cls}
        elif tag == "details":
            self._details += 1
        elif tag == "img":
            self.imgs.append(a["src"])
            if self._card is not None and "kind" in self._card:
                self.rows[-1]["refs" if self._card["kind"] == "ref" else "truth"].append(a["src"])
            elif self._card is not None and not self._details:
                self._card["img"].append(a["src"])
            elif self._card is not None and a.get("class") == "map":  # over the image again, in the details
                self._card["maps"].append(a["src"])

    def handle_endtag(self, tag):
        if tag == "figure":
            self._card = None
        elif tag == "details":
            self._details -= 1

    def handle_data(self, data):
        self.text.append(data)


def parse(path):
    p = Page()
    p.feed(Path(path).read_text())
    return p


def test_one_image_per_method_and_seed_per_prompt_with_its_metrics(small):
    work, uri = small
    out = work / "results" / "gallery" / "index.html"
    rows = gallery.build(uri, ["ablation", "scaling"], work / "results" / "mlflow", work / "results", out,
                         ["ceiling", "none", "mosaic", "floor"])
    page = parse(out)
    assert len(page.rows) == len(rows) == 2 and {r["data-k"] for r in page.rows} == {"2"}
    want = [("ceiling", ""), ("none", "0"), ("none", "1"), ("mosaic", "0"), ("mosaic", "1"), ("floor", "")]
    for row in page.rows:  # the config's order; one image per run logged by two studies
        assert [(c["data-method"], c["data-seed"]) for c in row["cards"]] == want
        assert all(len(c["img"]) == 1 for c in row["cards"]) and len(row["refs"]) == 2 and len(row["truth"]) == 1
        for c in row["cards"]:
            assert c["data-ktrain"] == ("2" if c["data-seed"] else "")
            assert c["data-study"] == ("ablation scaling" if c["data-method"] == "mosaic" else "ablation")
            assert len(c["maps"]) == (2 if c["data-seed"] else 0)  # the trained methods' attention maps
    # the per-image values of eval/metrics.csv: mosaic seed 1 on the second prompt (base 61, i = 1)
    card = next(c for r in rows for c in r.cards if (r.entry, c.method, c.seed) == (rows[1].entry, "mosaic", "1"))
    text = {s.metric: [v for _, v, _ in s.values] for s in card.scores}
    assert text == {"CLIP-I": [62.0, 62.25], "CLIP-T": [31.5], "DINO": [72.0, 72.25]}
    html = out.read_text()
    assert "62.00 / 62.25 <small>min 62.00</small>" in html and "31.50" in html
    # the ground truth is the test split's target of that prompt
    target = work / "results" / "data" / "synthetic" / "test_k2" / "samples" / rows[0].entry / "target.png"
    assert rows[0].truth == target
    # a reference's caption: its phrase, else (a benchmark's) its subject word
    assert [ph for _, ph in rows[1].references][1] == "backpack" and rows[0].references[1][1]


def test_links_are_relative_resolve_and_survive_moving_the_results_folder(small, tmp_path):
    work, uri = small
    out = work / "results" / "gallery" / "index.html"
    gallery.build(uri, ["ablation"], work / "results" / "mlflow", work / "results", out)
    page = parse(out)
    assert page.imgs and not any(s.startswith(("/", "data:", "file:", "http")) for s in page.imgs)
    for src in page.imgs:
        assert (out.parent / unquote(src)).is_file(), src
    assert out.stat().st_size < 64_000  # linked, not inlined
    moved = tmp_path / "elsewhere" / "results"
    shutil.copytree(work / "results", moved)
    for src in page.imgs:  # the page moved with its folder
        assert (moved / "gallery" / unquote(src)).is_file(), src
    # built again from the moved store, whose tags still name the old folder: its links stay inside the new one
    out2 = moved / "gallery" / "again.html"
    gallery.build(ms.store_uri(moved / "mlflow"), ["ablation"], moved / "mlflow", moved, out2)
    again = parse(out2).imgs
    assert len(again) == len(page.imgs)
    for src in again:
        target = (out2.parent / unquote(src)).resolve()
        assert target.is_file() and target.is_relative_to(moved.resolve()), src


def test_prompts_and_labels_are_escaped(small):
    work, uri = small
    out = work / "results" / "gallery" / "index.html"
    gallery.build(uri, ["ablation"], work / "results" / "mlflow", work / "results", out)
    html = out.read_text()
    assert NASTY not in html and "<script>alert" not in html and "<b>+MDL</b>" not in html
    assert "a &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt; prompt" in html
    assert NASTY in "".join(parse(out).text)  # what a reader sees is the prompt as written
    assert html.count("<script>") == 1  # the page's own filter script only


def test_filters_offer_the_values_present(small):
    work, uri = small
    out = work / "results" / "gallery" / "index.html"
    gallery.build(uri, ["ablation", "scaling"], work / "results" / "mlflow", work / "results", out,
                  ["ceiling", "none", "mosaic", "floor"])
    html = out.read_text()
    for name, values in {"study": ["ablation", "scaling"], "method": ["ceiling", "none", "mosaic", "floor"],
                         "k": ["2"], "seed": ["0", "1"], "ktrain": ["2"]}.items():
        block = html.split(f'data-filter="{name}"')[1].split("</select>")[0]
        assert [v.split('"')[0] for v in block.split('value="')[2:]] == values, name


def test_bad_input_names_the_file_and_the_run(small, tmp_path):
    work, uri = small
    bad = tmp_path / "metrics.csv"
    pd.DataFrame({"id": ["a"], "value": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=rf"{bad}: missing columns \['metric'\]"):
        gallery.read_scores(bad)
    empty = ms.ensure_store(tmp_path / "store", ["ablation"])
    ms.log_record(empty, "ablation", "eval:x", "x-run", {}, tmp_path, {"kind": "eval", "samples_dir": "/nowhere/s"})
    with pytest.raises(FileNotFoundError, match=r"\(x-run\): tag samples_dir '/nowhere/s': no manifest.jsonl"):
        gallery.collect(empty, ["ablation"], tmp_path / "store", tmp_path)


def test_locate_prefers_the_results_folder_then_the_recorded_path(tmp_path):
    root = tmp_path / "new" / "results"
    (root / "samples" / "a").mkdir(parents=True)
    (root / "samples" / "a" / "x.png").write_bytes(b"")
    old = tmp_path / "old" / "results" / "samples" / "a" / "x.png"
    assert gallery.locate(old, root) == root / "samples" / "a" / "x.png"  # re-rooted: it moved
    assert gallery.locate("results/samples/a/x.png", root) == root / "samples" / "a" / "x.png"  # workdir-relative
    outside = tmp_path / "bench" / "ref.png"
    outside.parent.mkdir()
    outside.write_bytes(b"")
    assert gallery.locate(outside, root) == outside  # e.g. a benchmark's reference
    assert gallery.locate(tmp_path / "gone" / "y.png", root) is None


# ---------------------------------------------------------------- in a browser

def check_in_browser(page_path, shot=None):
    """What a person checks: every image loads, a row shows one image per method x seed of the store, the
    filters change what is shown, the attention maps appear on demand. Returns the cards per row."""
    with browser() as b:
        page = b.new_page(viewport={"width": 1600, "height": 900})
        page.goto(Path(page_path).resolve().as_uri())
        page.wait_for_load_state("load")
        broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
                               ".map(i => i.getAttribute('src'))")
        assert page.evaluate("document.images.length") > 0 and broken == []
        assert not page.is_visible("#unlinked")  # the warning of a page away from its results folder

        def visible(sel=".card"):
            return page.evaluate("sel => [...document.querySelectorAll(sel)].filter(e => e.checkVisibility())"
                                 ".map(e => ({method: e.dataset.method, seed: e.dataset.seed, k: e.dataset.k}))", sel)

        cards = page.evaluate("[...document.querySelectorAll('.row')].map(r => [...r.querySelectorAll('.card')]"
                              ".map(c => [c.dataset.method, c.dataset.seed]))")
        assert len(visible()) == sum(map(len, cards))
        methods = sorted({m for row in cards for m, _ in row})
        for method in methods:  # one method: only its images
            page.select_option("select[data-filter=method]", method)
            shown = visible()
            assert shown and {c["method"] for c in shown} == {method}
        page.select_option("select[data-filter=method]", "")
        seeds = sorted({s for row in cards for _, s in row if s})
        for seed in seeds:  # one seed: the trained methods' images of that seed (bounds have none: kept)
            page.select_option("select[data-filter=seed]", seed)
            shown = visible()
            assert {c["seed"] for c in shown} <= {seed, ""} and any(c["seed"] == seed for c in shown)
            assert len(shown) < sum(map(len, cards)) or len(seeds) == 1
        page.select_option("select[data-filter=seed]", "")
        for k in page.evaluate("[...document.querySelectorAll('select[data-filter=k] option')].map(o => o.value)"):
            if k:
                page.select_option("select[data-filter=k]", k)
                assert visible(".row") and {r["k"] for r in visible(".row")} == {k}
        page.select_option("select[data-filter=k]", "")
        assert len(visible()) == sum(map(len, cards))  # "all" again shows everything
        assert visible("img.map") == []  # attention maps: on demand
        page.check("#attention")
        maps = page.evaluate("[...document.querySelectorAll('img.map')].filter(e => e.checkVisibility())"
                             ".map(e => e.naturalWidth)")
        assert maps and all(w > 0 for w in maps)
        if shot:
            page.screenshot(path=str(shot), full_page=True)
        return cards


def _shot(name):
    folder = os.environ.get("MOSAIC_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder) / name
    return None


def test_the_small_gallery_in_a_browser(small, tmp_path):
    work, uri = small
    out = work / "results" / "gallery" / "index.html"
    gallery.build(uri, ["ablation", "scaling"], work / "results" / "mlflow", work / "results", out,
                  ["ceiling", "none", "mosaic", "floor"])
    cards = check_in_browser(out)
    assert cards == [[["ceiling", ""], ["none", "0"], ["none", "1"], ["mosaic", "0"], ["mosaic", "1"],
                      ["floor", ""]]] * 2
    alone = tmp_path / "index.html"  # the page without its results folder (as in the Snakemake report) says so
    shutil.copy(out, alone)
    with browser() as b:
        page = b.new_page()
        page.goto(alone.as_uri())
        page.wait_for_load_state("load")
        assert page.is_visible("#unlinked") and "open results/gallery/index.html" in page.inner_text("#unlinked")


@pytest.mark.slow
def test_the_micro_dags_gallery_in_a_browser(micro_run):
    """The `gallery` rule on the micro DAG: every prompt row shows one image per evaluation run in the store."""
    work, cfg = micro_run
    snakemake(work, cfg, "results/gallery/index.html")
    out = work / "results" / "gallery" / "index.html"
    runs = gallery.tables.load_runs(ms.store_uri(work / "results" / "mlflow"), "ablation")
    expected = sorted((m, "" if pd.isna(s) else str(s)) for m, s in zip(runs["tags.method"], runs["tags.seed"]))
    assert len(expected) == micro_run_counts()[0]  # ceiling, base, floor, and none and mosaic x two seeds
    cards = check_in_browser(out, _shot("gallery.png"))
    assert len(cards) == 2  # the micro test split's prompts
    for row in cards:
        assert sorted(map(tuple, row)) == expected
    log = json.loads((work / "results" / "logs" / "gallery.log").read_text())  # the job's summary
    assert log == {"heldout-k2": {"prompts": 2, "images": 14, "missing": 0, "ground_truth": 2}}
