"""What PyPI shows: the README's links work off the repository, and the metadata is whole.
(.ci/packaging builds, installs and imports the wheel and the sdist.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_readme_links_are_absolute() -> None:
    links = re.findall(r"\]\(([^)]+)\)", (ROOT / "README.md").read_text())
    assert links
    relative = [link for link in links if not link.startswith(("https://", "http://"))]
    assert relative == [], f"relative links break on PyPI: {relative}"


def test_metadata_has_an_spdx_license_its_file_and_urls() -> None:
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(PROJECT["urls"])
    assert PROJECT["authors"] and "Typing :: Typed" in PROJECT["classifiers"]
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # PEP 639


def test_the_sdist_leaves_out_the_suite_it_cannot_run() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text().splitlines()
    for folder in ("tests", "benchmarks", "examples"):
        assert f"prune {folder}" in manifest
