"""Every citation of docs/theory.md in the repository names a section that exists there.

Reference: the section headings of docs/theory.md itself (``## N. Title`` and ``### N.M Title``). A citation is
``theory.md §N.M`` (also ``theory.md §N``, ranges ``§N.M-N.K`` and lists ``§N.M, §N.K``); every number in it
must be a section; ``theory.md`` followed by anything else is a citation without a section and fails, as does a
test file that cites an "issue test N" instead of saying what it checks, or that does not start with a
docstring. A bare mention (a path ``docs/theory.md`` or a Markdown link target ``(theory.md)``) is not a citation.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"
SEARCHED = ("src", "tests", "docs", "benchmarks", "examples", "README.md")
SUFFIXES = {".py", ".md", ".yml", ".yaml", ".toml", ".txt"}

HEADING = re.compile(r"^(##|###) (\d+(?:\.\d+)?)\.? ", re.MULTILINE)
# "theory.md §4.1", "theory.md §4.1-4.2", "theory.md §2.5, §2.7", "theory.md §3-4"
CITATION = re.compile(r"theory\.md`?\s*(§\d+(?:\.\d+)?(?:\s*(?:-|–|,|and)\s*§?\d+(?:\.\d+)?)*)")
NUMBER = re.compile(r"\d+(?:\.\d+)?")
MENTION = re.compile(r"theory\.md")


def sections() -> set[str]:
    """The section numbers of docs/theory.md, e.g. {"0", "0.1", ..., "4", "4.1", ...}."""
    found = [m.group(2) for m in HEADING.finditer(THEORY.read_text(encoding="utf-8"))]
    assert len(found) == len(set(found)), f"docs/theory.md numbers a section twice: {sorted(found)}"
    return set(found)


def searched_files() -> list[Path]:
    files: list[Path] = []
    for name in SEARCHED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix in SUFFIXES)
    skipped = (THEORY, Path(__file__).resolve())
    return [p for p in files if p not in skipped and "egg-info" not in p.parts and ".venv" not in p.parts]


def citations(text: str) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(cited section lists with their text, mentions that are neither a citation nor a path to the file)."""
    cited, bare = [], []
    for m in MENTION.finditer(text):
        c = CITATION.match(text, m.start())
        if c:
            cited.append((c.group(0), NUMBER.findall(c.group(1))))
        elif text[max(0, m.start() - 5) : m.start()] != "docs/" and text[m.start() - 1 : m.start()] != "(":
            bare.append(text[max(0, m.start() - 40) : m.end() + 20].replace("\n", " "))
    return cited, bare


def test_theory_sections_are_numbered():
    """The headings parse, and each subsection N.M sits under a section N."""
    found = sections()
    assert {"0", "1", "2", "3", "4"} <= found
    for number in found:
        assert "." not in number or number.split(".")[0] in found, number


def test_the_parser_reads_every_form():
    """The forms used in the repository, and a citation without a section."""
    cited, bare = citations("a (theory.md §4.1-4.2) b theory.md §2.5, §2.7; c theory.md 4.1 d docs/theory.md")
    assert [numbers for _, numbers in cited] == [["4.1", "4.2"], ["2.5", "2.7"]]
    assert len(bare) == 1 and "theory.md 4.1" in bare[0]


@pytest.mark.parametrize("path", searched_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_citations_resolve(path: Path):
    text = path.read_text(encoding="utf-8", errors="replace")
    if "theory.md" not in text:
        return
    known = sections()
    cited, bare = citations(text)
    missing = [(where, n) for where, numbers in cited for n in numbers if n not in known]
    assert not missing, f"{path.relative_to(ROOT)} cites sections that docs/theory.md does not have: {missing}"
    assert not bare, (
        f"{path.relative_to(ROOT)} mentions theory.md without a section; cite it as 'theory.md §N.M' "
        f"(or write the path docs/theory.md): {bare}"
    )


@pytest.mark.parametrize("path", sorted((ROOT / "tests").rglob("test_*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_test_files_say_what_they_check(path: Path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith('"""'), f"{path.relative_to(ROOT)} must start with a docstring: what it checks, against what"
    assert not re.search(r"issue test \d", text), f"{path.relative_to(ROOT)} cites an issue test; say what it checks"
