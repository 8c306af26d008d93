"""A release of chosen runs: a self-describing folder to attach to a GitHub release and load with
``torch.hub`` (``hubconf.py``). Per run it holds the weights with everything needed to use them (the
architecture, the input's normalisation, the class names, the provenance) in one file whose name carries
the start of its sha256 (the manifest records all of it, and every load checks it); the ONNX
and INT8 models where the run was deployed; a model card; and for the folder a manifest (``manifest.json``)
and ``SHA256SUMS``, which ``sha256sum -c`` checks."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from cifar_resnet.errors import StudyError
from cifar_resnet.files import sha256, write_json, write_text
from cifar_resnet.hub import model_name
from cifar_resnet.layout import DEPLOY_RECORD, DEPLOYED_MODELS, EVAL_RECORD, MODEL, TRAIN_RECORD, seed_dirs
from cifar_resnet.records import read_deploy_record, read_eval_record, read_train_record
from cifar_resnet.tensors import load_checkpoint, save_tensors
from cifar_resnet.trained import check_finished, checkpoint_of

MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"


def release_runs(run_dirs: list[Path], out: Path) -> dict:
    """Pack the finished runs in ``run_dirs`` into the new folder ``out``; returns the manifest. The folder
    is built beside ``out`` and renamed into place when complete."""
    out = Path(out)
    if out.exists():
        raise StudyError(f"{out} exists; name a new folder for the release, or delete that one.")
    if not run_dirs:
        raise StudyError(
            "No runs to release: name their folders, e.g. results/cifar10/runs/paper/resnet20/seed0."
        )
    for run_dir in map(Path, run_dirs):
        check_finished(run_dir)
    building = out.with_name(f".{out.name}.building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        manifest = build_release(run_dirs, building)
        building.rename(out)
    finally:  # a failed release leaves nothing behind
        shutil.rmtree(building, ignore_errors=True)
    return manifest


def build_release(run_dirs: list[Path], folder: Path) -> dict:
    """Each run's files, the manifest and the checksums in ``folder``; returns the manifest."""
    models = {}
    for run_dir in map(Path, run_dirs):
        entry = release_run(run_dir, folder)
        if entry["name"] in models:
            raise StudyError(f"{run_dir} is the same run as another one named; release each run once.")
        models[entry["name"]] = entry
    manifest = {"models": models}
    write_json(folder / MANIFEST, manifest)
    files = sorted(path for path in folder.iterdir() if path.name != CHECKSUMS)
    write_text(folder / CHECKSUMS, "".join(f"{sha256(path)}  {path.name}\n" for path in files))
    return manifest


def release_run(run_dir: Path, folder: Path) -> dict:
    """One run's files in ``folder``; returns its manifest entry."""
    summary, evaluation = read_train_record(run_dir / TRAIN_RECORD), read_eval_record(run_dir / EVAL_RECORD)
    checkpoint = checkpoint_of(summary, load_checkpoint(run_dir / MODEL), evaluation)
    name = model_name(summary["dataset"], summary["variant"], summary["depth"], summary["seed"])
    unnamed = folder / f"{name}.pt"
    save_tensors(unnamed, checkpoint)
    digest = sha256(unnamed)
    weights = unnamed.rename(folder / f"{name}-{digest[:12]}.pt").name
    files = {"weights": weights}
    deployment = run_dir / DEPLOY_RECORD
    for kind, file in DEPLOYED_MODELS.items():
        if (run_dir / file).exists():
            files[kind] = f"{name}.{file.removeprefix('model.')}"
            shutil.copyfile(run_dir / file, folder / files[kind])
    files["card"] = f"{name}.md"
    entry = {
        "name": name,
        **{field: summary[field] for field in ("dataset", "variant", "depth", "seed")},
        "files": files,
        "sha256": {"weights": digest},
        "test_error": evaluation["test_error"],
    }
    deployed = read_deploy_record(deployment) if deployment.exists() else None
    write_text(folder / files["card"], model_card(entry, summary, evaluation, deployed, seed_errors(run_dir)))
    return entry


def seed_errors(run_dir: Path) -> list[float]:
    """The test errors of the run and of the other finished seeds of its dataset, variant and depth."""
    finished = {path.resolve() for path in seed_dirs(run_dir) if (path / EVAL_RECORD).exists()}
    return [
        read_eval_record(path / EVAL_RECORD)["test_error"] for path in sorted(finished | {run_dir.resolve()})
    ]


def model_card(
    entry: dict, summary: dict, evaluation: dict, deployment: dict | None, errors: list[float]
) -> str:
    """The model card: what the model is, how well it does (this seed's test error and all seeds'
    ``errors``), how fast, where it comes from, how to load it."""
    run = f"{entry['dataset']} ResNet-{entry['depth']}, variant `{entry['variant']}`, seed {entry['seed']}"
    return "\n".join(
        [
            f"# {run}",
            "",
            *card_table(entry, summary, evaluation, deployment, errors),
            "",
            *card_provenance(summary),
            "",
            "## Files",
            "",
            *[f"- `{file}`" for file in entry["files"].values()],
            "",
            "`SHA256SUMS` lists every file's sha256 (`sha256sum -c SHA256SUMS`).",
            "",
            *card_loading(entry),
        ]
    )


def card_table(entry: dict, summary: dict, evaluation: dict, deployment: dict | None, errors: list[float]):
    """The card's table: test error, size, training and, for a deployed run, CPU latency."""
    spread = f" ± {statistics.stdev(errors):.2f}" if len(errors) > 1 else ""
    lines = [
        "| | |",
        "|---|---|",
        f"| Test error | {evaluation['test_error']:.2f} % (this seed); "
        f"{statistics.mean(errors):.2f}{spread} % over {len(errors)} seed(s), mean ± std |",
        f"| Parameters, MACs per image | {evaluation['params']:,}, {evaluation['macs']:,} |",
        f"| Training | {summary['epochs']} epochs ({summary['iterations']} iterations), selected epoch "
        f"{summary['selected_epoch']}, {summary['train_seconds']:.0f} s on {summary['device']} |",
    ]
    if deployment:
        int8 = "int8" in entry["files"]
        lines.append(
            f"| CPU latency, batch 1, 1 thread (median) | onnxruntime float {deployment['onnx_b1_ms']:.2f} ms"
            + (f", INT8 {deployment['int8_b1_ms']:.2f} ms" if int8 else "")
            + f", PyTorch eager {deployment['eager_b1_ms']:.2f} ms, on {deployment['cpu']} |"
        )
        if int8:
            lines.append(f"| INT8 test error | {deployment['int8_test_error']:.2f} % |")
    return lines


def card_provenance(summary: dict) -> list[str]:
    """The card's sections on the data the model saw, its recipe and where it comes from."""
    config, normalization = summary["config"], summary["normalization"]
    return [
        "## Data",
        "",
        f"{summary['dataset']}: trained on the training split "
        f"({1 - config['data']['validation_fraction']:.0%} of the training set,"
        f" split seed {config['data']['split_seed']}), selected on the validation split,"
        " tested once on the test set. Input: uint8 RGB images `[batch, 3, 32, 32]`, values 0 to 255; the"
        f" model normalises them itself with the training split's mean {fmt(normalization['mean'])} and std"
        f" {fmt(normalization['std'])} (on the 0 to 1 scale). Classes: {', '.join(summary['class_names'])}.",
        "",
        "## Recipe",
        "",
        "```json",
        json.dumps(config["recipe"], indent=2, sort_keys=True),
        "```",
        "",
        "## Provenance",
        "",
        f"Configuration hash {summary['config_hash']}, git commit {summary['git_commit']}, versions "
        + ", ".join(f"{package} {version}" for package, version in sorted(summary["versions"].items()))
        + ".",
    ]


def card_loading(entry: dict) -> list[str]:
    """How to load the model: torch.hub, and onnxruntime where the run was deployed."""
    lines = [
        "## How to load it",
        "",
        "```python",
        "import torch",
        "",
        f'model = torch.hub.load("OWNER/REPO", "resnet{entry["depth"]}", variant="{entry["variant"]}", '
        f'seed={entry["seed"]}, dataset="{entry["dataset"]}",',
        '                       release="https://…/manifest.json")  # this folder\'s URL',
        "logits = model(images)  # uint8 [batch, 3, 32, 32]",
        "print(model.class_names[logits.argmax(1)[0]])",
        "```",
        "",
    ]
    if "onnx" in entry["files"]:
        lines += [
            f'Without PyTorch: `onnxruntime.InferenceSession("{entry["files"]["onnx"]}")`, input `images`'
            " (uint8, as above), output the logits.",
            "",
        ]
    return lines


def fmt(values: list[float]) -> str:
    return "(" + ", ".join(f"{value:.4f}" for value in values) + ")"
