"""One version number everywhere: the package, its installed metadata, the changelog, the CLI, the docs."""

from __future__ import annotations

import importlib.metadata
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version  # a dependency of pytest itself

import convsv

pytestmark = pytest.mark.backend("numpy")

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_the_installed_metadata():
    installed = importlib.metadata.version("convsv")
    assert convsv.__version__ == installed, "stale install metadata: reinstall with `pip install -e .`"


def test_version_is_canonical_pep440():
    assert str(Version(convsv.__version__)) == convsv.__version__


def test_changelog_opens_with_this_version():
    # The first section is the version being released or worked on: X.Y.Z, dated once released.
    changelog = (ROOT / "CHANGELOG.md").read_text()
    heading = re.search(r"^## \[(?P<version>[^\]]+)\] - (?P<date>\S+)$", changelog, re.MULTILINE)
    assert heading is not None, "no '## [X.Y.Z] - YYYY-MM-DD' heading in CHANGELOG.md"
    version = Version(convsv.__version__)
    assert heading["version"] == version.base_version
    if not version.is_devrelease:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", heading["date"]), heading["date"]


def test_command_line_prints_it():
    result = subprocess.run(
        [sys.executable, "-m", "convsv", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"convsv {convsv.__version__}"


def test_documentation_is_built_with_it():
    config = runpy.run_path(str(ROOT / "docs" / "conf.py"))
    assert config["release"] == config["version"] == convsv.__version__
    assert convsv.__version__ in config["html_title"]
