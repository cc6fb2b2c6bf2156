"""The comparison gallery (results/gallery/index.html): for each evaluation set and prompt, the references, the
ground truth where there is one, and every method's image (each method x seed) in one row, each with its
per-image metric values; filters by study, method, K (subjects in the prompt), seed and training K; the
per-reference attention maps on demand.

Why it exists: MLflow compares params and metrics, not images; the paper's qualitative figures compare, for one
prompt, each method's image. Built from the MLflow store: the studies' evaluation runs (mlflow.search_runs, via
workflow.lib.tables.load_runs) and each run's `eval/metrics.csv` artifact (one row per image x reference x metric),
plus the sample folder the run's tags name (`samples_dir`: prompts, images, attention maps) and, for the held-out
sets, the test split's targets (the ground truth). Plain static HTML: no server, nothing fetched; images are
linked by paths relative to the page, never inlined, so it stays small and still works when the results folder is
moved as a whole. A run logged by several studies (one evaluation folder) is one image, tagged with every study.
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import pandas as pd

from mosaic.infra.runfolder import MANIFEST_FILE, atomic_write

from . import tables

METRICS_ARTIFACT = "eval/metrics.csv"  # the per-image rows an evaluation run holds (metrics.evaluate)
FILTERS = {"study": "study", "method": "method", "k": "K (subjects)", "seed": "seed", "ktrain": "train K"}


@dataclass
class Score:
    metric: str
    label: str
    values: list[tuple[int | None, float, str]]  # (reference index or None, value, reason when NaN)


@dataclass
class Card:
    """One method's image for one prompt."""
    method: str
    label: str
    seed: str  # the training seed ("" for a bound or an official release: none)
    ktrain: str  # the most subjects in training ("" likewise)
    sample_seed: str
    run_id: str
    run_name: str
    image: Path | None
    attention: list[tuple[int, Path]]  # (reference index, map) that exist
    scores: list[Score]
    studies: list[str] = field(default_factory=list)


@dataclass
class Row:
    """One prompt of one evaluation set."""
    evalset: str
    entry: str
    prompt: str
    references: list[tuple[Path | None, str]]  # (image, phrase)
    truth: Path | None
    cards: list[Card] = field(default_factory=list)


def locate(path: str | os.PathLike, root: str | os.PathLike) -> Path | None:
    """`path` as the store recorded it, found under `root` (the results folder, or the store's): as recorded, or at
    its longest tail that exists under `root` (the store keeps the paths of the folder the DAG ran in, which may
    have been moved or copied since); else the recorded path if it exists (e.g. benchmark references outside
    the results); else None."""
    p, root = Path(path), Path(root).absolute()
    if p.is_absolute() and p.exists() and p.is_relative_to(root):
        return p
    parts = p.parts[1:] if p.is_absolute() else p.parts
    for i in range(len(parts) - 1):  # a tail of at least a folder and a name
        if (root / Path(*parts[i:])).exists():
            return root / Path(*parts[i:])
    return p.absolute() if p.exists() else None


def _tag(run: pd.Series, name: str) -> str:
    v = run.get(f"tags.{name}")
    return "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)


def _metrics_csv(run: pd.Series, store: Path, results: Path) -> Path:
    """The run's eval/metrics.csv: its MLflow artifact, else the one in the evaluation folder its tags name."""
    uri = urlparse(str(run.get("artifact_uri") or ""))
    found = locate(Path(unquote(uri.path)) / METRICS_ARTIFACT, store) if uri.scheme in ("file", "") and uri.path \
        else None
    if found is None and _tag(run, "eval_dir"):
        found = locate(Path(_tag(run, "eval_dir")) / METRICS_ARTIFACT, results)
    if found is None:
        raise FileNotFoundError(f"MLflow run {run['run_id']} ({_tag(run, 'mlflow.runName')}): no {METRICS_ARTIFACT} "
                                f"artifact under {run.get('artifact_uri')} nor in tag eval_dir {_tag(run, 'eval_dir')!r}")
    return found


def read_scores(path: Path) -> dict[str, list[Score]]:
    """image id -> its metric values (per reference where the metric has one), in the tables' metric order."""
    df = pd.read_csv(path)
    missing = {"id", "metric", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    out: dict[str, list[Score]] = {}
    order = tables.ORDER
    for (image_id, metric), g in df.groupby(["id", "metric"], sort=False):
        label = str(g["label"].dropna().iloc[0]) if "label" in g and g["label"].notna().any() else str(metric)
        vals = []
        for _, r in g.iterrows():
            ref = r.get("reference")
            reason = r.get("reason")
            vals.append((None if pd.isna(ref) else int(ref), float(r["value"]),
                         "" if reason is None or pd.isna(reason) else str(reason)))
        out.setdefault(str(image_id), []).append(Score(str(metric), label, sorted(vals, key=lambda v: v[0] or 0)))
    for scores in out.values():
        scores.sort(key=lambda s: (order + [s.metric]).index(s.metric))
    return out


@lru_cache(maxsize=None)
def _targets(dataset: Path) -> dict[str, Path]:
    from mosaic.data.records import read_manifest

    return {str(r["id"]): dataset / r["target"] for r in read_manifest(dataset)}


def ground_truth(reference: Path | None, entry: str) -> Path | None:
    """The real target of a held-out prompt: its test split's `samples/<entry>/target.png` (mosaic.data.records's
    layout, which holds the references too); None for a prompt without one (a benchmark's)."""
    if reference is None or reference.parent.parent.name != "samples":
        return None
    dataset = reference.parents[2]
    if not (dataset / "dataset.json").is_file():
        return None
    target = _targets(dataset).get(entry)
    return target if target is not None and target.is_file() else None


def collect(tracking_uri: str, experiments: list[str], store: str | os.PathLike, results: str | os.PathLike,
            order: list[str] | None = None) -> list[Row]:
    """The gallery's rows (evaluation set x prompt) with every evaluation run's image of that prompt."""
    from metrics.manifest import read_items

    store, results = Path(store).absolute(), Path(results).absolute()
    rows: dict[tuple[str, str], Row] = {}
    seen: dict[str, list[Card]] = {}  # evaluation folder -> its cards (one run logged by several studies)
    for experiment in experiments:
        runs = tables.load_runs(tracking_uri, experiment)
        for _, run in runs.iterrows():
            key = _tag(run, "eval_dir") or str(run["run_id"])
            if key in seen:
                for card in seen[key]:
                    card.studies.append(_tag(run, "study") or experiment)
                continue
            seen[key] = []
            samples = locate(_tag(run, "samples_dir"), results) if _tag(run, "samples_dir") else None
            if samples is None or not (samples / MANIFEST_FILE).is_file():
                raise FileNotFoundError(f"MLflow run {run['run_id']} ({_tag(run, 'mlflow.runName')}): tag samples_dir "
                                        f"{_tag(run, 'samples_dir')!r}: no {MANIFEST_FILE} there or under {results}")
            scores = read_scores(_metrics_csv(run, store, results))
            evalset = _tag(run, "evalset")
            for item in read_items(samples / MANIFEST_FILE):
                entry = str(item.info.get("entry") or item.id)
                row = rows.get((evalset, entry))
                if row is None:
                    refs = [(locate(r.image, results), r.phrase or r.word) for r in item.references]  # benchmarks: the word
                    row = rows[(evalset, entry)] = Row(evalset, entry, item.prompt, refs,
                                                       ground_truth(refs[0][0] if refs else None, entry))
                maps = (item.info.get("meta") or {}).get("attention_maps") or []
                attention = [(j, p) for j, rel in enumerate(maps) if (p := locate(samples / rel, results))]
                card = Card(method=_tag(run, "method"), label=_tag(run, "label"), seed=_tag(run, "seed"),
                            ktrain=_tag(run, "ktrain"), sample_seed="" if item.seed is None else str(item.seed),
                            run_id=str(run["run_id"]), run_name=_tag(run, "mlflow.runName"),
                            image=locate(item.image, results), attention=attention, scores=scores.get(item.id, []),
                            studies=[_tag(run, "study") or experiment])
                row.cards.append(card)
                seen[key].append(card)
    rank = {m: i for i, m in enumerate(order or [])}
    for row in rows.values():
        row.cards.sort(key=lambda c: (rank.get(c.method, len(rank)), c.method, _num(c.ktrain), _num(c.seed),
                                      _num(c.sample_seed)))
    return sorted(rows.values(), key=lambda r: (len(r.references), r.evalset, r.entry))


def _num(s: str) -> tuple[int, float | str]:
    try:
        return (0, float(s))
    except ValueError:
        return (1, s)


# ---------------------------------------------------------------- HTML

def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _src(path: Path, page_dir: Path) -> str:
    return _e(quote(Path(os.path.relpath(path, page_dir)).as_posix()))


def _img(path: Path | None, page_dir: Path, alt: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    if path is None:
        return f'<div class="missing"{c}>{_e(alt)}: not found</div>'
    return f'<img{c} src="{_src(path, page_dir)}" alt="{_e(alt)}">'


def _fmt(v: float, reason: str) -> str:
    if pd.isna(v):
        return f'<span title="{_e(reason or "NaN")}">n/a</span>'
    return f"{v:.2f}" if not reason else f'<span title="{_e(reason)}">{v:.2f}*</span>'


def _score(s: Score) -> str:
    cells = " / ".join(_fmt(v, why) for _, v, why in s.values)
    per_ref = [v for ref, v, _ in s.values if ref is not None and not pd.isna(v)]
    if len(s.values) > 1 and per_ref:
        cells += f" <small>min {min(per_ref):.2f}</small>"
    return f'<tr><th title="{_e(s.label)}">{_e(s.metric)}</th><td>{cells}</td></tr>'


def _card(c: Card, row: Row, page_dir: Path, sample_seeds: bool) -> str:
    data = {"method": c.method, "seed": c.seed, "ktrain": c.ktrain, "study": " ".join(dict.fromkeys(c.studies))}
    attrs = " ".join(f'data-{k}="{_e(v)}"' for k, v in data.items())
    what = [f"seed {c.seed}" if c.seed else "", f"train K {c.ktrain}" if c.ktrain else "",
            f"sample seed {c.sample_seed}" if c.sample_seed and sample_seeds else ""]
    out = [f'<figure class="card" {attrs} title="MLflow run {_e(c.run_id)} ({_e(c.run_name)})">',
           _img(c.image, page_dir, f"{c.method} {row.entry}"),
           f'<figcaption><b>{_e(c.method)}</b> {_e(c.label)}<br>{_e(" · ".join(w for w in what if w))}</figcaption>']
    if c.scores:
        out.append('<table class="m">' + "".join(_score(s) for s in c.scores) + "</table>")
    if c.attention:
        phrases = [p for _, p in row.references]
        maps = "".join(f'<div class="ov">{_img(c.image, page_dir, "sample")}{_img(p, page_dir, f"ref {j}", "map")}'
                       f'<span>ref {j}: {_e(phrases[j] if j < len(phrases) else "")}</span></div>'
                       for j, p in c.attention)
        out.append(f'<details class="attn"><summary>attention maps</summary>{maps}</details>')
    return "".join(out) + "</figure>"


def _row(r: Row, page_dir: Path, sample_seeds: bool) -> str:
    refs = "".join(f'<figure class="ref">{_img(p, page_dir, f"reference {j}")}<figcaption>ref {j}: {_e(ph)}'
                   "</figcaption></figure>" for j, (p, ph) in enumerate(r.references))
    truth = (f'<figure class="truth">{_img(r.truth, page_dir, "ground truth")}<figcaption>ground truth (the real '
             "target)</figcaption></figure>" if r.truth else "")
    cards = "".join(_card(c, r, page_dir, sample_seeds) for c in r.cards)
    return (f'<div class="row" data-k="{len(r.references)}" data-evalset="{_e(r.evalset)}">'
            f'<div class="prompt"><span class="entry">{_e(r.entry)}</span> {_e(r.prompt)}</div>'
            f'<div class="cells">{refs}{truth}<span class="sep"></span>{cards}</div></div>')


def _options(name: str, values: list[str], labels: dict[str, str] | None = None) -> str:
    opts = "".join(f'<option value="{_e(v)}">{_e(v)}{_e(" (" + labels[v] + ")") if labels and labels.get(v) else ""}'
                   "</option>" for v in values)
    return (f'<label>{_e(FILTERS[name])} <select data-filter="{name}"><option value="">all</option>{opts}'
            "</select></label>")


CSS = """body{font:13px system-ui,sans-serif;margin:0;background:#f6f6f6;color:#222}
header{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #bbb;padding:6px 12px}
header h1{font-size:16px;margin:0 0 4px}header p{margin:2px 0;color:#555}header label{margin-right:12px}
h2{font-size:15px;margin:14px 12px 4px}.row{margin:6px 12px;padding:6px 8px;background:#fff;border:1px solid #ddd}
.prompt{font-weight:600;margin-bottom:4px}.entry{color:#888;font-weight:400;margin-right:6px}
.cells{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.sep{border-left:2px solid #999;align-self:stretch}
figure{margin:0;width:164px;font-size:11px}figure img{width:128px;height:128px;object-fit:contain;background:#eee;
display:block}figure.ref img{width:64px;height:64px}figure.ref{width:72px}figure.truth img{outline:2px solid #2a7}
table.m{border-collapse:collapse;margin-top:2px}table.m th{text-align:left;font-weight:500;padding-right:4px;white-space:nowrap;vertical-align:top}
.missing{width:128px;height:128px;background:#fdd;color:#900;font-size:10px;overflow:hidden}
details.attn summary{cursor:pointer;color:#226}.ov{position:relative;width:128px;height:142px;margin-top:3px}
.ov img{position:absolute;top:0;left:0}.ov img.map{mix-blend-mode:multiply;opacity:.75}
.ov span{position:absolute;top:129px;left:0;white-space:nowrap}.warn{color:#900;font-weight:600}[hidden]{display:none!important}"""

JS = """(function(){
const sels=[...document.querySelectorAll('select[data-filter]')];
function ok(el,want){for(const [k,v] of want){const h=el.dataset[k];
  if(h!==undefined&&h!==''&&!h.split(' ').includes(v))return false;}return true;}
function apply(){const want=sels.filter(s=>s.value).map(s=>[s.dataset.filter,s.value]);let shown=0;
  document.querySelectorAll('section.evalset').forEach(sec=>{let rows=0;
    sec.querySelectorAll('.row').forEach(row=>{let n=0;
      row.querySelectorAll('.card').forEach(c=>{const v=ok(c,want);c.hidden=!v;n+=v;});
      const v=n>0&&ok(row,want);row.hidden=!v;if(v){rows++;shown+=n;}});
    sec.hidden=rows==0;});
  document.getElementById('shown').textContent=shown;}
sels.forEach(s=>s.addEventListener('change',apply));
document.getElementById('attention').addEventListener('change',e=>
  document.querySelectorAll('details.attn').forEach(d=>{d.open=e.target.checked;}));
window.addEventListener('load',()=>{
  document.getElementById('unlinked').hidden=[...document.images].every(i=>i.naturalWidth>0);});
apply();})();"""


def render(rows: list[Row], page: str | os.PathLike, source: str = "") -> str:
    """The page for `rows`, its links relative to `page` (the HTML file's path)."""
    page_dir = Path(page).absolute().parent
    cards = [c for r in rows for c in r.cards]
    methods = list(dict.fromkeys(c.method for c in cards))
    labels = {c.method: c.label for c in cards}
    values = {k: sorted({v for c in cards for v in getattr(c, k).split() if v}, key=_num) for k in ("seed", "ktrain")}
    studies = list(dict.fromkeys(s for c in cards for s in c.studies))
    ks = sorted({str(len(r.references)) for r in rows}, key=_num)
    filters = (_options("study", studies) + _options("method", methods, labels) + _options("k", ks)
               + _options("seed", values["seed"]) + _options("ktrain", values["ktrain"])
               + '<label><input type="checkbox" id="attention"> attention maps</label>')
    several = len({c.sample_seed for c in cards}) > 1  # the sample seed is shown where there are several
    sections, by_set = [], {}
    for r in rows:
        by_set.setdefault(r.evalset, []).append(r)
    for evalset, rs in by_set.items():
        sections.append(f'<section class="evalset" data-evalset="{_e(evalset)}"><h2>{_e(evalset)} '
                        f"<small>({len(rs)} prompts)</small></h2>" + "".join(_row(r, page_dir, several) for r in rs)
                        + "</section>")
    missing = sum(p is None for r in rows for p in [*(p for p, _ in r.references), *(c.image for c in r.cards)])
    note = f'<p class="warn">{missing} images not found (marked in red)</p>' if missing else ""
    note += ('<p class="warn" id="unlinked" hidden>Some images did not load: this page links them from its results '
             "folder (e.g. a copy inside the Snakemake report has none); open results/gallery/index.html there.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>MOSAIC comparison gallery</title>"
            f"<style>{CSS}</style></head><body><header><h1>MOSAIC comparison gallery</h1>"
            f"<p>{len(rows)} prompts, {len(cards)} images (<span id=\"shown\">{len(cards)}</span> shown) from the "
            f"evaluation runs of {_e(source)}. Per image: the metrics of eval/metrics.csv (per reference: "
            "value / value, and their min; * a value with a reason, hover for it). Bounds and official releases have "
            f"no training seed or K: every seed and train K shows them.</p>{note}<p>{filters}</p></header>"
            + "".join(sections) + f"<script>{JS}</script></body></html>\n")


def build(tracking_uri: str, experiments: list[str], store: str | os.PathLike, results: str | os.PathLike,
          out: str | os.PathLike, order: list[str] | None = None) -> list[Row]:
    """Collect the rows from the store and write the page to `out` atomically; returns the rows."""
    rows = collect(tracking_uri, experiments, store, results, order)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = f"the MLflow store {Path(store).name}/ (experiments {', '.join(experiments)})"
    atomic_write(out, render(rows, out, source))
    return rows


def summary(rows: list[Row]) -> str:
    """One line per evaluation set for the job's log: prompts, images, and what was not found."""
    out = {}
    for r in rows:
        s = out.setdefault(r.evalset, {"prompts": 0, "images": 0, "missing": 0, "ground_truth": 0})
        s["prompts"] += 1
        s["images"] += len(r.cards)
        s["ground_truth"] += r.truth is not None
        s["missing"] += sum(c.image is None for c in r.cards) + sum(p is None for p, _ in r.references)
    return json.dumps(out, indent=2)
