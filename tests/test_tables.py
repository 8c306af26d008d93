from __future__ import annotations

import math

import pandas as pd
import pytest
from test_summary import deployed_summary, summary_row

from cifar_resnet import tables
from cifar_resnet.errors import StudyError
from cifar_resnet.records import DEPLOY_FIELDS


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
        "95% CI",
        "p (Holm)",
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


def test_confidence_interval_is_t_based_over_the_seeds():
    errors = {"paper": [1.0, 2.0, 3.0], "two": [4.0, 6.0], "single": [5.0]}
    summary = pd.DataFrame(
        [
            summary_row(variant, 20, seed, error)
            for variant, runs in errors.items()
            for seed, error in enumerate(runs)
        ]
    )

    table = tables.accuracy_table(summary)

    # mean 2, std 1, n 3: 2 ± t(0.975, 2) / sqrt(3) = 2 ± 4.3027 / 1.7321 = 2 ± 2.4841
    assert cell(table, 20, "paper", "95% CI") == "[-0.48, 4.48]"
    # mean 5, std sqrt(2), n 2: 5 ± t(0.975, 1) * sqrt(2) / sqrt(2) = 5 ± 12.7062
    assert cell(table, 20, "two", "95% CI") == "[-7.71, 17.71]"
    assert cell(table, 20, "single", "95% CI") == "—"


def test_holm_adjusts_the_tested_p_values_as_one_family():
    p_values = pd.Series([0.01, 0.04, math.nan, 0.03])

    adjusted = tables.holm_adjusted(p_values)

    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04; then never below the one before: 0.06
    assert adjusted[[0, 1, 3]].tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(adjusted[2])


def test_a_mark_holds_only_after_the_correction_over_the_whole_table():
    errors = {
        (20, "paper"): [8.0, 8.2, 8.4],
        (20, "marginal"): [8.6, 8.8, 9.0],
        (20, "noise"): [8.1, 8.3, 8.5],
        (32, "paper"): [7.0, 7.2, 7.4],
        (32, "noise"): [7.1, 7.3, 7.5],
    }
    summary = pd.DataFrame(
        [
            summary_row(variant, depth, seed, error)
            for (depth, variant), runs in errors.items()
            for seed, error in enumerate(runs)
        ]
    )

    statistics = tables.error_statistics(summary).set_index(["depth", "variant"])
    table = tables.accuracy_table(summary)

    # By hand: t = 0.6 / sqrt(2 * 0.04 / 3) = 3.6742 with 4 degrees of freedom (equal variances and
    # sizes), two-sided p = 1 - sqrt(x) * (1 + (1 - x) / 2) with x = t^2 / (4 + t^2): 0.02131.
    assert statistics.loc[(20, "marginal"), "p_value"] == pytest.approx(0.021312, abs=1e-6)
    # Three tests over both depths; the smallest p is multiplied by 3: 0.0639, no longer below 0.05.
    assert statistics.loc[(20, "marginal"), "p_holm"] == pytest.approx(3 * 0.021312, abs=1e-5)
    assert statistics.loc[(20, "marginal"), "significance"] == "ns"
    assert cell(table, 20, "marginal", "p (Holm)") == "0.064"
    assert cell(table, 20, "marginal", "Test error %") == "8.80 ± 0.20 (ns)"
    assert cell(table, 20, "paper", "p (Holm)") == "—"
    # The same difference tested alone stays significant.
    alone = summary[summary["variant"].isin(["paper", "marginal"]) & (summary["depth"] == 20)]
    assert (
        tables.error_statistics(alone).set_index("variant").loc["marginal", "significance"] == "significant"
    )


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


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # scipy, on identical seeds
def test_identical_seeds_on_both_sides_are_not_significant():
    statistics = tables.error_statistics(
        frame_of({"paper": [7.0, 7.0], "same": [7.0, 7.0]}), paper_errors=None
    )
    same = statistics[statistics["variant"] == "same"].iloc[0]
    assert same["p_value"] == 1.0 and same["significance"] == tables.NOT_SIGNIFICANT


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
