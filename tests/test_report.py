from __future__ import annotations

import importlib.util
import json
import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from cifar_resnet import report
from cifar_resnet.errors import StudyError

needs_scipy = pytest.mark.skipif(
    importlib.util.find_spec("scipy") is None, reason="scipy (the significance test) is not installed"
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
START = "<!-- results:start -->"
END = "<!-- results:end -->"

# (variant, depth, per-seed test errors %)
ERRORS = [
    ("paper", 20, [8.0, 8.2, 8.4]),  # mean 8.20, std sqrt((0.04 + 0 + 0.04) / 2) = 0.20
    ("better", 20, [6.0, 6.1, 6.2]),  # mean 6.10, std 0.10; Welch p ≈ 0.0006 vs paper
    ("noise", 20, [8.3, 8.5, 8.7]),  # mean 8.50, std 0.20; Welch p ≈ 0.14 vs paper
    ("single", 20, [7.5]),  # one seed: no std, cannot be tested
    ("paper", 32, [7.0, 7.4]),  # mean 7.20, std sqrt((0.04 + 0.04) / 1) = 0.2828
    ("paper", 8, [12.0, 12.5]),  # a depth the paper has no number for
]
PARAMS = {8: 78_042, 20: 272_474, 32: 466_906}
MACS = {8: 12_430_000, 20: 40_810_000, 32: 69_120_000}


def summary_row(variant, depth, seed, error, dataset="cifar10"):
    return {
        "dataset": dataset,
        "variant": variant,
        "depth": depth,
        "seed": seed,
        "test_accuracy": 1 - error / 100,
        "test_error": error,
        "test_loss": 0.3,
        "params": PARAMS[depth],
        "macs": MACS[depth],
        "train_seconds": 90.0,
        "epochs": 10,
        "iterations": 3910,
        "selected_epoch": 9,
        "selected_val_accuracy": 0.9,
        "device": "cpu",
        "inference_images_per_s": 1000.0,
    }


@pytest.fixture
def summary():
    rows = [
        summary_row(variant, depth, seed, error)
        for variant, depth, errors in ERRORS
        for seed, error in enumerate(errors)
    ]
    return pd.DataFrame(rows)


def cell(table, depth, variant, column):
    row = table[(table["Depth"] == f"ResNet-{depth}") & (table["Variant"] == variant)]
    assert len(row) == 1
    return row[column].iloc[0]


@needs_scipy
def test_accuracy_table_shows_mean_std_and_significance_marks(summary):
    table = report.accuracy_table(summary)

    assert cell(table, 20, "paper", "Test error %") == "8.20 ± 0.20"
    assert cell(table, 20, "better", "Test error %") == "6.10 ± 0.10"
    assert cell(table, 20, "noise", "Test error %") == "8.50 ± 0.20 (ns)"
    assert cell(table, 20, "single", "Test error %") == "7.50 ± — (n<2)"
    assert cell(table, 32, "paper", "Test error %") == "7.20 ± 0.28"
    assert [cell(table, 20, variant, "n") for variant in ("paper", "better", "single")] == ["3", "3", "1"]


@needs_scipy
def test_accuracy_table_rows_are_sorted_by_depth_then_rank(summary):
    table = report.accuracy_table(summary)

    assert list(zip(table["Depth"], table["Variant"], table["Rank"], strict=True)) == [
        ("ResNet-8", "paper", "1"),
        ("ResNet-20", "better", "1"),
        ("ResNet-20", "single", "2"),
        ("ResNet-20", "paper", "3"),
        ("ResNet-20", "noise", "4"),
        ("ResNet-32", "paper", "1"),
    ]


@needs_scipy
def test_accuracy_table_ranks_equal_shown_means_equally():
    errors = {"paper": [8.0, 8.2, 8.4], "tie": [8.1, 8.3, 8.2], "worse": [9.0, 9.1]}  # means 8.2 (±1 ulp)
    summary = pd.DataFrame(
        [
            summary_row(variant, 20, seed, error)
            for variant, runs in errors.items()
            for seed, error in enumerate(runs)
        ]
    )

    table = report.accuracy_table(summary)

    assert [cell(table, 20, variant, "Rank") for variant in ("paper", "tie", "worse")] == ["1", "1", "3"]


@needs_scipy
def test_accuracy_table_compares_with_the_paper(summary):
    table = report.accuracy_table(summary)

    assert cell(table, 20, "paper", "Paper %") == "8.75"
    assert cell(table, 20, "better", "Δ vs paper") == "-2.65"  # 6.10 - 8.75
    assert cell(table, 20, "noise", "Δ vs paper") == "-0.25"  # 8.50 - 8.75
    assert cell(table, 32, "paper", "Δ vs paper") == "-0.31"  # 7.20 - 7.51
    assert cell(table, 8, "paper", "Paper %") == "—"
    assert cell(table, 8, "paper", "Δ vs paper") == "—"


@needs_scipy
def test_accuracy_table_shows_a_positive_delta_with_its_sign():
    worse = pd.DataFrame([summary_row("paper", 20, seed, 9.0) for seed in range(2)])

    assert cell(report.accuracy_table(worse), 20, "paper", "Δ vs paper") == "+0.25"


@needs_scipy
def test_accuracy_table_has_no_paper_columns_without_paper_errors(summary):
    table = report.accuracy_table(summary, paper_errors=None)

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


@needs_scipy
def test_accuracy_table_formats_size_and_time(summary):
    table = report.accuracy_table(summary)

    assert cell(table, 20, "paper", "Params") == "0.27M"
    assert cell(table, 20, "paper", "MACs") == "40.8M"
    assert cell(table, 20, "paper", "Train time") == "1.5 min"


@needs_scipy
def test_accuracy_table_compares_with_the_chosen_baseline(summary):
    table = report.accuracy_table(summary, baseline="better")

    assert cell(table, 20, "better", "Test error %") == "6.10 ± 0.10"
    assert cell(table, 20, "paper", "Test error %") == "8.20 ± 0.20"
    assert cell(table, 32, "paper", "Test error %") == "7.20 ± 0.28 (n<2)"  # no baseline at depth 32


@needs_scipy
def test_error_statistics_keeps_the_numbers(summary):
    statistics = report.error_statistics(summary).set_index(["depth", "variant"])

    assert statistics.loc[(20, "noise"), "mean_error"] == pytest.approx(8.5)
    assert statistics.loc[(20, "noise"), "std_error"] == pytest.approx(0.2)
    assert statistics.loc[(32, "paper"), "std_error"] == pytest.approx(math.sqrt(0.08))
    assert math.isnan(statistics.loc[(20, "single"), "std_error"])
    assert statistics.loc[(20, "better"), "p_value"] < 0.05 <= statistics.loc[(20, "noise"), "p_value"]
    assert statistics.loc[(20, "better"), "delta_vs_paper"] == pytest.approx(-2.65)


def test_accuracy_table_refuses_an_absent_baseline(summary):
    with pytest.raises(StudyError, match="'resnet-d' has no runs"):
        report.accuracy_table(summary, baseline="resnet-d")


def test_accuracy_table_refuses_several_datasets(summary):
    other = pd.DataFrame([summary_row("paper", 20, 0, 30.0, dataset="cifar100")])

    with pytest.raises(StudyError, match="cifar10, cifar100"):
        report.accuracy_table(pd.concat([summary, other]))


@needs_scipy
def test_render_markdown_keeps_cells_as_written(summary):
    markdown = report.render_markdown(report.accuracy_table(summary))
    lines = markdown.splitlines()

    assert lines[0].startswith("| Depth ")
    assert set(lines[1]) <= {"|", "-", ":", " "}
    assert len(lines) == 2 + len(summary.groupby(["depth", "variant"]))
    assert "| 8.75 " in markdown and "| 7.51 " in markdown and "| 8.50 ± 0.20 (ns) " in markdown


def write_run(run_dir, variant, depth, seed, error, **train_overrides):
    run_dir.mkdir(parents=True)
    train = {
        "dataset": "cifar10",
        "variant": variant,
        "depth": depth,
        "seed": seed,
        "train_seconds": 42.0,
        "epochs": 3,
        "iterations": 1170,
        "selected_epoch": 2,
        "selected_val_accuracy": 0.81,
        "stopped_early": False,
        "device": "cpu",
        "config_hash": "abc",
        "torch_version": "ignored",
    } | train_overrides
    evaluation = {
        "test_accuracy": 1 - error / 100,
        "test_loss": 0.5,
        "test_error": error,
        "params": PARAMS[depth],
        "macs": MACS[depth],
        "per_class_accuracy": [0.8] * 10,
        "confusion_matrix": [[0] * 10] * 10,
        "class_names": [str(index) for index in range(10)],
        "inference_images_per_s": 2500.0,
        "num_test_images": 10000,
    }
    (run_dir / "train.json").write_text(json.dumps(train))
    (run_dir / "eval.json").write_text(json.dumps(evaluation))
    return run_dir


def test_summarize_runs_reads_one_sorted_row_per_run(tmp_path):
    runs = tmp_path / "results/cifar10/runs"
    run_dirs = [
        write_run(runs / "paper/resnet32/seed0", "paper", 32, 0, 7.5),
        write_run(runs / "paper/resnet20/seed1", "paper", 20, 1, 8.5),
        write_run(runs / "better/resnet20/seed0", "better", 20, 0, 6.5),
        write_run(runs / "paper/resnet20/seed0", "paper", 20, 0, 8.0),
    ]

    summary = report.summarize_runs(run_dirs)

    assert list(summary.columns) == list(report.SUMMARY_COLUMNS)
    assert list(zip(summary["depth"], summary["variant"], summary["seed"], strict=True)) == [
        (20, "better", 0),
        (20, "paper", 0),
        (20, "paper", 1),
        (32, "paper", 0),
    ]
    first = summary.iloc[0]
    assert first["test_error"] == 6.5
    assert first["params"] == PARAMS[20]
    assert first["train_seconds"] == 42.0
    assert first["inference_images_per_s"] == 2500.0


def test_summarize_runs_names_a_missing_file(tmp_path):
    run_dir = write_run(tmp_path / "run", "paper", 20, 0, 8.0)
    (run_dir / "eval.json").unlink()

    with pytest.raises(StudyError, match="eval.json is missing"):
        report.summarize_runs([run_dir])


def test_summarize_runs_names_missing_keys(tmp_path):
    run_dir = write_run(tmp_path / "run", "paper", 20, 0, 8.0)
    train = json.loads((run_dir / "train.json").read_text())
    del train["train_seconds"]
    (run_dir / "train.json").write_text(json.dumps(train))

    with pytest.raises(StudyError, match="train.json lacks train_seconds"):
        report.summarize_runs([run_dir])


def test_summarize_runs_refuses_the_same_run_twice(tmp_path):
    first = write_run(tmp_path / "a", "paper", 20, 0, 8.0)
    second = write_run(tmp_path / "b", "paper", 20, 0, 8.1)

    with pytest.raises(StudyError, match="cifar10/paper/ResNet-20/seed 0"):
        report.summarize_runs([first, second])


def test_variant_table_lists_every_variant_in_order():
    variants = {
        "paper": {"description": "The original recipe", "source": "He et al. 2016"},
        "resnet-d": {"description": "Average-pool\nshortcut | no stride-2 1×1", "source": "He et al. 2019"},
    }

    lines = report.variant_table(variants).splitlines()

    assert [header.strip() for header in lines[0].strip("|").split("|")] == [
        "Variant",
        "What it changes",
        "From",
    ]
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| `paper`   ", "| `resnet-d`"]
    assert "Average-pool shortcut \\| no stride-2 1×1" in lines[3]
    assert "He et al. 2019" in lines[3]


def test_variant_table_names_a_variant_without_a_source():
    with pytest.raises(StudyError, match="'paper' lacks source"):
        report.variant_table({"paper": {"description": "The original recipe"}})


README = f"# Study\n\nIntro stays.\r\n{START}\nold table\nold note\n{END}\n\n## After\nkept ✓\n"


def test_splice_readme_replaces_only_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_bytes(README.encode())

    report.splice_readme(readme, "| new |\n|-----|")

    expected = f"# Study\n\nIntro stays.\r\n{START}\n| new |\n|-----|\n{END}\n\n## After\nkept ✓\n"
    assert readme.read_bytes() == expected.encode()


def test_splice_readme_can_be_repeated(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_bytes(README.encode())

    report.splice_readme(readme, "first\n")
    report.splice_readme(readme, "second\n")

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
def test_splice_readme_refuses_bad_markers_and_leaves_the_file(tmp_path, text, message):
    readme = tmp_path / "README.md"
    readme.write_text(text)

    with pytest.raises(StudyError, match=message) as raised:
        report.splice_readme(readme, "new\n")

    assert str(readme) in str(raised.value)
    assert readme.read_text() == text
    assert [entry.name for entry in tmp_path.iterdir()] == ["README.md"]


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 1000
    assert plt.get_fignums() == []


def history(epochs, final_accuracy):
    return pd.DataFrame(
        {
            "epoch": range(1, epochs + 1),
            "iteration": [100 * epoch for epoch in range(1, epochs + 1)],
            "lr": 0.1,
            "train_loss": 1.0,
            "train_accuracy": [final_accuracy * epoch / epochs for epoch in range(1, epochs + 1)],
            "val_accuracy": [0.9 * final_accuracy * epoch / epochs for epoch in range(1, epochs + 1)],
            "val_loss": 1.2,
            "seconds": 10.0,
            "images_per_s": 4000.0,
        }
    )


@pytest.fixture
def single_run(summary):
    return summary[(summary["variant"] == "single")]


fails_on_warnings = pytest.mark.filterwarnings("error")


@fails_on_warnings
@pytest.mark.parametrize("paper_errors", [report.PAPER_TABLE6_ERROR, None], ids=["with paper", "without"])
def test_plot_error_vs_depth_writes_a_png(tmp_path, summary, paper_errors):
    path = tmp_path / "plots/error_vs_depth.png"

    report.plot_error_vs_depth(summary, path, paper_errors=paper_errors)

    assert_png(path)


@fails_on_warnings
def test_plots_of_a_single_depth_and_seed_write_pngs(tmp_path, single_run):
    report.plot_error_vs_depth(single_run, tmp_path / "depth.png")
    report.plot_error_vs_params(single_run, tmp_path / "params.png")
    report.plot_learning_curves({"single / ResNet-20 / seed 0": history(1, 0.9)}, tmp_path / "curves.png")

    for name in ("depth.png", "params.png", "curves.png"):
        assert_png(tmp_path / name)


@fails_on_warnings
def test_plot_learning_curves_writes_a_png(tmp_path):
    path = tmp_path / "curves.png"
    histories = {
        "paper / ResNet-20 / seed 0": history(5, 0.9),
        "better / ResNet-20 / seed 0": history(5, 0.95),
    }

    report.plot_learning_curves(histories, path)

    assert_png(path)


def test_plot_learning_curves_names_a_history_without_accuracy(tmp_path):
    broken = history(3, 0.9).drop(columns="val_accuracy")

    with pytest.raises(StudyError, match="paper / ResNet-20 / seed 0 lacks val_accuracy"):
        report.plot_learning_curves({"paper / ResNet-20 / seed 0": broken}, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


@fails_on_warnings
def test_plot_error_vs_params_writes_a_png(tmp_path, summary):
    path = tmp_path / "params.png"

    report.plot_error_vs_params(summary, path)

    assert_png(path)


@fails_on_warnings
@pytest.mark.parametrize("classes", [10, 100])
def test_plot_confusion_matrix_writes_a_png(tmp_path, classes):
    matrix = [[90 if true == predicted else 1 for predicted in range(classes)] for true in range(classes)]
    path = tmp_path / "confusion.png"

    report.plot_confusion_matrix(matrix, [f"class {index}" for index in range(classes)], path, "ResNet-20")

    assert_png(path)


def test_plot_confusion_matrix_refuses_mismatched_class_names(tmp_path):
    with pytest.raises(StudyError, match="2×2 but there are 3 class names"):
        report.plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "c.png", "t")
