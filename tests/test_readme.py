"""The README stays true (its generated variant table matches the config, CI runs its test command), and
the readme module that generates its parts: the variant table and the splice between marker lines."""

import re
from pathlib import Path

import pytest
import yaml

from cifar_resnet.errors import StudyError
from cifar_resnet.readme import (
    RESULTS_MARKERS,
    VARIANTS_MARKERS,
    check_markers,
    splices_readme,
    update_readme,
    variant_table,
)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def between(text: str, start: str, end: str) -> str:
    return text.split(start + "\n", 1)[1].split(end, 1)[0]


def test_variant_table_is_generated_from_the_config():
    variants = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["variants"]
    table = between(README, "<!-- variants:start -->", "<!-- variants:end -->")
    assert table == variant_table(variants) + "\n", (
        "README's variant table is out of date: the `readme` rule regenerates it from config/config.yaml"
    )


def test_quickstart_has_two_commands_and_ci_runs_the_test_command():
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quickstart, re.S)
    assert len(commands) == 2
    demo, tests = commands
    assert demo.endswith("snakemake report --cores 2 --configfile config/demo.yaml")  # the report target
    assert tests.endswith("pytest")
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_results_markers_appear_exactly_once():
    for marker in ("results", "variants"):
        assert README.count(f"<!-- {marker}:start -->") == 1
        assert README.count(f"<!-- {marker}:end -->") == 1


START = "<!-- results:start -->"
END = "<!-- results:end -->"


def test_variant_table_lists_every_variant_in_order():
    variants = {
        "paper": {"description": "The original recipe", "source": "He et al. 2016"},
        "resnet-d": {"description": "Average-pool\nshortcut | no stride-2 1×1", "source": "He et al. 2019"},
    }

    lines = variant_table(variants).splitlines()

    assert [header.strip() for header in lines[0].strip("|").split("|")] == [
        "Variant",
        "What it changes",
        "From",
    ]
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| `paper`   ", "| `resnet-d`"]
    assert "Average-pool shortcut \\| no stride-2 1×1" in lines[3]
    assert "He et al. 2019" in lines[3]


def test_variant_table_shows_html_in_a_description_as_text():
    variants = {"x": {"description": '<img src=x onerror="alert(1)"> & <b>bold</b>', "source": "<i>me</i>"}}
    row = variant_table(variants).splitlines()[2]
    assert "<" not in row and ">" not in row
    assert '&lt;img src=x onerror="alert(1)"&gt; &amp; &lt;b&gt;bold&lt;/b&gt;' in row
    assert "&lt;i&gt;me&lt;/i&gt;" in row


def test_variant_table_names_a_variant_without_a_source():
    with pytest.raises(StudyError, match="'paper' lacks source"):
        variant_table({"paper": {"description": "The original recipe"}})


MARKED_README = f"# Study\n\nIntro stays.\r\n{START}\nold table\nold note\n{END}\n\n## After\nkept ✓\n"


def test_update_readme_replaces_only_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_bytes(MARKED_README.encode())

    update_readme(readme, {RESULTS_MARKERS: "| new |\n|-----|"})

    expected = f"# Study\n\nIntro stays.\r\n{START}\n| new |\n|-----|\n{END}\n\n## After\nkept ✓\n"
    assert readme.read_bytes() == expected.encode()


def test_update_readme_can_be_repeated(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_bytes(MARKED_README.encode())

    update_readme(readme, {RESULTS_MARKERS: "first\n"})
    update_readme(readme, {RESULTS_MARKERS: "second\n"})

    assert readme.read_text().count("first") == 0
    assert f"{START}\nsecond\n{END}" in readme.read_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"intro\n{START}\nold\n", "lacks the marker '<!-- results:end -->'"),
        (f"intro\nold\n{END}\n", "lacks the marker '<!-- results:start -->'"),
        (f"{START}\nold\n{END}\n{START}\n", "has 2 lines of the marker '<!-- results:start -->'"),
        (f"{END}\nold\n{START}\n", "before"),
    ],
    ids=["no end", "no start", "duplicated start", "reversed"],
)
def test_update_readme_refuses_bad_markers_and_leaves_the_file(tmp_path, text, message):
    readme = tmp_path / "README.md"
    readme.write_text(text)

    with pytest.raises(StudyError, match=message) as raised:
        update_readme(readme, {RESULTS_MARKERS: "new\n"})

    assert str(readme) in str(raised.value)
    assert readme.read_text() == text
    assert [entry.name for entry in tmp_path.iterdir()] == ["README.md"]


def test_the_development_table_lists_every_module():
    section = README.split("## Development", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w.]+)` \|", section, re.M))
    package = ROOT / "src" / "cifar_resnet"
    modules = {
        ".".join(path.relative_to(package).with_suffix("").parts)
        for path in package.rglob("*.py")
        if path.name != "__init__.py"
    }
    assert listed == modules


def test_the_development_section_lists_every_tool():
    section = README.split("## Development", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `python -m tools\.(\w+)` \|", section, re.M))
    assert listed == {path.stem for path in (ROOT / "tools").glob("*.py") if path.name != "__init__.py"}


def test_the_readme_changes_whole_or_not_at_all(tmp_path):
    readme = tmp_path / "README.md"
    both = f"{VARIANTS_MARKERS[0]}\nold variants\n{VARIANTS_MARKERS[1]}\n{START}\nold results\n{END}\n"
    readme.write_text(both)
    update_readme(readme, {VARIANTS_MARKERS: "new variants", RESULTS_MARKERS: "new results"})
    assert readme.read_text() == both.replace("old", "new")

    # the variants markers are fine and come first, the results markers are gone: nothing is written
    broken = f"{VARIANTS_MARKERS[0]}\nold variants\n{VARIANTS_MARKERS[1]}\nno results here\n"
    readme.write_text(broken)
    with pytest.raises(StudyError, match="lacks the marker '<!-- results:start -->'"):
        update_readme(readme, {VARIANTS_MARKERS: "new variants", RESULTS_MARKERS: "new results"})
    assert readme.read_text() == broken
    assert [entry.name for entry in tmp_path.iterdir()] == ["README.md"]
    with pytest.raises(StudyError, match="lacks the marker '<!-- results:start -->'"):
        check_markers(readme)  # what the readme rule's input function checks before any job starts
    check_markers(ROOT / "README.md")


@pytest.mark.parametrize(
    ("setting", "in_own_clone", "datasets", "splices"),
    [
        ("auto", True, ["cifar10"], True),
        ("auto", False, ["cifar10"], False),  # a module's or -s deployment's folder
        (True, False, ["cifar10"], True),
        (False, True, ["cifar10"], False),
        ("auto", True, [], False),  # the demo alone: no real dataset's results to show
    ],
)
def test_the_results_block_is_spliced_by_the_setting_into_the_own_clone_only(
    tmp_path, monkeypatch, setting, in_own_clone, datasets, splices
):
    monkeypatch.chdir(tmp_path)
    root = tmp_path if in_own_clone else tmp_path / "clone"
    assert splices_readme(setting, root, datasets) is splices
