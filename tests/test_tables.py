from __future__ import annotations

import math

import pandas as pd
import pytest
from test_summary import deployed_summary, summary_row

from cifar_resnet import tables
from cifar_resnet.errors import StudyError
from cifar_resnet.summary import DEPLOY_FIELDS


def cell(table, depth, variant, column):
    row = table[(table["Depth"] == f"ResNet-{depth}") & (table["Variant"] == variant)]
    assert len(row) == 1
    return row[column].iloc[0]


def test_accuracy_table_shows_mean_std_and_significance_marks(summary):
    table = tables.accuracy_table(summary)

    assert cell(table, 20, "paper", "Test error %") == "8.20 ± 0.20"
    assert cell(table, 20, "better", "Test error %") == "6.10 ± 0.10"
    assert cell(table, 20, "noise", "Test error %") == "8.50 ± 0.20 (ns)"
    assert cell(table, 20, "single", "Test error %") == "7.50 ± — (n<2)"
    assert cell(table, 32, "paper", "Test error %") == "7.20 ± 0.28"
    assert [cell(table, 20, variant, "n") for variant in ("paper", "better", "single")] == ["3", "3", "1"]


def test_accuracy_table_rows_are_sorted_by_depth_then_rank(summary):
    table = tables.accuracy_table(summary)

    assert list(zip(table["Depth"], table["Variant"], table["Rank"], strict=True)) == [
        ("ResNet-8", "paper", "1"),
        ("ResNet-20", "better", "1"),
        ("ResNet-20", "single", "2"),
        ("ResNet-20", "paper", "3"),
        ("ResNet-20", "noise", "4"),
        ("ResNet-32", "paper", "1"),
    ]


def test_accuracy_table_ranks_equal_shown_means_equally():
    errors = {"paper": [8.0, 8.2, 8.4], "tie": [8.1, 8.3, 8.2], "worse": [9.0, 9.1]}  # means 8.2 (±1 ulp)
    summary = pd.DataFrame(
        [
            summary_row(variant, 20, seed, error)
            for variant, runs in errors.items()
            for seed, error in enumerate(runs)
        ]
    )

    table = tables.accuracy_table(summary)

    assert [cell(table, 20, variant, "Rank") for variant in ("paper", "tie", "worse")] == ["1", "1", "3"]


def test_accuracy_table_compares_with_the_paper(summary):
    table = tables.accuracy_table(summary)

    assert cell(table, 20, "paper", "Paper %") == "8.75"
    assert cell(table, 20, "better", "Δ vs paper") == "-2.65"  # 6.10 - 8.75
    assert cell(table, 20, "noise", "Δ vs paper") == "-0.25"  # 8.50 - 8.75
    assert cell(table, 32, "paper", "Δ vs paper") == "-0.31"  # 7.20 - 7.51
    assert cell(table, 8, "paper", "Paper %") == "—"
    assert cell(table, 8, "paper", "Δ vs paper") == "—"


def test_accuracy_table_shows_a_positive_delta_with_its_sign():
    worse = pd.DataFrame([summary_row("paper", 20, seed, 9.0) for seed in range(2)])

    assert cell(tables.accuracy_table(worse), 20, "paper", "Δ vs paper") == "+0.25"


def test_accuracy_table_has_no_paper_columns_without_paper_errors(summary):
    table = tables.accuracy_table(summary, paper_errors=None)

    assert list(table.columns) == [
        "Depth",
        "Variant",
        "n",
        "Test error %",
        "Rank",
        "Params",
        "MACs",
        "Train time",
    ]


def test_accuracy_table_formats_size_and_time(summary):
    table = tables.accuracy_table(summary)

    assert cell(table, 20, "paper", "Params") == "0.27M"
    assert cell(table, 20, "paper", "MACs") == "40.8M"
    assert cell(table, 20, "paper", "Train time") == "1.5 min"


def test_accuracy_table_compares_with_the_chosen_baseline(summary):
    table = tables.accuracy_table(summary, baseline="better")

    assert cell(table, 20, "better", "Test error %") == "6.10 ± 0.10"
    assert cell(table, 20, "paper", "Test error %") == "8.20 ± 0.20"
    assert cell(table, 32, "paper", "Test error %") == "7.20 ± 0.28 (n<2)"  # no baseline at depth 32


def test_error_statistics_keeps_the_numbers(summary):
    statistics = tables.error_statistics(summary).set_index(["depth", "variant"])

    assert statistics.loc[(20, "noise"), "mean_error"] == pytest.approx(8.5)
    assert statistics.loc[(20, "noise"), "std_error"] == pytest.approx(0.2)
    assert statistics.loc[(32, "paper"), "std_error"] == pytest.approx(math.sqrt(0.08))
    assert math.isnan(statistics.loc[(20, "single"), "std_error"])
    assert statistics.loc[(20, "better"), "p_value"] < 0.05 <= statistics.loc[(20, "noise"), "p_value"]
    assert statistics.loc[(20, "better"), "delta_vs_paper"] == pytest.approx(-2.65)


def test_accuracy_table_refuses_an_absent_baseline(summary):
    with pytest.raises(StudyError, match="'resnet-d' has no runs"):
        tables.accuracy_table(summary, baseline="resnet-d")


def test_accuracy_table_refuses_several_datasets(summary):
    other = pd.DataFrame([summary_row("paper", 20, 0, 30.0, dataset="cifar100")])

    with pytest.raises(StudyError, match="cifar10, cifar100"):
        tables.accuracy_table(pd.concat([summary, other]))


def test_render_markdown_keeps_cells_as_written(summary):
    markdown = tables.render_markdown(tables.accuracy_table(summary))
    lines = markdown.splitlines()

    assert lines[0].startswith("| Depth ")
    assert set(lines[1]) <= {"|", "-", ":", " "}
    assert len(lines) == 2 + len(summary.groupby(["depth", "variant"]))
    assert "| 8.75 " in markdown and "| 7.51 " in markdown and "| 8.50 ± 0.20 (ns) " in markdown


DEPLOYMENT_COLUMNS = ["CPU ms (b=1)", "INT8 error %", "Size"]


def test_accuracy_table_of_deployed_runs_shows_latency_int8_error_and_sizes():
    table = tables.accuracy_table(deployed_summary())

    assert list(table.columns[-3:]) == DEPLOYMENT_COLUMNS
    assert cell(table, 20, "paper", "CPU ms (b=1)") == "0.56"
    assert cell(table, 20, "paper", "INT8 error %") == "8.50 ± 0.28"
    assert cell(table, 20, "paper", "Size") == "1.1 MB / 0.37 MB"
    assert cell(table, 20, "better", "INT8 error %") == "6.40 ± —"
    assert cell(table, 32, "paper", "CPU ms (b=1)") == "0.95"
    assert cell(table, 32, "paper", "INT8 error %") == "—"
    assert cell(table, 32, "paper", "Size") == "1.9 MB / —"


def test_accuracy_table_of_deployed_runs_keeps_the_other_columns():
    deployed = deployed_summary()
    not_deployed = deployed[[column for column in deployed.columns if column not in DEPLOY_FIELDS]]

    table = tables.accuracy_table(deployed)

    assert table.drop(columns=DEPLOYMENT_COLUMNS).equals(tables.accuracy_table(not_deployed))


def test_error_statistics_of_deployed_runs_keeps_the_deployment_numbers():
    statistics = tables.error_statistics(deployed_summary()).set_index(["depth", "variant"])

    assert statistics.loc[(20, "paper"), "onnx_b1_ms"] == pytest.approx(0.56)
    assert statistics.loc[(20, "paper"), "int8_b1_ms"] == pytest.approx(0.3)
    assert statistics.loc[(20, "paper"), "int8_std_error"] == pytest.approx(math.sqrt(0.08))
    assert math.isnan(statistics.loc[(32, "paper"), "int8_mean_error"])


def frame_of(errors: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            summary_row(variant, 20, seed, error)
            for variant, values in errors.items()
            for seed, error in enumerate(values)
        ]
    )


# Unequal n and variance: Welch's test gives p ≈ 0.20, Student's pooled-variance test p ≈ 0.008.
UNEQUAL = {"paper": [7.0, 8.0, 7.3], "tight": [8.0, 8.1, 7.9, 8.05, 7.95, 8.02, 7.98, 8.0]}


def test_significance_is_welchs_test_not_students():
    statistics = tables.error_statistics(frame_of(UNEQUAL), paper_errors=None)
    tight = statistics[statistics["variant"] == "tight"].iloc[0]
    assert tight["p_value"] == pytest.approx(0.1953, abs=1e-4)
    assert tight["significance"] == tables.NOT_SIGNIFICANT  # Student's test would call it significant


@pytest.mark.parametrize(("alpha", "marked"), [(0.05, True), (0.25, False)])
def test_the_significance_level_decides_the_mark(alpha, marked):
    table = tables.accuracy_table(frame_of(UNEQUAL), paper_errors=None, alpha=alpha)
    assert cell(table, 20, "tight", "Test error %").endswith(" (ns)") == marked


def test_identical_seeds_on_both_sides_are_not_significant():
    statistics = tables.error_statistics(
        frame_of({"paper": [7.0, 7.0], "same": [7.0, 7.0]}), paper_errors=None
    )
    same = statistics[statistics["variant"] == "same"].iloc[0]
    assert math.isnan(same["p_value"]) and same["significance"] == tables.NOT_SIGNIFICANT


def test_a_p_value_equal_to_alpha_is_not_significant():
    p_value = (
        tables.error_statistics(frame_of(UNEQUAL), paper_errors=None)
        .set_index("variant")
        .loc["tight", "p_value"]
    )
    at_alpha = tables.error_statistics(frame_of(UNEQUAL), paper_errors=None, alpha=p_value)
    assert at_alpha.set_index("variant").loc["tight", "significance"] == tables.NOT_SIGNIFICANT


@pytest.mark.parametrize(
    ("count", "decimals", "shown"),
    [
        (269_722, 2, "0.27M"),
        (40_800_000, 1, "40.8M"),
        (7_804, 2, "7.8K"),
        (78_042, 2, "0.08M"),
        (99_999, 1, "100.0K"),
        (100_000, 1, "0.1M"),
    ],
)
def test_counts_show_in_millions_or_thousands(count, decimals, shown):
    assert tables.format_count(count, decimals) == shown


@pytest.mark.parametrize(("seconds", "shown"), [(42.4, "42 s"), (90, "1.5 min"), (7200, "2.0 h")])
def test_durations_show_in_seconds_minutes_or_hours(seconds, shown):
    assert tables.format_duration(seconds) == shown


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (1_090_000, "1.1 MB"),
        (370_000, "0.37 MB"),
        (77_400_000, "77 MB"),
        (108_200_000, "108 MB"),
        (10_000, "0.010 MB"),
        (9_500, "9.5 kB"),
    ],
)
def test_file_sizes_show_in_megabytes_with_two_significant_digits(size, shown):
    assert tables.format_bytes(size) == shown
