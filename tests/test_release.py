"""cifar-resnet release and hubconf.py: finished runs packed for torch.hub, downloaded and verified."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_hub import finished_run  # noqa: F401 (a fixture)

import cifar_resnet
from cifar_resnet.datasets import load_prepared
from cifar_resnet.errors import StudyError
from cifar_resnet.release import CHECKSUMS, MANIFEST, release_runs

ROOT = Path(__file__).resolve().parents[1]
NAME = "demo-paper-resnet20-seed0"


@pytest.fixture
def released(finished_run, served, tmp_path, monkeypatch):  # noqa: F811
    """The finished run released into the served folder; its manifest's URL."""
    folder, url = served
    release_runs([finished_run], folder / "v1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty torch.hub cache
    return folder / "v1", f"{url}/v1/{MANIFEST}"


def test_the_release_holds_each_file_with_its_sha256(released):
    folder, _ = released
    manifest = json.loads((folder / MANIFEST).read_text())
    entry = manifest["models"][NAME]
    weights = folder / entry["files"]["weights"]
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()

    assert weights.name == f"{NAME}-{digest[:12]}.pt" and entry["sha256"]["weights"] == digest
    sums = dict(line.split("  ")[::-1] for line in (folder / CHECKSUMS).read_text().splitlines())
    assert set(sums) == {path.name for path in folder.iterdir()} - {CHECKSUMS}
    assert all(hashlib.sha256((folder / name).read_bytes()).hexdigest() == sums[name] for name in sums)
    card = (folder / entry["files"]["card"]).read_text()
    assert f"| Test error | {entry['test_error']:.2f} % (this seed)" in card and '"resnet20"' in card


def test_torch_hub_loads_the_released_model_as_load_run_does(released, finished_run, prepared):  # noqa: F811
    _, manifest_url = released
    images = load_prepared(prepared, splits=("test",))["test_images"]

    model = torch.hub.load(str(ROOT), "resnet20", source="local", dataset="demo", release=manifest_url)

    with torch.no_grad():
        assert torch.equal(model(images), cifar_resnet.load_run(finished_run)(images))
    assert model.provenance == cifar_resnet.load_run(finished_run).provenance
    assert model.class_names == json.loads((finished_run / "train.json").read_text())["class_names"]


def test_a_tampered_weights_file_is_refused_in_one_sentence_and_not_cached(released, tmp_path):
    folder, manifest_url = released
    weights = next(folder.glob(f"{NAME}-*.pt"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(StudyError, match=f"{weights.name} .* does not match the sha256 its manifest records"):
        torch.hub.load(str(ROOT), "resnet20", source="local", dataset="demo", release=manifest_url)
    assert not list((tmp_path / "torch-home").rglob("*.pt"))


def load(manifest_url: str, seed: int = 0):
    return torch.hub.load(
        str(ROOT), "resnet20", source="local", dataset="demo", seed=seed, release=manifest_url
    )


def test_every_load_verifies_the_cached_weights_not_only_the_download(released, tmp_path):
    """A cached copy changed after its download (a flipped bit, another run's weights put in its place) is
    refused on the next load, and removed, instead of loading silently."""
    folder, manifest_url = released
    load(manifest_url)
    (cached,) = (tmp_path / "torch-home").rglob(f"{NAME}-*.pt")
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0x40
    cached.write_bytes(bytes(data))
    with pytest.raises(
        StudyError, match="does not match the sha256 its manifest records: the download or the"
    ):
        load(manifest_url)
    assert not cached.exists()
    assert load(manifest_url).provenance["seed"] == 0  # downloaded again, whole


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps(change(manifest)))


def test_weights_of_another_run_than_the_manifest_names_are_refused(released):
    folder, manifest_url = released
    edit_manifest(folder, lambda m: {"models": {NAME.replace("seed0", "seed1"): m["models"][NAME]}})
    with pytest.raises(
        StudyError, match=f"holds the model {NAME}, not demo-paper-resnet20-seed1 as its manifest"
    ):
        load(manifest_url, seed=1)


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        (lambda m: list(m["models"]), r"is not a release manifest: it has no mapping of models"),
        (lambda m: {"models": {NAME: {"name": NAME}}}, r"lacks its weights file or their full sha256"),
        (
            lambda m: {"models": {NAME: {**m["models"][NAME], "sha256": {}}}},
            r"lacks its weights file or their",
        ),
        (
            lambda m: {"models": {NAME: {**m["models"][NAME], "sha256": {"weights": "0" * 12}}}},
            r"lacks its weights file or their full sha256",
        ),
        (
            lambda m: {"models": {NAME: {**m["models"][NAME], "sha256": {"weights": "0" * 64}}}},
            r"does not match the sha256 its manifest records",
        ),
        (
            lambda m: {"models": {NAME: {**m["models"][NAME], "files": {"weights": "missing.pt"}}}},
            r"Cannot download http://127.0.0.1:\d+/v1/missing.pt \(HTTP Error 404",
        ),
    ],
)
def test_a_malformed_manifest_is_one_sentence_and_nothing_is_loaded(released, change, sentence):
    folder, manifest_url = released
    edit_manifest(folder, change)
    with pytest.raises(StudyError, match=sentence):
        load(manifest_url)


def test_a_model_the_release_lacks_is_named_with_what_it_has(released):
    _, manifest_url = released
    with pytest.raises(StudyError, match=f"no model demo-paper-resnet32-seed0; it has: {NAME}"):
        torch.hub.load(str(ROOT), "resnet32", source="local", dataset="demo", release=manifest_url)


def test_the_release_folder_must_be_new(finished_run, tmp_path):  # noqa: F811
    (tmp_path / "v1").mkdir()
    with pytest.raises(StudyError, match="v1 exists"):
        release_runs([finished_run], tmp_path / "v1")


def test_the_same_runs_give_the_same_bytes(finished_run, tmp_path):  # noqa: F811
    """A release is reproducible: nothing in its files depends on when, where or under which temporary
    name it was built, so the same runs give the same sha256 values."""
    release_runs([finished_run], tmp_path / "a")
    release_runs([finished_run], tmp_path / "b")
    files = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert files == sorted(path.name for path in (tmp_path / "b").iterdir())
    assert all((tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes() for name in files)


@pytest.mark.parametrize(
    ("damage", "sentence"),
    [
        ("model.pt", r"seed0 has no model.pt: name the folders of finished runs"),
        ("eval.json", r"seed0 has no eval.json: name the folders of finished runs"),
        ("folder", r"seed0 is not a folder: name the folders of finished runs"),
    ],
)
def test_a_folder_that_is_not_a_finished_run_is_named_and_nothing_is_left(
    finished_run,  # noqa: F811
    tmp_path,
    damage,
    sentence,
):
    import shutil

    run_dir = tmp_path / "runs" / "paper" / "resnet20" / "seed0"
    shutil.copytree(finished_run, run_dir)
    if damage == "folder":
        shutil.rmtree(run_dir)
    else:
        (run_dir / damage).unlink()
    with pytest.raises(StudyError, match=sentence):
        release_runs([finished_run, run_dir], tmp_path / "v1")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]


def test_a_release_that_fails_while_building_leaves_nothing(finished_run, tmp_path, monkeypatch):  # noqa: F811
    from cifar_resnet import release

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(release, "write_json", full_disk)
    with pytest.raises(OSError):
        release_runs([finished_run], tmp_path / "v1")
    assert list(tmp_path.iterdir()) == []


def test_the_command_releases_the_runs_named(finished_run, tmp_path):  # noqa: F811
    out = tmp_path / "release"
    command = [sys.executable, "-m", "cifar_resnet.cli", "release", str(out), str(finished_run)]
    printed = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert f"released 1 model(s) in {out}" in printed
    assert sorted(path.suffix for path in out.iterdir()) == ["", ".json", ".md", ".pt"]
