"""The real workflow, end to end, on a tiny demo configuration on the CPU, and its dry runs."""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from test_summary import summary_row

import cifar_resnet
from cifar_resnet.export import onnx_logits, onnx_session
from cifar_resnet.layout import plot_names
from cifar_resnet.readme import RESULTS_MARKERS, results_block, update_readme
from cifar_resnet.records import DEPLOY_FIELDS
from cifar_resnet.tables import accuracy_table, render_markdown
from cifar_resnet.tensors import load_tensors

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
WORKFLOW_FILES = ("workflow", "config", "profiles", "README.md")

TINY = {
    "study": {"variants": ["paper", "dropout", "frozen"], "depths": [8], "seeds": [0]},
    "data": {"demo": {"train_size": 300, "test_size": 100}},
    "recipe": {"training": {"batch_size": 32}},
}


def copy_workflow(destination: Path) -> Path:
    for name in WORKFLOW_FILES:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, destination / name)
    return destination


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(SNAKEMAKE), *args], cwd=workdir, capture_output=True, text=True, timeout=900)
    if check and result.returncode:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}; empty when there is nothing to do."""
    table = dry_run_output.split("Job stats:", 1)
    if len(table) == 1:
        return {}
    return {
        rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table[1], re.M) if rule != "total"
    }


def with_aggregates(**run_jobs: int) -> dict[str, int]:
    """The job counts of a dry run that reruns ``run_jobs`` and therefore every aggregate."""
    return {**run_jobs, "summarize": 1, "accuracy_table": 1, "plots": 1, "all": 1}


def write_config(workdir: Path, name: str, config: dict) -> str:
    (workdir / name).write_text(yaml.safe_dump(config))
    return name


# The tests that run the workflow end to end (demo_run's, minutes) are marked slow, so that
# `pytest -m "not slow"` is a quick inner loop; the dry runs stay in it.


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    tiny = write_config(workdir, "tiny.yaml", TINY)
    snakemake(workdir, "--cores", "2", "--configfile", "config/demo.yaml", tiny)
    return workdir, ["config/demo.yaml", tiny]


def test_default_config_dry_runs_the_full_grid_with_pretraining_edges(tmp_path):
    workdir = copy_workflow(tmp_path)
    output = snakemake(workdir, "-n").stdout
    counts = job_counts(output)
    # 12 variants x 5 depths x 3 seeds on CIFAR-10, plus the CIFAR-100 pretraining of frozen/finetune
    assert counts["deploy"] == 12 * 5 * 3  # the study runs; the training jobs evaluate every run
    assert counts["train"] == 12 * 5 * 3 + 5 * 3
    assert counts["download"] == 2 and counts["prepare"] == 2
    # The longest runs start first: a run's jobs have its compute, depth x width squared, as priority.
    priorities = re.findall(
        r"^\s*rule (train|deploy):$.*?variant=([\w-]+), depth=(\d+).*?priority: (\d+)$", output, re.M | re.S
    )
    assert len(priorities) == counts["train"] + counts["deploy"]
    # A cluster gets one job per run (its training, and its deployment if it is a study run) and one per
    # dataset's preparation.
    groups = re.findall(r"^\S.*Group job ([\w-]+) .*\n((?:\n|\s.*\n|Shell command.*\n)*)", output, re.M)
    rules = {name: sorted(re.findall(r"^\s+rule (\w+):$", body, re.M)) for name, body in groups}
    assert len(rules) == len(groups) - 1  # the two datasets' preparations share the group name
    assert [r for r in rules.values() if r == ["deploy", "train"]] == [["deploy", "train"]] * counts["deploy"]
    assert [r for r in rules.values() if r == ["train"]] == [["train"]] * (counts["train"] - counts["deploy"])
    assert rules["data"] == ["prepare"]
    width = {"wide": 4}
    assert all(int(p) == int(depth) * width.get(variant, 1) ** 2 for _, variant, depth, p in priorities)

    dag = snakemake(workdir, "--dag").stdout
    labels = {
        node: label.split("\\n") for node, label in re.findall(r'^\s*(\d+)\[label = "([^"]*)"', dag, re.M)
    }
    edges = re.findall(r"^\s*(\d+) -> (\d+)", dag, re.M)
    finetuning = [n for n, label in labels.items() if label[0] == "train" and label[-1] in FINETUNING]
    assert len(finetuning) == 2 * 5 * 3
    pretraining = {}
    for node in finetuning:
        sources = [a for a, b in edges if b == node and labels[a][0] == "train"]
        assert len(sources) == 1  # the edge makes Snakemake train the pretraining job first
        assert labels[sources[0]][-1] == "variant: paper"
        pretraining.setdefault(sources[0], set()).add(labels[node][-1])
    assert len(pretraining) == 5 * 3  # each pretraining job scheduled once, feeding both variants
    assert all(consumers == FINETUNING for consumers in pretraining.values())


FINETUNING = {"variant: frozen", "variant: finetune"}
RUN_OUTPUTS = ("model.pt", "history.csv", "train.json", "eval.json")
DEPLOYED = ("model.onnx", "model.int8.onnx", "deploy.json")
# The demo's INT8 models stay this close to their float models (test error, percentage points).
INT8_BOUND = 5.0


@pytest.mark.slow
def test_demo_produces_every_output(demo_run):
    workdir, _ = demo_run
    results = workdir / "results" / "demo"
    for variant in TINY["study"]["variants"]:
        run = results / "runs" / variant / "resnet8" / "seed0"
        for name in (*RUN_OUTPUTS, *DEPLOYED):
            assert (run / name).stat().st_size > 0, run / name
    summary = pd.read_csv(results / "summary.csv")
    assert sorted(summary["variant"]) == sorted(TINY["study"]["variants"])
    assert summary["test_accuracy"].between(0, 1).all()
    assert list(summary.columns[-len(DEPLOY_FIELDS) :]) == list(DEPLOY_FIELDS)
    assert (summary["onnx_b1_ms"] > 0).all() and (summary["int8_bytes"] < summary["onnx_bytes"]).all()
    table = (results / "tables" / "accuracy.md").read_text()
    assert table.startswith("| Depth") and "ResNet-8" in table and "Paper %" not in table
    assert all(column in table.splitlines()[0] for column in ("CPU ms (b=1)", "INT8 error %", "Size"))
    for name in plot_names(deployed=True):
        assert (results / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_curves = sorted(
        path.relative_to(results / "plots/runs") for path in results.glob("plots/runs/**/*.png")
    )
    assert run_curves == sorted(
        Path(variant, "resnet8", "seed0.png") for variant in TINY["study"]["variants"]
    )
    statistics = pd.read_csv(results / "tables" / "accuracy.csv")
    assert {"ci_low", "ci_high", "p_value", "p_holm"} <= set(statistics.columns)
    assert not list((workdir / "results").glob("demo/resume/**/*.pt"))
    assert (workdir / "README.md").read_text() == (ROOT / "README.md").read_text()  # demo never splices


@pytest.mark.slow
def test_every_deployed_model_is_the_evaluated_one(demo_run):
    workdir, _ = demo_run
    for variant in TINY["study"]["variants"]:
        run = workdir / RUNS / variant / "resnet8" / "seed0"
        evaluation, deployed = (json.loads((run / name).read_text()) for name in ("eval.json", "deploy.json"))
        # one image of the 100 may flip between the float32 roundings of the two graphs
        assert abs(deployed["onnx_test_error"] - evaluation["test_error"]) <= 1.0
        assert abs(deployed["int8_error_difference"]) <= INT8_BOUND
        assert deployed["onnx_top1_agreement"] >= 0.999 and deployed["onnx_b1_ms"] > 0


@pytest.mark.slow
def test_the_readmes_deployment_snippet_classifies_an_image(demo_run, tmp_path):
    workdir, _ = demo_run
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"To classify an image.*?```python\n(.*?)```", readme, re.S)[1]
    images = load_tensors(workdir / "resources/demo/prepared.pt")["test_images"][:5]
    run = workdir / RUNS / "paper/resnet8/seed0"
    session = onnx_session(run / "model.int8.onnx", threads=1)
    class_names = json.loads((run / "eval.json").read_text())["class_names"]
    for index, image in enumerate(images):
        path = tmp_path / f"{index}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        code = (
            snippet.replace('"results/cifar10/', f'"{workdir}/results/demo/')
            .replace("/resnet20/", "/resnet8/")  # the demo run's depth
            .replace('"cat.png"', f'"{path}"')
        )
        printed = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert printed.strip() == class_names[onnx_logits(session, image[None].numpy()).argmax()]


@pytest.mark.slow
def test_load_run_predicts_what_the_onnx_model_predicts(demo_run):
    workdir, _ = demo_run
    images = load_tensors(workdir / "resources/demo/prepared.pt")["test_images"]
    for variant in TINY["study"]["variants"]:
        run = workdir / RUNS / variant / "resnet8" / "seed0"
        with torch.no_grad():
            predicted = cifar_resnet.load_run(run)(images).argmax(1).numpy()
        exported = onnx_logits(onnx_session(run / "model.onnx", threads=1), images.numpy()).argmax(1)
        assert (predicted == exported).all(), variant


# torch.hub has entries at the paper's depths only: the release holds two of the demo's runs at ResNet-20,
# trained on batches of 8 (the test needs trained and evaluated runs, not good ones).
HUB_RUNS = {
    **TINY,
    "study": {**TINY["study"], "variants": ["paper", "dropout"], "depths": [20]},
    "recipe": {"training": {"batch_size": 8}},
}


@pytest.mark.slow
def test_a_release_of_the_demo_loads_through_torch_hub_with_the_recorded_accuracy(
    served, tmp_path, monkeypatch
):
    (tmp_path / "workflow").mkdir()
    workdir = copy_workflow(tmp_path / "workflow")
    overlay = write_config(workdir, "hub.yaml", HUB_RUNS)
    runs = [workdir / RUNS / variant / "resnet20" / "seed0" for variant in HUB_RUNS["study"]["variants"]]
    evaluations = [str((run / "eval.json").relative_to(workdir)) for run in runs]
    # the targets first: --configfile takes every value after it
    snakemake(workdir, *evaluations, "--cores", "2", "--configfile", "config/demo.yaml", overlay)
    folder, url = served
    release = [sys.executable, "-m", "cifar_resnet.cli", "release", str(folder / "v1"), *map(str, runs)]
    subprocess.run([*release, "--repository", "someone/cifar-resnet"], check=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    data = load_tensors(workdir / "resources/demo/prepared.pt")

    model = torch.hub.load(
        str(ROOT),
        "resnet20",
        source="local",
        variant="dropout",
        dataset="demo",
        release=f"{url}/v1/manifest.json",
    )

    with torch.no_grad():
        accuracy = (model(data["test_images"]).argmax(1) == data["test_labels"]).double().mean().item()
    recorded = json.loads((workdir / RUNS / "dropout/resnet20/seed0/eval.json").read_text())["test_accuracy"]
    assert accuracy == pytest.approx(recorded, abs=1e-9)
    assert model.provenance["variant"] == "dropout" and list((tmp_path / "torch-home").rglob("*.pt"))


@pytest.mark.slow
def test_a_latency_option_deploys_again_and_trains_nothing(demo_run):
    workdir, configs = demo_run
    runs = write_config(workdir, "runs.yaml", {"deploy": {"latency": {"runs": 7}}})
    counts = job_counts(snakemake(workdir, "-n", "--configfile", *configs, runs).stdout)
    assert counts == with_aggregates(deploy=3)


def test_a_key_given_twice_in_an_overlay_stops_the_workflow_before_any_job(tmp_path):
    workdir = copy_workflow(tmp_path)
    (workdir / "twice.yaml").write_text("study:\n  seeds: [0]\n  seeds: [0, 1]\n")
    result = snakemake(workdir, "-n", "--configfile", "config/demo.yaml", "twice.yaml", check=False)
    assert result.returncode != 0 and "Job stats" not in result.stdout
    assert "twice.yaml, line 3: the key 'seeds' is given twice; keep one of them." in result.stderr
    assert_no_traceback(result.stdout + result.stderr)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_on_a_machine_without_it_stops_the_local_run_before_any_job(tmp_path):
    workdir = copy_workflow(tmp_path)
    cuda = write_config(workdir, "cuda.yaml", {**TINY, "runtime": {"device": "cuda"}})
    result = snakemake(workdir, "--cores", "1", "--configfile", "config/demo.yaml", cuda, check=False)
    assert result.returncode != 0
    assert "runtime.device is 'cuda' but CUDA is not available on this machine" in result.stderr
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()  # no job ran
    dry_run = snakemake(workdir, "-n", "--configfile", "config/demo.yaml", cuda)  # a plan needs no GPU
    assert job_counts(dry_run.stdout)["train"] == 3


def test_deploy_off_leaves_the_deployment_out_of_the_dag(tmp_path):
    workdir = copy_workflow(tmp_path)
    off = write_config(workdir, "off.yaml", {**TINY, "deploy": {"enabled": False}})
    output = snakemake(workdir, "-n", "--configfile", "config/demo.yaml", off).stdout
    counts = job_counts(output)
    assert counts["train"] == 3 and "deploy" not in counts
    assert ".onnx" not in output and "deploy.json" not in output


@pytest.mark.slow
def test_int8_off_exports_the_float_model_only(demo_run):
    workdir, configs = demo_run
    float_only = write_config(workdir, "float.yaml", {"deploy": {"int8": False}})
    output = snakemake(workdir, "-n", "--configfile", *configs, float_only).stdout
    assert job_counts(output)["deploy"] == 3 and "train" not in job_counts(output)
    assert "model.onnx" in output and "model.int8.onnx" not in output


def report_results(path: Path) -> dict:
    """The results a Snakemake report embeds, by path: labels, category, MIME type and content (bytes)."""
    html = path.read_text()
    embedded = re.search(r'<script id="results">\s*var results = (\{.*?\});?\s*</script>', html, re.S)
    results = json.loads(embedded[1])
    for result in results.values():
        result["content"] = base64.b64decode(result["data_uri"].split("base64,", 1)[1])
    return results


@pytest.mark.slow
def test_snakemake_report_target_shows_the_study_inline(demo_run):
    workdir, configs = demo_run
    output = snakemake(workdir, "report", "--configfile", *configs).stderr  # a real run logs to stderr
    assert job_counts(output) == {"report": 1}  # everything else is done: only the report is built

    results = report_results(workdir / "results/report.html")
    table = results["results/demo/tables/accuracy.html"]
    assert table["mime_type"] == "text/html"  # shown inline, not a download
    html = table["content"].decode()
    assert "<table" in html and "95% CI" in html and "p (Holm)" in html
    assert html.count("</tr>") == 1 + len(TINY["study"]["variants"])  # the header, one row per variant
    assert "Holm" in table["caption"] and "95 %" in table["caption"]

    curves = {path: result for path, result in results.items() if "/plots/runs/" in path}
    labels = [result["labels"] for result in curves.values()]
    assert sorted(label["variant"] for label in labels) == sorted(TINY["study"]["variants"])
    assert {(label["dataset"], label["depth"], label["seed"]) for label in labels} == {("demo", "8", "0")}
    assert all(result["content"][:8] == b"\x89PNG\r\n\x1a\n" for result in curves.values())
    summary = results["results/demo/summary.csv"]["content"].decode()
    assert summary == (workdir / "results/demo/summary.csv").read_text()


@pytest.mark.slow
def test_report_flag_still_writes_the_report(demo_run):
    workdir, configs = demo_run
    snakemake(workdir, "--configfile", *configs, "--report", "report.html")
    assert "results/demo/tables/accuracy.html" in report_results(workdir / "report.html")


@pytest.mark.slow
def test_results_block_splices_into_a_copy_of_the_readme(demo_run, tmp_path):
    workdir, _ = demo_run
    readme = tmp_path / "README.md"
    shutil.copy2(ROOT / "README.md", readme)
    plots = {name: f"results/demo/plots/{name}.png" for name in plot_names(deployed=True)}
    block = results_block(["demo"], [workdir / "results/demo/tables/accuracy.md"], [plots])
    update_readme(readme, {RESULTS_MARKERS: block})
    text = readme.read_text()
    inside = text.split("<!-- results:start -->\n", 1)[1].split("<!-- results:end -->", 1)[0]
    assert inside == block and "results/demo/plots/error_vs_depth.png" in inside
    assert text.replace(inside, "") == (ROOT / "README.md").read_text().replace(
        (ROOT / "README.md")
        .read_text()
        .split("<!-- results:start -->\n", 1)[1]
        .split("<!-- results:end -->", 1)[0],
        "",
    )


@pytest.mark.slow
def test_complete_run_has_nothing_to_do(demo_run):
    workdir, configs = demo_run
    assert job_counts(snakemake(workdir, "-n", "--configfile", *configs).stdout) == {}


@pytest.mark.slow
def test_a_hyperparameter_change_reruns_exactly_that_variant(demo_run):
    workdir, configs = demo_run
    change = write_config(
        workdir, "change.yaml", {"variants": {"dropout": {"overrides": {"model": {"dropout": 0.3}}}}}
    )
    counts = job_counts(snakemake(workdir, "-n", "--configfile", *configs, change).stdout)
    assert counts == with_aggregates(train=1, deploy=1)


@pytest.mark.slow
def test_a_paper_change_also_retrains_what_is_pretrained_from_it(demo_run):
    workdir, configs = demo_run
    change = write_config(
        workdir, "paper.yaml", {"variants": {"paper": {"overrides": {"optimizer": {"lr": 0.05}}}}}
    )
    output = snakemake(workdir, "-n", "--configfile", *configs, change).stdout
    assert job_counts(output)["train"] == 2  # paper, and frozen whose input is paper's model
    assert "variant=frozen" in output.replace(" ", "")


@pytest.mark.slow
def test_adding_a_seed_adds_only_its_jobs(demo_run):
    workdir, configs = demo_run
    seeds = write_config(workdir, "seeds.yaml", {"study": {"seeds": [0, 1]}})
    counts = job_counts(snakemake(workdir, "-n", "--configfile", *configs, seeds).stdout)
    assert counts["train"] == 3 and counts["deploy"] == 3
    assert "prepare" not in counts and "demo_archive" not in counts


@pytest.mark.slow
def test_adding_a_depth_adds_only_its_jobs(demo_run):
    workdir, configs = demo_run
    depths = write_config(workdir, "depths.yaml", {"study": {"depths": [8, 20]}})
    counts = job_counts(snakemake(workdir, "-n", "--configfile", *configs, depths).stdout)
    assert counts["train"] == 3 and counts["deploy"] == 3  # ResNet-20 of each variant, nothing at 8
    assert "prepare" not in counts and "demo_archive" not in counts


@pytest.mark.slow
def test_a_plot_option_reruns_only_the_plots(demo_run):
    workdir, configs = demo_run
    plots = write_config(workdir, "plots.yaml", {"report": {"plots": {"learning_curve_depth": 8}}})
    assert job_counts(snakemake(workdir, "-n", "--configfile", *configs, plots).stdout) == {
        "plots": 1,
        "all": 1,
    }


@pytest.mark.slow
def test_a_config_error_stops_before_any_job(demo_run):
    workdir, configs = demo_run
    bad = write_config(workdir, "bad.yaml", {"study": {"depths": [21]}})
    result = snakemake(workdir, "-n", "--configfile", *configs, bad, check=False)
    assert result.returncode != 0
    assert "depth 21 is not a CIFAR ResNet depth" in result.stdout + result.stderr


RESUMABLE = {**TINY, "study": {**TINY["study"], "variants": ["paper"]}}  # 64 iterations: 8 epochs of 8


@contextmanager
def in_the_background(command: list[str], cwd: Path, env: dict[str, str], log: Path):
    """``command`` running in the background, its output into ``log``; its processes are killed if the test
    ends before it does."""
    with open(log, "w") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=output, start_new_session=True
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_a_killed_workflow_resumes_its_training_job_to_identical_results(tmp_path):
    """Snakemake deletes a failed job's outputs, not its resume file: after a kill, `--unlock` and the
    same command (the default profile reruns incomplete jobs) continue from the saved epoch."""
    model = "results/demo/runs/paper/resnet8/seed0/model.pt"
    env = {**os.environ, "CIFAR_RESNET_CHECKPOINT_SECONDS": "0"}  # save the resume state every epoch

    def start(name: str) -> tuple[Path, list[str]]:
        (tmp_path / name).mkdir()
        workdir = copy_workflow(tmp_path / name)
        resumable = write_config(workdir, "resumable.yaml", RESUMABLE)
        # the target first: --configfile takes every value after it
        return workdir, [str(SNAKEMAKE), model, "--cores", "1", "--configfile", "config/demo.yaml", resumable]

    uninterrupted, command = start("uninterrupted")
    # The run to compare with trains beside the one that is killed (a thread each).
    with in_the_background(command, uninterrupted, env, tmp_path / "uninterrupted.log") as reference:
        workdir, command = start("killed")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        process = subprocess.Popen(command, cwd=workdir, env=env, start_new_session=True, **quiet)
        resume_file = workdir / "results/demo/resume/paper/resnet8/seed0.pt"
        deadline = time.monotonic() + 300
        while not resume_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # Snakemake and its job, as a lost node would
        process.wait()
        assert resume_file.exists() and not (workdir / model).exists()
        subprocess.run([*command, "--unlock"], cwd=workdir, check=True, capture_output=True)
        subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True)
        assert reference.wait(timeout=600) == 0, (tmp_path / "uninterrupted.log").read_text()[-3000:]

    assert "resumed from" in (workdir / "results/demo/logs/train/paper/resnet8/seed0.log").read_text()
    expected, resumed = load_tensors(uninterrupted / model), load_tensors(workdir / model)
    assert all(torch.equal(expected[key], resumed[key]) for key in expected)
    assert not resume_file.exists()


# Three runs, so that a kill leaves one done, one training and one waiting; without deployments (status's
# "trained", a run whose deployment is to come, is test_status's), which would only lengthen the resumed run.
THREE_SEEDS = {
    **TINY,
    "study": {**TINY["study"], "variants": ["paper"], "seeds": [0, 1, 2]},
    "deploy": {"enabled": False},
}
COUNTS = re.compile(
    r"^(\d+) done, (\d+) trained, (\d+) training, (\d+) stopped, (\d+) failed, (\d+) waiting of 3 runs$", re.M
)


@pytest.mark.slow
def test_status_of_a_killed_demo_shows_done_training_and_waiting_runs_then_it_resumes(tmp_path):
    workdir = copy_workflow(tmp_path)
    three = write_config(workdir, "three.yaml", THREE_SEEDS)
    command = [str(SNAKEMAKE), "--cores", "1", "--configfile", "config/demo.yaml", three]
    status = [sys.executable, "-m", "cifar_resnet.cli", "status", "--configfile", "config/demo.yaml", three]
    runs = workdir / RUNS / "paper" / "resnet8"

    def one_trained_and_one_training() -> bool:
        trained = [run for run in runs.glob("seed*") if (run / "eval.json").exists()]
        training = [
            run for run in runs.glob("seed*") if (run / "history.csv").exists() and run not in trained
        ]
        return bool(trained and training)

    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(command, cwd=workdir, start_new_session=True, **quiet)
    deadline = time.monotonic() + 600
    while not one_trained_and_one_training() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    printed = subprocess.run(status, cwd=workdir, capture_output=True, text=True, check=True).stdout
    done, trained, training, stopped, failed, waiting = map(int, COUNTS.search(printed).groups())
    assert done + trained == 1 and training == 1 and stopped == failed == 0 and waiting == 1, printed
    assert re.search(r"^training  demo/paper/ResNet-8/seed \d: epoch \d+/\d+, ", printed, re.M), printed

    subprocess.run([*command, "--unlock"], cwd=workdir, check=True, capture_output=True)
    subprocess.run(command, cwd=workdir, check=True, capture_output=True)
    printed = subprocess.run(status, cwd=workdir, capture_output=True, text=True, check=True).stdout
    assert COUNTS.search(printed).groups() == ("3", "0", "0", "0", "0", "0"), printed


def test_the_readme_rule_splices_a_real_datasets_results(tmp_path):
    """On CIFAR-10 results the README gets the accuracy table (with the paper's column), links to the
    plots and the study's variant table, and nothing else changes; only the readme rule runs, on a
    table written as the accuracy_table rule writes it."""
    workdir = copy_workflow(tmp_path)
    study = {"study": {"datasets": ["cifar10"], "variants": ["paper", "dropout"], "depths": [20]}}
    overlay = write_config(workdir, "cifar10.yaml", {**study, "report": {"update_readme": True}})
    summary = pd.DataFrame(
        [summary_row(variant, 20, seed, error) for seed, (variant, error) in enumerate(RESULTS)]
    )
    table = workdir / "results/cifar10/tables/accuracy.md"
    table.parent.mkdir(parents=True)
    table.write_text(render_markdown(accuracy_table(summary)))
    only_readme = ("--allowed-rules", "readme")
    snakemake(workdir, "results/readme_block.md", "--cores", "1", "--configfile", overlay, *only_readme)
    readme = (workdir / "README.md").read_text()
    results = between(readme, "results")
    assert results == (workdir / "results/readme_block.md").read_text()
    assert results.startswith("### CIFAR-10\n") and table.read_text().strip() in results
    assert "Paper %" in results and "8.75" in results  # He et al.'s ResNet-20 error beside ours
    assert "(results/cifar10/plots/error_vs_depth.png)" in results
    assert re.findall(r"^\| `([\w-]+)`", between(readme, "variants"), re.M) == ["paper", "dropout"]
    original = (ROOT / "README.md").read_text()
    assert outside_markers(readme) == outside_markers(original)


RESULTS = [("paper", 8.4), ("paper", 8.6), ("dropout", 8.0), ("dropout", 8.2)]


def between(text: str, marker: str) -> str:
    return text.split(f"<!-- {marker}:start -->\n", 1)[1].split(f"<!-- {marker}:end -->", 1)[0]


def outside_markers(text: str) -> str:
    for marker in ("results", "variants"):
        text = text.replace(between(text, marker), "")
    return text


def snapshot(workdir: Path, leaving_out: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every result and prepared file, by path, with its content; none under the folders ``leaving_out``."""
    return {
        path.relative_to(workdir).as_posix(): path.read_bytes()
        for folder in ("results", "resources")
        for path in sorted((workdir / folder).rglob("*"))
        if path.is_file() and not path.relative_to(workdir).as_posix().startswith(leaving_out)
    }


def refused(workdir: Path, *args: str) -> str:
    """The output of a snakemake run that must stop before any job, which must leave every file as it was."""
    before = snapshot(workdir)
    result = snakemake(workdir, "--cores", "2", *args, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in output, output[-3000:]
    assert_no_traceback(output)
    assert snapshot(workdir) == before
    return output


def assert_no_traceback(output: str) -> None:
    """Neither Python's traceback nor the frames Snakemake lists under an exception."""
    assert "Traceback" not in output and 'File "' not in output, output[-3000:]


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            {"report": {"plots": {"learning_curve_depth": 32}}},
            "report.plots.learning_curve_depth is 32, a depth the study does not run; choose one of "
            "study.depths (8) or null for the smallest.",
        ),
        (
            {"report": {"baseline_variant": "wide"}},
            "report.baseline_variant is 'wide', a variant the study does not run; choose one of "
            "study.variants (paper, dropout, frozen).",
        ),
        (
            {"recipe": {"training": {"batch_size": 300}}},
            "recipe.training.batch_size is 300, more than the 270 images of the demo training split "
            "(data.demo.train_size 300 less data.validation_fraction 0.1); choose a batch size of at most",
        ),
        (
            {"data": {"demo": {"train_size": 120}}, "recipe": {"training": {"batch_size": 128}}},
            "recipe.training.batch_size is 128, more than the 108 images of the demo training split",
        ),
        (
            {"recipe": {"warmup": {"lr": 0.01, "iterations": 90, "min_depth": 8}}},
            "recipe.warmup.iterations is 90, but the whole training of variant 'paper' lasts 64 iterations",
        ),
        (
            {"recipe": {"schedule": {"kind": "multistep", "milestones": [90], "factors": [0.1]}}},
            "recipe.schedule.milestones has the milestone 90, which lies beyond the end of training",
        ),
        (
            {"deploy": {"calibration_images": 271}},
            "deploy.calibration_images is 271, more than the 270 images of the demo training split",
        ),
        (
            {"deploy": {"latency": {"batch_size": 101}}},
            "deploy.latency.batch_size is 101, more than the 100 images of the demo test split",
        ),
    ],
    ids=[
        "learning curve depth",
        "baseline",
        "batch",
        "demo size",
        "warm-up",
        "recipe milestone",
        "calibration",
        "latency batch",
    ],
)
@pytest.mark.slow
def test_a_bad_value_is_refused_before_any_job_and_every_output_stays(demo_run, overlay, message):
    workdir, configs = demo_run
    bad = write_config(workdir, "bad.yaml", overlay)
    assert message in refused(workdir, "--configfile", *configs, bad)


@pytest.mark.slow
def test_a_string_from_the_command_line_is_said_to_be_one(demo_run):
    workdir, configs = demo_run
    output = refused(workdir, "--configfile", *configs, "--config", "study={depths: [20, 32]}")
    assert "study.depths[1] is '32', a string, because --config passes nested values as text" in output


def copy_of(demo_run, tmp_path: Path) -> Path:
    """A copy of the finished demo workflow, for a test that changes its files."""
    workdir, _ = demo_run
    return Path(shutil.copytree(workdir, tmp_path / "workflow", symlinks=True))


RUNS = Path("results/demo/runs")


@pytest.mark.slow
def test_a_deleted_primary_result_is_rebuilt_with_only_what_depends_on_it(demo_run, tmp_path):
    workdir, configs = copy_of(demo_run, tmp_path), demo_run[1]
    (workdir / RUNS / "dropout/resnet8/seed0/eval.json").unlink()
    counts = job_counts(snakemake(workdir, "-n", "--configfile", *configs).stdout)
    assert counts == with_aggregates(train=1, deploy=1)  # the training job writes the evaluation
    (workdir / RUNS / "frozen/resnet8/seed0/model.pt").unlink()
    counts = job_counts(snakemake(workdir, "-n", "--configfile", *configs).stdout)
    assert counts == with_aggregates(train=2, deploy=2)  # the dropout run's and the frozen run's


@pytest.mark.parametrize(
    ("name", "corrupt", "problem"),
    [
        ("model.pt", lambda data: data[: len(data) // 2], "is truncated or not a torch checkpoint"),
        ("train.json", lambda data: data[:-20], "is not valid JSON"),
        ("history.csv", lambda data: data + b"7,oops\n", "has a broken line"),
        ("deploy.json", lambda data: data[:-20], "is not valid JSON"),
    ],
)
@pytest.mark.slow
def test_a_corrupt_primary_result_is_named_before_any_job(demo_run, tmp_path, name, corrupt, problem):
    workdir, configs = copy_of(demo_run, tmp_path), demo_run[1]
    path = RUNS / "paper/resnet8/seed0" / name
    (workdir / path).write_bytes(corrupt((workdir / path).read_bytes()))
    output = refused(workdir, "--configfile", *configs)
    assert f"{path} {problem}" in output
    assert "delete it and run the same snakemake command again, which rebuilds it." in output
    assert "Traceback" not in output


def test_readme_markers_are_checked_before_any_job(tmp_path):
    workdir = copy_workflow(tmp_path)
    readme = workdir / "README.md"
    readme.write_text(readme.read_text().replace("<!-- results:start -->\n", ""))
    before = readme.read_bytes()
    small = write_config(
        workdir, "small.yaml", {"study": {"depths": [20], "seeds": [0], "variants": ["paper"]}}
    )
    result = snakemake(workdir, "-n", "--configfile", small, check=False)
    assert result.returncode != 0
    assert "README.md lacks the marker '<!-- results:start -->'" in result.stdout + result.stderr
    assert readme.read_bytes() == before


@pytest.mark.slow
def test_a_training_job_that_fails_leaves_no_evaluation_of_the_model_it_replaced(demo_run, tmp_path):
    workdir, configs = copy_of(demo_run, tmp_path), demo_run[1]
    diverging = write_config(
        workdir, "diverging.yaml", {"variants": {"dropout": {"overrides": {"optimizer": {"lr": 1e12}}}}}
    )
    run = RUNS / "dropout/resnet8/seed0"
    result = snakemake(
        workdir, str(run / "eval.json"), "--cores", "1", "--configfile", *configs, diverging, check=False
    )
    assert result.returncode != 0 and "training diverged" in result.stdout + result.stderr
    for name in ("model.pt", "eval.json", *DEPLOYED):
        assert not (workdir / run / name).exists(), name
    assert (workdir / RUNS / "paper/resnet8/seed0/eval.json").exists()  # other runs keep theirs


# Faults met by a finished study: what Snakemake's own process can know is refused before any job, so that
# Snakemake never clears a run's finished files for a job bound to fail; what only a job can meet ends that
# job in one sentence. The tests that mount need root (CI runs as root) and are skipped without it.
RUN = RUNS / "paper/resnet8/seed0"
PREPARED = Path("resources/demo/prepared.pt")


@contextmanager
def mounted(target: Path, *commands: list[str]):
    """Run the mount ``commands`` on ``target``, and unmount it afterwards; skips the test where this
    process may not mount."""
    for command in commands:
        if subprocess.run(command, capture_output=True).returncode:
            subprocess.run(["umount", str(target)], capture_output=True)
            pytest.skip(f"cannot mount here ({' '.join(command)}); needs root")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def read_only(folder: Path):
    """``folder`` as a read-only view of itself: the same files, on a read-only file system."""
    return mounted(
        folder,
        ["mount", "--bind", str(folder), str(folder)],
        ["mount", "-o", "remount,bind,ro", str(folder), str(folder)],
    )


@pytest.mark.slow
def test_a_damaged_dataset_is_refused_before_any_job_and_prepared_anew_without_retraining(demo_run, tmp_path):
    workdir, configs = copy_of(demo_run, tmp_path), demo_run[1]
    original = load_tensors(workdir / PREPARED)
    prepared = bytearray((workdir / PREPARED).read_bytes())
    prepared[len(prepared) // 2] ^= 0x01  # one flipped bit, which torch.load would not notice
    (workdir / PREPARED).write_bytes(prepared)
    evaluation = (workdir / RUN / "eval.json").read_bytes()
    (workdir / RUN / "eval.json").unlink()  # so that the run's training would run, and its files be cleared

    assert (
        f"error: {PREPARED} is damaged (its bytes no longer match the checksums written with them); delete "
        "it and run the same snakemake command again, which prepares it anew and trains its runs again (the "
        "README's Reliability section says how to keep those already trained).\n"
    ) in refused(workdir, "--configfile", *configs)

    # The README's way to keep the finished runs: prepare the dataset alone (identically), then --touch.
    (workdir / RUN / "eval.json").write_bytes(evaluation)
    (workdir / PREPARED).unlink()
    snakemake(workdir, str(PREPARED), "--cores", "1", "--configfile", *configs)
    again = load_tensors(workdir / PREPARED)
    assert again.keys() == original.keys()  # the same data
    assert all(
        torch.equal(again[key], value) if isinstance(value, torch.Tensor) else again[key] == value
        for key, value in original.items()
    )
    snakemake(workdir, "--touch", "--cores", "1", "--configfile", *configs)
    assert job_counts(snakemake(workdir, "-n", "--configfile", *configs).stdout) == {}


@pytest.mark.slow
def test_a_folder_the_jobs_cannot_write_is_refused_before_any_job(demo_run, tmp_path):
    workdir, configs = copy_of(demo_run, tmp_path), demo_run[1]
    (workdir / RUN / "deploy.json").unlink()  # so that the run's deployment would run
    with read_only(workdir / RUN):
        output = refused(workdir, "--configfile", *configs)
    assert (
        f"error: The jobs cannot write {RUN}: it is on a read-only file system; make it a writable folder "
        "(or run the workflow from a folder where it is one) and run the same command again.\n"
    ) in output


def failed_job(workdir: Path, configs: list[str], leaving_out: tuple[str, ...]) -> str:
    """The output of a snakemake run in which a job must fail, which must leave every file but those
    under ``leaving_out`` (the failing jobs' own) as it was."""
    before = snapshot(workdir, leaving_out)
    result = snakemake(workdir, "--cores", "1", "--configfile", *configs, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert_no_traceback(output)
    assert snapshot(workdir, leaving_out) == before
    return output


@pytest.mark.slow
def test_a_full_disk_ends_the_job_in_one_sentence_and_leaves_no_temporary(demo_run, tmp_path):
    workdir, configs = copy_of(demo_run, tmp_path), demo_run[1]
    tables = workdir / "results" / "demo" / "tables"
    with mounted(tables, ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tables)]):
        # the table's job runs (its files are hidden under the mount), on a file system with no room
        with open(tables / "filler", "wb", buffering=0) as filler, pytest.raises(OSError):
            while True:
                filler.write(b"\0" * 4096)
        output = failed_job(workdir, configs, leaving_out=("results/demo/tables", "results/demo/logs"))
        left = sorted(path.name for path in tables.iterdir())
    assert (
        "The job stopped at results/demo/tables/accuracy.csv: No space left on device; free space on that "
        "file system (or move the results there to a larger one), then run the same snakemake command again."
    ) in output
    assert left == ["filler"]  # the job's temporary is gone


@pytest.mark.slow
def test_a_damaged_summary_ends_the_jobs_that_read_it_in_one_sentence(demo_run, tmp_path):
    workdir, configs = copy_of(demo_run, tmp_path), demo_run[1]
    summary = workdir / "results" / "demo" / "summary.csv"
    pd.read_csv(summary).drop(columns="test_error").to_csv(summary, index=False)
    readers = ("results/demo/tables", "results/demo/plots", "results/demo/logs")
    assert (
        "results/demo/summary.csv lacks the columns test_error; delete it and run the same snakemake "
        "command again, which rebuilds it."
    ) in failed_job(workdir, configs, leaving_out=readers)

    summary.unlink()  # what the sentence says to do
    snakemake(workdir, "--cores", "2", "--configfile", *configs)
    assert "test_error" in pd.read_csv(summary).columns
