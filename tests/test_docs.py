"""The README stays a short front page and its links hold (issue 24).

The README keeps what a newcomer needs first (what the harness is, the two commands, a picture,
the layout, how to read the tables and the gallery); the rest lives in docs/, each page linked
from it. Moving a file must not leave a dead link or image behind.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # [text](target) and ![alt](target), anchors dropped


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]


def test_readme_is_short():
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024


def test_every_doc_page_is_linked_from_the_readme():
    linked = {(ROOT / t).resolve() for t in relative_links(ROOT / "README.md")}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_relative_links_and_images_resolve():
    assert sum(len(relative_links(p)) for p in PAGES) > 10
    dead = [f"{p.relative_to(ROOT)}: {t}" for p in PAGES for t in relative_links(p) if not (p.parent / t).exists()]
    assert dead == []


def test_a_dead_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("see [x](missing.md) and ![y](figures/none.png) and [web](https://example.org)")
    assert relative_links(page) == ["missing.md", "figures/none.png"]
