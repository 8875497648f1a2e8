"""The README's figures point at docs/benchmarks.md sections that exist, and every benchmark
section there names the command that produces it and a result file that command writes."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {github_anchor(title): body for title, body in zip(parts[1::2], parts[2::2])}


def test_every_readme_link_to_the_benchmarks_names_an_existing_section():
    anchors = sections(BENCHMARKS_MD.read_text())
    links = re.findall(r"\(docs/benchmarks\.md#([^)]+)\)", (ROOT / "README.md").read_text())
    assert links, "the README's figures must link to their benchmark sections"
    missing = sorted(set(links) - set(anchors))
    assert not missing, f"README links to benchmark sections that do not exist: {missing}"


def test_every_benchmark_section_names_its_command_and_the_command_exists():
    from bench.run_all import BENCHMARKS

    for anchor, body in sections(BENCHMARKS_MD.read_text()).items():
        commands = re.findall(r"`python -m bench\.run_all ([a-z_]+)`", body)
        assert commands, f"benchmark section '{anchor}' does not name the command behind its figures"
        unknown = [name for name in commands if name not in BENCHMARKS]
        assert not unknown, f"section '{anchor}' names unknown benchmarks {unknown}"
