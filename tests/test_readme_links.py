"""Every relative link of the project's documents resolves: a file or folder that exists, and,
for a link into a Markdown file with ``#anchor``, a heading of that file with that anchor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    {
        ROOT / "README.md",
        ROOT / "client" / "README.md",
        *ROOT.glob("docs/**/*.md"),
        *ROOT.glob("deploy/**/*.md"),
        *ROOT.glob("benchmarks/*.md"),
    }
)
# [text](target) and ![alt](target), and <a href="target">; code spans and blocks are not links
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|href=\"([^\"]+)\"")


def _prose(markdown: str) -> str:
    return re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", markdown, flags=re.S))


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces become hyphens."""
    out = set()
    for heading in re.findall(r"^#+\s+(.*)$", _prose(markdown), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def relative_links(doc: Path) -> list[str]:
    found = [a or b for a, b in LINK.findall(_prose(doc.read_text()))]
    return [t for t in found if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, mailto:, ...


def test_the_documents_are_found() -> None:
    assert len(DOCUMENTS) >= 5 and all(d.is_file() for d in DOCUMENTS)


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading with that anchor")
        elif ROOT not in file.parents and file != ROOT:
            broken.append(f"{target}: outside the repository")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("# Title\n[a](missing.md) [b](#title) `[c](code.md)` [d](https://example.com)\n")
    assert relative_links(doc) == ["missing.md", "#title"]
    assert anchors(doc.read_text()) == {"title"}
