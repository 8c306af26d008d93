"""What a user cites and tracks: CITATION.cff, CHANGELOG.md and pyproject.toml name the same version and
license, and no file a user reads names a placeholder repository."""

import os
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Folders of generated or installed files, never of the project's own.
SKIPPED = {
    ".git",
    ".venv",
    ".snakemake",
    "results",
    "resources",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
}
PLACEHOLDER = "OWNER" + "/REPO"  # spelled in two parts, so that this file does not hold it


def test_the_citation_and_the_changelog_name_the_packages_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert (citation["version"], citation["license"]) == (project["version"], project["license"])
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"\n## [{project['version']}] - {citation['date-released']}\n" in changelog


def test_no_file_names_a_placeholder_repository():
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [
            name for name in subfolders if name not in SKIPPED and not name.endswith(".egg-info")
        ]
        for name in files:
            path = Path(folder, name)
            try:
                if PLACEHOLDER in path.read_text():
                    found.append(str(path.relative_to(ROOT)))
            except (UnicodeDecodeError, OSError):
                continue  # not a text file
    assert found == [], (
        f"{PLACEHOLDER} in {found}: name the repository from [project.urls], or say it in words"
    )
