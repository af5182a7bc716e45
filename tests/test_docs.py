"""The front door and the documentation site: the README stays short, and the site builds
with ``mkdocs build --strict`` (a broken link, a missing anchor, a page left out of the nav
or a docstring mkdocstrings cannot read fails it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_LINES = 250


def test_the_readme_fits_and_links_only_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_LINES
    targets = re.findall(r"\]\(((?:docs|bench|stages|src)/[^)#]+)", readme)
    assert targets, "the README links to its docs"
    missing = [target for target in targets if not (ROOT / target).exists()]
    assert not missing, f"the README links to files that do not exist: {missing}"


def test_the_readme_shows_the_test_command_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "pytest"
    assert "\npytest\n" in readme


def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    home = (tmp_path / "index.html").read_text()
    assert "mnist-vae" in home
    assert (tmp_path / "reference" / "compression" / "index.html").exists()
