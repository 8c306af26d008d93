import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from cifar_resnet import benchmark
from cifar_resnet.benchmark import (
    ALL_MODES,
    COLUMNS,
    EPOCH_IMAGES,
    MEAN,
    STD,
    ClassicalCifar,
    Mode,
    PackedModels,
    classical_loader,
    epoch_chunk,
    ratio_to_classical,
    synthetic_cifar,
    train_step,
)
from cifar_resnet.files import read_json, write_json
from cifar_resnet.models import ModelSpec, build_model
from cifar_resnet.optimizer import make_optimizer

CPU = torch.device("cpu")
SCRIPT = Path(__file__).parents[1] / "scripts" / "benchmark.py"


def load_cli(script=SCRIPT):
    spec = importlib.util.spec_from_file_location(f"{script.stem}_cli", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_small_cli_run_writes_csv_and_plot_and_marks_cuda_modes_na(tmp_path, capsys, restore_threads):
    load_cli().main(["--small", "--depths", "8", "--device", "cpu", "--out", str(tmp_path)])
    frame = pd.read_csv(tmp_path / "benchmark.csv", keep_default_na=False, na_values=[""])
    assert list(frame.columns) == COLUMNS
    assert (tmp_path / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_mode = frame.set_index(["pipeline", "mode"])
    for mode in benchmark.DEFAULT_MODES[1:]:
        skipped = by_mode.loc[("ours", mode)]
        assert skipped["note"].startswith("n/a on cpu"), mode
        assert math.isnan(skipped["images_per_s"]) and skipped["repeats"] == 0
    measured = frame[frame["note"].isna()]
    assert set(measured["pipeline"]) == {"ours", "classical", "packed", "sequential", "jobs"}
    assert (measured["images_per_s"] > 0).all() and (measured["repeats"] == 2).all()
    assert (measured["device"] == "cpu").all() and (measured["depth"] == 8).all()
    models = measured["mode"].str.extract(r"K=(\d+)")[0].fillna("1").astype(int)
    expected_epoch = models * EPOCH_IMAGES / measured["images_per_s"]
    assert measured["seconds_per_epoch"].tolist() == pytest.approx(expected_epoch.tolist())
    printed = capsys.readouterr().out
    assert f"torch {torch.__version__}" in printed and "| ours" in printed and "n/a on cpu" in printed
    assert "| winner" in printed


def test_mode_names_round_trip_and_bad_names_are_refused():
    assert len(set(ALL_MODES)) == 12
    for name in ALL_MODES:
        assert Mode.parse(name).name == name
    assert Mode.parse("compile+channels_last+bf16") == Mode(compile=True, bf16=True, channels_last=True)
    for bad in ("eager+cuda_graphs", "fast", "eager+fp16", "eager+bf16+bf16"):
        with pytest.raises(ValueError):
            Mode.parse(bad)
    assert benchmark.packing_mode(None, torch.device("cuda")) == Mode(bf16=True)
    assert benchmark.packing_mode(None, CPU) == Mode()
    assert benchmark.packing_mode("compile+bf16", CPU) == Mode(compile=True, bf16=True)
    for unsupported in ("eager+channels_last", "compile+cuda_graphs"):
        with pytest.raises(ValueError):
            benchmark.packing_mode(unsupported, CPU)


def test_only_plain_modes_run_on_the_cpu_and_compile_only_when_asked():
    cuda = torch.device("cuda")
    for name in ALL_MODES:
        assert Mode.parse(name).unavailable_on(cuda, compile_on_cpu=False) is None
    assert Mode().unavailable_on(CPU, compile_on_cpu=False) is None
    assert Mode(compile=True).unavailable_on(CPU, compile_on_cpu=False).startswith("n/a on cpu")
    assert Mode(compile=True).unavailable_on(CPU, compile_on_cpu=True) is None
    assert Mode(compile=True, bf16=True).unavailable_on(CPU, compile_on_cpu=True).startswith("n/a on cpu")


def test_classical_dataset_returns_the_pil_image_of_the_nchw_array():
    images, labels = synthetic_cifar(4)
    dataset = classical_loader(images, labels, 2, 0, CPU).dataset
    assert isinstance(dataset, ClassicalCifar)
    dataset.transform = lambda image: image
    image, label = dataset[3]
    assert isinstance(image, Image.Image) and image.size == (32, 32) and image.mode == "RGB"
    assert image.getpixel((5, 2)) == tuple(images[3, :, 2, 5].tolist())  # PIL indexes (x, y)
    assert label == int(labels[3]) and isinstance(label, int)


def test_classical_batches_are_normalized_float_crops_of_the_padded_images():
    images = torch.empty(64, 3, 32, 32, dtype=torch.uint8)
    images[:, 0], images[:, 1], images[:, 2] = 255, 128, 0
    labels = torch.arange(64) % 10
    torch.manual_seed(0)  # the transforms draw from the global generator
    batch, batch_labels = next(iter(classical_loader(images, labels, 32, 0, CPU)))
    assert batch.shape == (32, 3, 32, 32) and batch.dtype == torch.float32
    assert batch_labels.shape == (32,) and batch_labels.dtype == torch.int64
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    expected = (torch.tensor([255, 128, 0]).float()[:, None, None] / 255 - mean) / std
    centre = batch[:, :, 4:28, 4:28]  # never padding: a crop shifts by at most 4 pixels
    torch.testing.assert_close(centre, expected.expand_as(centre))
    corners = batch[:, :, 0, 0]  # the top-left pixel comes from the image or from the zero padding
    from_image = torch.isclose(corners, expected.flatten()).all(dim=1)
    from_padding = torch.isclose(corners, (-mean / std).flatten()).all(dim=1)
    assert (from_image | from_padding).all() and from_padding.any() and from_image.any()


def test_epoch_chunk_gives_each_model_its_own_order_with_matching_labels():
    count = 256
    images = torch.arange(count, dtype=torch.uint8)[:, None, None, None].expand(count, 3, 32, 32).contiguous()
    labels = torch.arange(count)
    chunk, chunk_labels = epoch_chunk(images, labels, 3, 4, 16, torch.Generator().manual_seed(0))
    assert chunk.shape == (3, 64, 3, 32, 32) and chunk_labels.shape == (3, 64)
    assert torch.equal(chunk[:, :, 0, 16, 16].long(), chunk_labels)  # the centre survives crop and flip
    assert len({tuple(order.tolist()) for order in chunk_labels}) == 3
    assert all(len(set(order.tolist())) == 64 for order in chunk_labels)  # without replacement
    with pytest.raises(ValueError):
        epoch_chunk(images, labels, 1, 17, 16, torch.Generator())


def test_packed_step_of_two_models_equals_two_ordinary_steps():
    torch.manual_seed(0)
    models = [build_model(ModelSpec(8)) for _ in range(2)]
    separate = [build_model(ModelSpec(8)) for _ in range(2)]
    for copy, model in zip(separate, models, strict=True):
        copy.load_state_dict(model.state_dict())
    runtime = Mode().runtime()
    packed = PackedModels(models, CPU, runtime)
    optimizers = [make_optimizer(model.parameters(), benchmark.OPTIMIZER, CPU) for model in separate]
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    images, labels = synthetic_cifar(2 * 2 * 8, seed=1)
    images, labels = images.view(2, 2, 8, 3, 32, 32), labels.view(2, 2, 8)
    for step in range(2):  # the second step exercises momentum
        losses, _ = packed.step(images[step], labels[step], mean, std)
        for k, (model, optimizer) in enumerate(zip(separate, optimizers, strict=True)):
            loss, _ = train_step(model, optimizer, images[step, k], labels[step, k], mean, std, CPU, runtime)
            torch.testing.assert_close(losses[k], loss)
    for k, model in enumerate(separate):
        state = packed.state_dict_of(k)
        assert state.keys() == model.state_dict().keys()
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(state[name], tensor, rtol=1e-4, atol=1e-5, msg=f"model {k}: {name}")
    heads = [packed.state_dict_of(k)["head.0.weight"] for k in range(2)]
    assert not torch.allclose(*heads)
    assert packed.state_dict_of(1)["backbone.1.num_batches_tracked"] == 2


def test_ratio_compares_our_fastest_measured_mode_with_the_classical_pipeline():
    rows = [
        ("ours", 20, "eager", 300.0),
        ("ours", 20, "compile", 900.0),
        ("ours", 20, "eager+bf16", float("nan")),
        ("classical", 20, "eager, 2 workers", 100.0),
        ("packed", 20, "eager, K=4", 5000.0),
        ("ours", 56, "eager", 50.0),
        ("classical", 56, "eager, 2 workers", 40.0),
    ]
    frame = pd.DataFrame(rows, columns=["pipeline", "depth", "mode", "images_per_s"])
    ratios = ratio_to_classical(frame).set_index("depth")
    assert ratios.loc[20, "best_mode"] == "compile" and ratios.loc[20, "ratio"] == pytest.approx(9.0)
    assert ratios.loc[56, "best_mode"] == "eager" and ratios.loc[56, "ratio"] == pytest.approx(1.25)


def test_concurrent_jobs_run_their_timed_repeats_at_the_same_time(restore_threads):
    torch.set_num_threads(1)
    protocol = benchmark.Protocol(steps=3, repeats=2, warmup_steps=1, batch_size=8)
    spans, peaks = benchmark.run_concurrent_jobs(8, 2, CPU, protocol, Mode(), synthetic_cifar(256))
    assert [len(job) for job in spans] == [2, 2]
    for (first_start, first_end), (second_start, second_end) in zip(*spans, strict=True):
        assert first_start < second_end and second_start < first_end, "a repeat did not overlap"
    assert all(math.isnan(peak) for peak in peaks)  # not measured on the CPU


def test_a_failing_concurrent_job_is_reported_instead_of_waited_for():
    protocol = benchmark.Protocol(steps=1, repeats=1, warmup_steps=0, batch_size=8)
    with pytest.raises(RuntimeError, match="process .* of 2 failed: ValueError: depth 21"):
        benchmark.run_concurrent_jobs(21, 2, CPU, protocol, Mode(), synthetic_cifar(64))


def test_sharing_comparison_names_the_fastest_way_to_train_k_models_and_its_margin():
    rows = [
        ("packed", 20, "eager+bf16, K=4", 4000.0),
        ("sequential", 20, "eager+bf16, K=4", 3000.0),
        ("jobs", 20, "eager+bf16, K=4", 6000.0),
        ("packed", 20, "eager+bf16, K=1", 1000.0),
        ("sequential", 20, "eager+bf16, K=1", 1100.0),
        ("jobs", 20, "eager+bf16, K=1", float("nan")),
        ("ours", 20, "eager", 9000.0),
    ]
    frame = pd.DataFrame(rows, columns=["pipeline", "depth", "mode", "images_per_s"])
    table = benchmark.sharing_comparison(frame).set_index("K")
    assert table.loc[4, "winner"] == "jobs" and table.loc[4, "margin"] == pytest.approx(1.5)
    assert table.loc[1, "winner"] == "sequential" and table.loc[1, "margin"] == pytest.approx(1.1)
    assert math.isnan(table.loc[1, "jobs"])


class FakeMeasurements:
    """Stands in for the four measuring functions: each call returns a distinct figure, and the call
    numbered ``interrupt_at`` raises KeyboardInterrupt (a kill) or ``error`` for the classical pipeline."""

    def __init__(self, monkeypatch, interrupt_at=None, classical_error=None):
        self.calls, self.interrupt_at, self.classical_error = [], interrupt_at, classical_error
        for name in ("our_step_throughput", "packed_throughput", "concurrent_jobs_throughput"):
            monkeypatch.setattr(benchmark, name, self.measurement(name))
        monkeypatch.setattr(benchmark, "classical_throughput", self.measurement("classical_throughput"))

    def measurement(self, name):
        def measure(*args, **kwargs):
            self.calls.append(name)
            if len(self.calls) == self.interrupt_at:
                raise KeyboardInterrupt
            if name == "classical_throughput" and self.classical_error:
                raise self.classical_error
            return benchmark.Measurement(1000.0 * len(self.calls), float("nan"), 2)

        return measure


SMALL_CPU = ["--small", "--depths", "8", "--device", "cpu"]


def test_rows_are_written_as_measured_and_resume_measures_only_the_missing_ones(
    tmp_path, monkeypatch, restore_threads
):
    complete = tmp_path / "complete"
    FakeMeasurements(monkeypatch)
    load_cli().main([*SMALL_CPU, "--out", str(complete)])
    expected = benchmark.read_results(complete / "benchmark.csv")
    assert expected["repeats"].gt(0).sum() == 5  # ours eager, classical, packed, sequential, jobs

    killed = FakeMeasurements(monkeypatch, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        load_cli().main([*SMALL_CPU, "--out", str(tmp_path)])
    written = benchmark.read_results(tmp_path / "benchmark.csv")
    assert len(killed.calls) == 3 and written["repeats"].gt(0).sum() == 2
    assert written.equals(expected.iloc[: len(written)])  # every row up to the kill is on disk

    resumed = FakeMeasurements(monkeypatch)
    load_cli().main([*SMALL_CPU, "--out", str(tmp_path), "--resume"])
    assert resumed.calls == ["packed_throughput", "packed_throughput", "concurrent_jobs_throughput"]
    final = benchmark.read_results(tmp_path / "benchmark.csv")
    assert final[benchmark.IDENTITY].equals(expected[benchmark.IDENTITY])
    assert final["images_per_s"].iloc[: len(written)].equals(written["images_per_s"])  # kept, not remeasured
    assert (tmp_path / "benchmark.png").exists()

    again = FakeMeasurements(monkeypatch)
    load_cli().main([*SMALL_CPU, "--out", str(tmp_path)])  # without --resume: a fresh run
    assert len(again.calls) == 5


def test_a_failed_measurement_is_recorded_the_others_still_run_and_the_command_fails(
    tmp_path, monkeypatch, restore_threads
):
    FakeMeasurements(monkeypatch, classical_error=RuntimeError("CUDA out of memory"))
    with pytest.raises(SystemExit, match="1 measurement\\(s\\) failed.*RuntimeError: CUDA out of memory"):
        load_cli().main([*SMALL_CPU, "--out", str(tmp_path)])
    frame = benchmark.read_results(tmp_path / "benchmark.csv").set_index("pipeline")
    assert frame.loc["classical", "note"] == "failed: RuntimeError: CUDA out of memory"
    assert math.isnan(frame.loc["classical", "images_per_s"]) and frame.loc["classical", "repeats"] == 0
    assert (frame.drop(index="classical")["repeats"].max(), frame.loc["jobs", "repeats"]) == (2, 2)

    retried = FakeMeasurements(monkeypatch)
    load_cli().main([*SMALL_CPU, "--out", str(tmp_path), "--resume"])
    assert retried.calls == ["classical_throughput"]


def test_resume_refuses_rows_it_would_not_measure_again_and_leaves_them_on_disk(
    tmp_path, monkeypatch, restore_threads
):
    FakeMeasurements(monkeypatch)
    load_cli().main([*SMALL_CPU, "--out", str(tmp_path)])
    csv_path = tmp_path / "benchmark.csv"
    before = csv_path.read_bytes()
    refused = FakeMeasurements(monkeypatch)
    with pytest.raises(
        SystemExit, match=f"{csv_path} holds 5 measured row.*ResNet-8 ours eager, batch 16, 2 steps"
    ):
        load_cli().main([*SMALL_CPU, "--out", str(tmp_path), "--resume", "--steps", "3"])
    assert refused.calls == [] and csv_path.read_bytes() == before

    pd.read_csv(csv_path).drop(columns="machine").to_csv(csv_path, index=False)
    with pytest.raises(SystemExit, match="lacks the column\\(s\\) machine: it comes from another version"):
        load_cli().main([*SMALL_CPU, "--out", str(tmp_path), "--resume"])
    assert refused.calls == []


def write_train_json(folder, variant, depth, iterations, train_seconds, job_seconds, overhead, **extra):
    path = folder / "runs" / variant / f"resnet{depth}" / "seed0" / "train.json"
    summary = {"dataset": "demo", "variant": variant, "depth": depth, "seed": 0, "device": "cuda (H100)"}
    summary |= {"iterations": iterations, "train_seconds": train_seconds, "images_per_s": 1000.0, **extra}
    summary["timings"] = {"job_seconds": job_seconds, "overhead_fraction": overhead}
    write_json(path, summary)
    return path


def test_job_timings_judge_the_full_paper_runs_against_the_targets(tmp_path):
    seconds = {20: (80.0, 100.0, 0.12), 32: (110.0, 120.0, 0.1), 44: (150.0, 160.0, 0.1)}
    seconds |= {56: (190.0, 200.0, 0.1), 110: (700.0, 320.0, 0.05)}
    for depth, (train_seconds, job_seconds, overhead) in seconds.items():
        write_train_json(tmp_path, "paper", depth, 64_000, train_seconds, job_seconds, overhead)
    write_train_json(tmp_path, "wide", 20, 64_000, 900.0, 950.0, 0.5)  # not the paper recipe
    short_run = write_train_json(tmp_path / "elsewhere", "paper", 20, 50, 9.0, 12.0, 0.3)

    job_timings_cli = load_cli(SCRIPT.with_name("job_timings.py"))
    paths = job_timings_cli.summaries([tmp_path, short_run])
    timings = benchmark.job_timings(paths)
    assert len(timings) == 7
    short = timings[timings["iterations"] == 50].iloc[0]
    assert short["seconds_per_64k"] == pytest.approx(9.0 * 64_000 / 50)

    verdicts = benchmark.target_verdicts(timings).set_index("target")
    assert verdicts["met"].to_dict() == {
        "ResNet-20 training": "yes",
        "ResNet-20 job overhead": "no",
        "ResNet-110 training": "no",
        "the five depths' jobs together": "yes",
    }
    assert verdicts.loc["the five depths' jobs together", "measured"] == "900.0 s"  # 100+120+160+200+320
    assert verdicts.loc["ResNet-20 job overhead", "measured"] == "12.0 %"
    assert (verdicts["device"] == "cuda (H100)").all()
    assert benchmark.target_verdicts(timings[timings["depth"] != 110]).shape[0] == 2  # no 110: two checks


def test_job_timings_refuse_a_train_json_without_timings_and_a_missing_path(tmp_path, capsys):
    job_timings_cli = load_cli(SCRIPT.with_name("job_timings.py"))
    path = write_train_json(tmp_path, "paper", 20, 64_000, 80.0, 90.0, 0.1)
    job_timings_cli.main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| ResNet-20 training" in printed and "| yes" in printed and "12.5%" not in printed
    summary = read_json(path)
    del summary["timings"]
    write_json(path, summary)
    with pytest.raises(SystemExit, match="train.json lacks timings; rerun the step that writes it"):
        job_timings_cli.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="nowhere does not exist"):
        job_timings_cli.main([str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="no train.json to read"):
        job_timings_cli.main([str(tmp_path / "runs")])  # a folder without runs/*/resnet*/...
