from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from test_summary import deployed_summary

from cifar_resnet import plots
from cifar_resnet.errors import StudyError
from cifar_resnet.layout import plot_names
from cifar_resnet.tables import PAPER_TABLE6_ERROR

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
@pytest.mark.parametrize("paper_errors", [PAPER_TABLE6_ERROR, None], ids=["with paper", "without"])
def test_plot_error_vs_depth_writes_a_png(tmp_path, summary, paper_errors):
    path = tmp_path / "plots/error_vs_depth.png"

    plots.plot_error_vs_depth(summary, path, paper_errors=paper_errors)

    assert_png(path)


@fails_on_warnings
def test_plots_of_a_single_depth_and_seed_write_pngs(tmp_path, single_run):
    plots.plot_error_vs_depth(single_run, tmp_path / "depth.png")
    plots.plot_error_vs_params(single_run, tmp_path / "params.png")
    plots.plot_learning_curves({"single / ResNet-20 / seed 0": history(1, 0.9)}, tmp_path / "curves.png")

    for name in ("depth.png", "params.png", "curves.png"):
        assert_png(tmp_path / name)


@fails_on_warnings
def test_plot_learning_curves_writes_a_png(tmp_path):
    path = tmp_path / "curves.png"
    histories = {
        "paper / ResNet-20 / seed 0": history(5, 0.9),
        "better / ResNet-20 / seed 0": history(5, 0.95),
    }

    plots.plot_learning_curves(histories, path)

    assert_png(path)


@fails_on_warnings
def test_plot_run_curve_writes_a_png(tmp_path):
    path = tmp_path / "runs/paper/resnet20/seed0.png"

    plots.plot_run_curve(history(12, 0.9), path, "paper ResNet-20, seed 0", selected_epoch=12, test_error=9.5)

    assert_png(path)


def test_plot_run_curve_names_a_history_without_accuracy(tmp_path):
    with pytest.raises(StudyError, match="paper ResNet-20, seed 0 lacks val_accuracy"):
        plots.plot_run_curve(
            history(3, 0.9).drop(columns="val_accuracy"),
            tmp_path / "c.png",
            "paper ResNet-20, seed 0",
            3,
            9.5,
        )


def test_plot_learning_curves_names_a_history_without_accuracy(tmp_path):
    broken = history(3, 0.9).drop(columns="val_accuracy")

    with pytest.raises(StudyError, match="paper / ResNet-20 / seed 0 lacks val_accuracy"):
        plots.plot_learning_curves({"paper / ResNet-20 / seed 0": broken}, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


@fails_on_warnings
def test_plot_error_vs_params_writes_a_png(tmp_path, summary):
    path = tmp_path / "params.png"

    plots.plot_error_vs_params(summary, path)

    assert_png(path)


@fails_on_warnings
@pytest.mark.parametrize("classes", [10, 100])
def test_plot_confusion_matrix_writes_a_png(tmp_path, classes):
    matrix = [[90 if true == predicted else 1 for predicted in range(classes)] for true in range(classes)]
    path = tmp_path / "confusion.png"

    plots.plot_confusion_matrix(matrix, [f"class {index}" for index in range(classes)], path, "ResNet-20")

    assert_png(path)


def test_plot_confusion_matrix_refuses_mismatched_class_names(tmp_path):
    with pytest.raises(StudyError, match="2×2 but there are 3 class names"):
        plots.plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "c.png", "t")


def test_plot_names_add_the_deployment_figures_last_for_deployed_runs():
    assert "error_vs_latency" not in plot_names(deployed=False)
    assert plot_names(deployed=True) == (*plot_names(deployed=False), "error_vs_latency")


@fails_on_warnings
def test_plot_error_vs_latency_writes_a_png(tmp_path):
    path = tmp_path / "latency.png"

    plots.plot_error_vs_latency(deployed_summary(), path)

    assert_png(path)


@fails_on_warnings
def test_plot_error_vs_latency_of_runs_without_int8_writes_a_png(tmp_path):
    without_int8 = deployed_summary().query("depth == 32")
    path = tmp_path / "latency.png"

    plots.plot_error_vs_latency(without_int8, path)

    assert_png(path)


def test_latency_points_are_means_over_seeds_without_int8_points_where_there_is_none():
    points = plots.latency_points(deployed_summary()).set_index(["Variant", "depth", "Model"])

    assert sorted(points.index) == [
        ("better", 20, "INT8"),
        ("better", 20, "float"),
        ("paper", 20, "INT8"),
        ("paper", 20, "float"),
        ("paper", 32, "float"),
    ]
    assert points.loc[("paper", 20, "float"), "latency_ms"] == pytest.approx(0.56)
    assert points.loc[("paper", 20, "float"), "error"] == pytest.approx(8.1)
    assert points.loc[("paper", 20, "INT8"), "latency_ms"] == pytest.approx(0.3)
    assert points.loc[("paper", 20, "INT8"), "error"] == pytest.approx(8.5)


def test_pareto_front_keeps_the_undominated_points_by_latency():
    points = [
        (1.0, 9.0),  # 0: front
        (2.0, 7.0),  # 1: front
        (2.0, 8.0),  # 2: as fast as 1, worse error
        (3.0, 7.0),  # 3: same error as 1, slower
        (0.5, 12.0),  # 4: front, the fastest
        (4.0, 5.0),  # 5: front, the most accurate
        (2.0, 7.0),  # 6: equal to 1, which does not dominate it
        (5.0, 6.0),  # 7: slower and worse than 5
    ]

    assert plots.pareto_front(points) == [4, 0, 1, 6, 5]


def test_pareto_front_of_one_point_is_that_point():
    assert plots.pareto_front([(3.0, 7.0)]) == [0]


def test_the_curves_show_each_variants_first_seed_at_the_smallest_depth_unless_one_is_chosen(summary):
    assert plots.curve_depth(summary, None) == 8
    assert plots.curve_depth(summary, 32) == 32
    shown = plots.learning_curve_runs(summary, 20)
    assert sorted(zip(shown["variant"], shown["seed"], strict=True)) == [
        ("better", 0),
        ("noise", 0),
        ("paper", 0),
        ("single", 0),
    ]


def test_the_confusion_matrix_sums_the_baselines_seeds_or_else_the_first_variants(summary):
    baseline = plots.confusion_runs(summary, 20, "noise")
    assert set(baseline["variant"]) == {"noise"} and sorted(baseline["seed"]) == [0, 1, 2]
    absent = plots.confusion_runs(summary, 32, "better")  # only paper ran at ResNet-32
    assert set(absent["variant"]) == {"paper"} and len(absent) == 2
