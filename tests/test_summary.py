import json

import pandas as pd
import pytest

from cifar_resnet.errors import StudyError
from cifar_resnet.records import DEPLOY_FIELDS
from cifar_resnet.summary import SUMMARY_COLUMNS, read_summary, summarize_runs, write_summary

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


def deployment(error, int8_error=None, onnx_ms=0.5, int8_ms=0.3, onnx_bytes=1_090_000, int8_bytes=370_000):
    """A run's deploy.json for a float test error ``error``; without INT8 when ``int8_error`` is None."""
    int8 = int8_error is not None
    return {
        "onnx_bytes": onnx_bytes,
        "int8_bytes": int8_bytes if int8 else None,
        "onnx_top1_agreement": 1.0,
        "onnx_max_logit_difference": 2e-6,
        "int8_test_error": int8_error,
        "int8_error_difference": int8_error - error if int8 else None,
        "onnx_b1_ms": onnx_ms,
        "onnx_b1_p90_ms": 1.2 * onnx_ms,
        "int8_b1_ms": int8_ms if int8 else None,
        "int8_b1_p90_ms": 1.2 * int8_ms if int8 else None,
        "eager_b1_ms": 2.0,
        "eager_b1_p90_ms": 2.5,
        "onnx_batch_ms": 20.0,
        "int8_batch_ms": 12.0 if int8 else None,
        "eager_batch_ms": 35.0,
        "latency_batch_size": 128,
        "latency_threads": 2,
        "cpu": "Test CPU @ 2.00GHz",
    }


def deployed_summary() -> pd.DataFrame:
    """Deployed runs at ResNet-20 with INT8 (two seeds of paper, one of better) and at ResNet-32 without."""
    # (variant, depth, seed, test error, INT8 test error, batch-1 ms, float bytes)
    runs = [
        ("paper", 20, 0, 8.0, 8.3, 0.5, 1_090_000),
        ("paper", 20, 1, 8.2, 8.7, 0.62, 1_090_000),  # INT8 8.50 ± 0.28, 0.56 ms
        ("better", 20, 0, 6.0, 6.4, 0.55, 1_090_000),
        ("paper", 32, 0, 7.0, None, 0.9, 1_870_000),
        ("paper", 32, 1, 7.4, None, 1.0, 1_870_000),
    ]
    return pd.DataFrame(
        [
            summary_row(variant, depth, seed, error)
            | deployment(error, int8_error, onnx_ms=onnx_ms, onnx_bytes=onnx_bytes)
            for variant, depth, seed, error, int8_error, onnx_ms, onnx_bytes in runs
        ]
    )


def train_record(variant="paper", depth=20, seed=0, **overrides) -> dict:
    """A whole train.json of a CIFAR-10 run, with ``overrides``."""
    return {
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
        "git_commit": "0123abc",
        "versions": {"torch": "ignored"},
        "config": {},
        "model": {"depth": depth},
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
        "class_names": [str(index) for index in range(10)],
        "wall_seconds": 50.0,
        "images_per_s": 1000.0,
        "timings": {},
    } | overrides


def eval_record(error=8.0, depth=20, **overrides) -> dict:
    """A whole eval.json of a CIFAR-10 run with the test error ``error``, with ``overrides``."""
    return {
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
        "timings": {},
    } | overrides


def write_run(run_dir, variant, depth, seed, error, **train_overrides):
    run_dir.mkdir(parents=True)
    train = train_record(variant, depth, seed, **train_overrides)
    evaluation = eval_record(error, depth)
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

    summary = summarize_runs(run_dirs)

    assert list(summary.columns) == list(SUMMARY_COLUMNS)
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
        summarize_runs([run_dir])


def test_summarize_runs_names_missing_keys(tmp_path):
    run_dir = write_run(tmp_path / "run", "paper", 20, 0, 8.0)
    train = json.loads((run_dir / "train.json").read_text())
    del train["train_seconds"]
    (run_dir / "train.json").write_text(json.dumps(train))

    with pytest.raises(StudyError, match="train.json lacks train_seconds"):
        summarize_runs([run_dir])


def test_summarize_runs_refuses_the_same_run_twice(tmp_path):
    first = write_run(tmp_path / "a", "paper", 20, 0, 8.0)
    second = write_run(tmp_path / "b", "paper", 20, 0, 8.1)

    with pytest.raises(StudyError, match="cifar10/paper/ResNet-20/seed 0"):
        summarize_runs([first, second])


def test_summarize_runs_of_deployed_runs_ends_with_their_deployment(tmp_path):
    with_int8 = write_run(tmp_path / "paper/resnet20/seed0", "paper", 20, 0, 8.0)
    without_int8 = write_run(tmp_path / "paper/resnet32/seed0", "paper", 32, 0, 7.5)
    deployed = deployment(8.0, int8_error=8.3) | {"extra": 1, "timings": {}}
    (with_int8 / "deploy.json").write_text(json.dumps(deployed))
    (without_int8 / "deploy.json").write_text(json.dumps(deployment(7.5, onnx_ms=0.8) | {"timings": {}}))
    write_summary(tmp_path / "summary.csv", summarize_runs([without_int8, with_int8], deployed=True))

    summary = pd.read_csv(tmp_path / "summary.csv")

    assert list(summary.columns) == [*SUMMARY_COLUMNS, *DEPLOY_FIELDS]
    summary = summary.set_index("depth")
    assert summary.loc[20, "int8_test_error"] == 8.3
    assert summary.loc[20, "int8_error_difference"] == pytest.approx(0.3)
    assert summary.loc[20, "int8_bytes"] == 370_000
    assert summary.loc[32, "onnx_b1_ms"] == 0.8
    assert summary.loc[32, "cpu"] == "Test CPU @ 2.00GHz"
    assert summary.loc[32, ["int8_bytes", "int8_test_error", "int8_b1_ms", "int8_batch_ms"]].isna().all()


def test_summarize_runs_of_deployed_runs_names_a_missing_deployment(tmp_path):
    run_dir = write_run(tmp_path / "run", "paper", 20, 0, 8.0)

    with pytest.raises(StudyError, match="deploy.json is missing; run that run's deployment first"):
        summarize_runs([run_dir], deployed=True)


def test_summarize_runs_of_deployed_runs_names_missing_deployment_keys(tmp_path):
    run_dir = write_run(tmp_path / "run", "paper", 20, 0, 8.0)
    fields = deployment(8.0, int8_error=8.3) | {"timings": {}}
    del fields["int8_b1_ms"]
    (run_dir / "deploy.json").write_text(json.dumps(fields))

    with pytest.raises(StudyError, match="deploy.json lacks int8_b1_ms"):
        summarize_runs([run_dir], deployed=True)


def test_summarize_runs_of_runs_not_deployed_ignores_deploy_json(tmp_path):
    run_dir = write_run(tmp_path / "run", "paper", 20, 0, 8.0)
    (run_dir / "deploy.json").write_text("{ not json")

    summary = summarize_runs([run_dir])

    assert list(summary.columns) == list(SUMMARY_COLUMNS)


def test_read_summary_reads_what_summarize_wrote(tmp_path):
    rows = [
        summary_row("paper", 20, 0, 8.0) | deployment(8.0),
        summary_row("paper", 20, 1, 8.5) | deployment(8.5),
    ]
    write_summary(tmp_path / "summary.csv", pd.DataFrame(rows))  # without INT8: its columns are empty
    summary = read_summary(tmp_path / "summary.csv")
    assert list(summary.columns) == [*SUMMARY_COLUMNS, *DEPLOY_FIELDS] and len(summary) == 2


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda frame: frame.drop(columns="test_error"), "lacks the columns test_error"),
        (lambda frame: frame.drop(columns="onnx_b1_ms"), "lacks the columns onnx_b1_ms"),
        (lambda frame: frame.assign(depth="twenty"), "has a broken line 2"),
    ],
)
def test_read_summary_names_a_damaged_summary(tmp_path, damage, problem):
    rows = [summary_row("paper", 20, 0, 8.0) | deployment(8.0, int8_error=9.0)]
    write_summary(tmp_path / "summary.csv", damage(pd.DataFrame(rows)))
    with pytest.raises(StudyError, match=f"summary.csv {problem}.*; delete it and run the same snakemake"):
        read_summary(tmp_path / "summary.csv")


def test_read_summary_names_a_summary_cut_short(tmp_path):
    write_summary(tmp_path / "summary.csv", pd.DataFrame([summary_row("paper", 20, 0, 8.0)]))
    text = (tmp_path / "summary.csv").read_text()
    (tmp_path / "summary.csv").write_text(text[: len(text) - 20])
    with pytest.raises(StudyError, match="summary.csv has a broken line 2"):
        read_summary(tmp_path / "summary.csv")
