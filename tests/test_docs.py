"""The documentation a newcomer reads: every relative link in README.md and docs/*.md (and the other
Markdown pages they lead to) points at a file of the repository, and at a heading of it when it
names one; the README stays short; its minimal config is a config raykd accepts."""

import re
from pathlib import Path

import pytest
import yaml

from raykd import spaces
from raykd.config import RaykdConfig

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md",
         ROOT / "CHANGELOG.md", ROOT / "data" / "squad_real" / "README.md", ROOT / "data" / "sst2_real" / "README.md"]
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(page: Path) -> str:
    return FENCE.sub("", page.read_text())


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    out = set()
    for line in _prose(page).splitlines():
        if m := re.match(r"#{1,6} (.+)", line):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(page)) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_of_the_repository(page):
    assert page.is_file()
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
        assert file.is_file(), f"{page.name}: {target} is not a file of the repository"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.name}: {target}: no such heading"


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[a](missing.md) [b](https://example.org) ![c](img.png)\n```\n[d](in-code.md)\n```\n")
    assert relative_links(page) == ["missing.md", "img.png"]


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_readmes_minimal_config_is_accepted():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## A minimal config.*?```yaml\n(.*?)```", text, re.DOTALL).group(1)
    raw = yaml.safe_load(block)
    cfg = RaykdConfig.from_dict(raw, source="README.md")
    params = spaces.parse(cfg.space, cfg.source)
    spaces.check_keys(params, cfg.source, cfg.task)
    assert cfg.task == "classification" and spaces.searched_keys(params)
    for f in (cfg.data.train_file, cfg.data.validation_file):
        assert (ROOT / f).is_file(), f  # the shipped sample, relative to the repository root
