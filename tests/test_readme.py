"""The README stays true: its generated variant table matches the config, and CI runs its test command."""

import re
from pathlib import Path

import yaml

from cifar_resnet import report

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def between(text: str, start: str, end: str) -> str:
    return text.split(start + "\n", 1)[1].split(end, 1)[0]


def test_variant_table_is_generated_from_the_config():
    variants = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["variants"]
    table = between(README, "<!-- variants:start -->", "<!-- variants:end -->")
    assert table == report.variant_table(variants) + "\n", (
        "README's variant table is out of date: the `readme` rule regenerates it from config/config.yaml"
    )


def test_quickstart_has_two_commands_and_ci_runs_the_test_command():
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quickstart, re.S)
    assert len(commands) == 2
    demo, tests = commands
    assert "--configfile config/demo.yaml" in demo and "--report" in demo
    assert tests.endswith("pytest")
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_results_markers_appear_exactly_once():
    for marker in ("results", "variants"):
        assert README.count(f"<!-- {marker}:start -->") == 1
        assert README.count(f"<!-- {marker}:end -->") == 1
