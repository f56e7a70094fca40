"""``lbgat export``: safetensors in the official key layout plus a model card; ``lbgat eval``
and ``lbgat.load_model`` read the folder back; bad input is refused in one line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import lbgat
from helpers.cli_runs import run_cli
from helpers.data_fixtures import cifar10_mini_root
from lbgat.checkpoints.checkpoint import sha256_of
from lbgat.checkpoints.export_folder import REQUIRED_KEYS
from lbgat.cli import main
from lbgat.config import build_config, load_yaml
from lbgat.errors import CheckpointError

TINY_RUN = ["train", "--method", "trades", "--model", "tiny-cnn", "--batch-size", "8", "--no-progress",
            "--set", "data.val_size=0", "--set", "attack.steps=2"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TRADES run of one step of tiny-cnn on the embedded mnist-5k."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    assert main([*TINY_RUN, "--max-steps", "1", "--out", str(run)]) == 0
    return run


# --- an official-layout WideResNet, restated from the module names of TRADES/LBGAT models/wideresnet.py -------


class _OfficialBlock(nn.Module):
    """BasicBlock with the official attribute names; the shortcut sees the pre-activated input when widths differ."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(in_planes), nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(out_planes), nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_widths = in_planes == out_planes
        self.convShortcut = None if self.equal_widths else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        return (x if self.convShortcut is None else self.convShortcut(activated)) + out


class _OfficialStage(nn.Module):
    def __init__(self, count: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(_OfficialBlock(in_planes if i == 0 else out_planes, out_planes,
                                                    stride if i == 0 else 1) for i in range(count)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class OfficialWideResNet(nn.Module):
    """conv1, block1, sub_block1 (built, never run), block2, block3, bn1, relu, fc; 8×8 average pool."""

    def __init__(self, depth: int, num_classes: int, widen_factor: int, sub_block1: bool = True) -> None:
        super().__init__()
        count = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = _OfficialStage(count, widths[0], widths[1], 1)
        if sub_block1:
            self.sub_block1 = _OfficialStage(count, widths[0], widths[1], 1)
        self.block2 = _OfficialStage(count, widths[1], widths[2], 2)
        self.block3 = _OfficialStage(count, widths[2], widths[3], 2)
        self.bn1, self.relu = nn.BatchNorm2d(widths[3]), nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes)
        self.channels = widths[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(self.relu(self.bn1(out)), 8)
        return self.fc(out.view(-1, self.channels))


# --- tests ----------------------------------------------------------------------------------------------------


def test_export_loads_back_with_identical_outputs_and_records_its_source(tiny_run: Path, tmp_path: Path) -> None:
    """Export -> lbgat.load_model(DIR) computes what the checkpoint computes; the header says
    what the model is; config.yaml is a usable recipe; the card says "not evaluated" and how to evaluate."""
    out = tmp_path / "export"
    assert main(["export", str(tiny_run / "last.pt"), "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["README.md", "config.yaml", "model.safetensors"]

    exported, original = lbgat.load_model(out), lbgat.load_model(tiny_run / "last.pt")
    assert not exported.training
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(exported(x), original(x))

    with safe_open(str(out / "model.safetensors"), framework="pt") as file:
        metadata = file.metadata()
    assert set(REQUIRED_KEYS) <= set(metadata)
    assert (metadata["arch"], metadata["num_classes"], json.loads(metadata["input_shape"])) == ("tiny-cnn", "10",
                                                                                              [1, 28, 28])
    assert metadata["normalization"] == "none" and metadata["key_layout"] == "lbgat"
    assert metadata["checkpoint_sha256"] == sha256_of(tiny_run / "last.pt")
    assert metadata["lbgat_version"] == lbgat.__version__

    recipe = build_config(load_yaml(out / "config.yaml"))
    assert (recipe.method.name, recipe.method.params["alpha"], recipe.model) == ("trades", 6.0, "tiny-cnn")
    card = (out / "README.md").read_text()
    for expected in ("# tiny-cnn trained with trades on mnist-5k", "alpha=6", "Not evaluated", f"lbgat eval {out.name}",
                     metadata["checkpoint_sha256"], "lbgat.load_model", "no official code defines"):
        assert expected in card, expected


@pytest.mark.parametrize("arch", ["wrn-10-1", "wrn-16-2"])
def test_a_wideresnet_export_loads_strictly_into_the_official_class(arch: str, tmp_path: Path) -> None:
    """The TRADES/LBGAT (and RobustBench sub_block1=True) WideResNet loads model.safetensors with
    strict=True and computes the same logits; wrn-10-1, built without sub_block1, gets one in the file."""
    run, out = tmp_path / "run", tmp_path / "export"
    assert main(["train", "--method", "natural", "--model", arch, "--dataset", "cifar10", "--data-root",
                 str(cifar10_mini_root()), "--batch-size", "8", "--max-steps", "1", "--no-progress",
                 "--set", "data.val_size=0", "--out", str(run)]) == 0
    assert main(["export", str(run), "--out", str(out)]) == 0  # a run folder means its last.pt

    depth, width = (int(part) for part in arch.split("-")[1:])
    official = OfficialWideResNet(depth, num_classes=10, widen_factor=width)
    official.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    official.eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(official(x), lbgat.load_model(out)(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(lbgat.load_model(out)(x), lbgat.load_model(run / "last.pt")(x), rtol=0, atol=0)
    card = (out / "README.md").read_text()
    assert f"WideResNet(depth={depth}, num_classes=10, widen_factor={width}, sub_block1=True)" in card
    assert ("copy of block1" in card) == (arch == "wrn-10-1")


def test_eval_reads_an_export_end_to_end(tiny_run: Path, tmp_path: Path) -> None:
    """`lbgat eval EXPORT_DIR` through the real command line; the report names the export's
    weights and the checkpoint they came from."""
    out = tmp_path / "export"
    assert main(["export", str(tiny_run / "last.pt"), "--out", str(out)]) == 0
    evaluated = run_cli("eval", str(out), "--attacks", "clean,pgd20", "--n", "16", "--check-n", "0",
                        "--no-progress")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((tmp_path / "eval-export" / "report.json").read_text())
    checkpoint = report["checkpoint"]
    assert checkpoint["format"] == "lbgat export" and checkpoint["arch"] == "tiny-cnn"
    assert checkpoint["sha256"] == sha256_of(out / "model.safetensors")
    assert checkpoint["exported_from"] == {"sha256": sha256_of(tiny_run / "last.pt"), "name": "last.pt"}
    assert [row["attack"] for row in report["results"]] == ["clean", "pgd20"]
    assert report["protocol"]["dataset"] == "mnist-5k"


def test_the_card_shows_the_evaluation_of_this_checkpoint_and_not_a_stale_one(tmp_path: Path, capsys) -> None:
    """An `lbgat eval` report beside the checkpoint goes into the card when it evaluated these
    exact bytes (sha256); after the run went on, that report is named as stale and left out."""
    run = tmp_path / "run"
    assert main([*TINY_RUN, "--max-steps", "1", "--out", str(run)]) == 0
    assert main(["eval", str(run / "last.pt"), "--attacks", "clean,fgsm", "--n", "16", "--check-n", "0",
                 "--no-progress"]) == 0
    report = json.loads((run / "eval-last" / "report.json").read_text())
    assert main(["export", str(run / "last.pt"), "--out", str(tmp_path / "first")]) == 0
    card = (tmp_path / "first" / "README.md").read_text()
    clean = report["results"][0]
    assert "### eval-last" in card and "Not evaluated" not in card
    assert f"| clean | {100 * clean['correct'] / 16:.2f}% | {clean['correct']} / 16 |" in card
    assert "| fgsm |" in card and "eps = 0.3" in card
    capsys.readouterr()

    assert main([*TINY_RUN, "--max-steps", "2", "--out", str(run), "--resume"]) == 0
    assert main(["export", str(run / "last.pt"), "--out", str(tmp_path / "second")]) == 0
    assert "eval-last/report.json evaluated an earlier last.pt" in capsys.readouterr().out
    assert "Not evaluated" in (tmp_path / "second" / "README.md").read_text()


def test_a_refused_export_is_one_line_with_a_non_zero_exit_and_writes_nothing(tiny_run: Path, tmp_path: Path,
                                                                            capsys) -> None:
    """A non-empty --out, a missing, unreadable or non-lbgat input, an --out that is a file or
    cannot be written: one line, exit != 0, every file as it was and nothing added."""
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_bytes(b"mine")
    refused = run_cli("export", str(tiny_run / "last.pt"), "--out", str(occupied))  # the real process and exit code
    assert refused.returncode != 0 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "exists and is not empty" in refused.stderr, refused.stderr

    text_file = tmp_path / "notes.md"
    text_file.write_text("not a checkpoint\n")
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    bare = tmp_path / "bare"
    bare.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_bytes(b"x")
    unwritable = tmp_path / "notes.md" / "below"
    last = str(tiny_run / "last.pt")
    cases = [
        ([last, "--out", str(occupied)], "exists and is not empty"),
        ([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "new1")], "does not exist"),
        ([str(text_file), "--out", str(tmp_path / "new2")], "damaged or not a PyTorch file"),
        ([str(plain), "--out", str(tmp_path / "new3")], "is not an lbgat checkpoint"),
        ([str(bare), "--out", str(tmp_path / "new4")], "a folder without last.pt"),
        ([last, "--out", str(a_file)], "exists and is not a folder"),
        ([last, "--out", str(unwritable)], "cannot write to the export folder"),
    ]
    before = snapshot(tmp_path)
    run_before = snapshot(tiny_run)
    capsys.readouterr()
    for arguments, message in cases:
        assert main(["export", *arguments]) != 0, arguments
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured.err
        assert captured.err.startswith("lbgat export: error: ")
    assert snapshot(tmp_path) == before and snapshot(tiny_run) == run_before
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["occupied", "notes.md", "plain.pt", "bare", "a_file"])


def test_reading_an_export_back_is_strict_and_refuses_what_is_not_one(tiny_run: Path, tmp_path: Path) -> None:
    """A folder that is not an export, a damaged or foreign safetensors file and an extra key
    are each refused in one line (CheckpointError), by load_model and by `lbgat eval`."""
    out = tmp_path / "export"
    assert main(["export", str(tiny_run / "last.pt"), "--out", str(out)]) == 0
    weights = out / "model.safetensors"
    with safe_open(str(weights), framework="pt") as file:
        metadata = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}

    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file, and not an lbgat export.*pt"):
        lbgat.load_model(tiny_run)

    extra = tmp_path / "extra"
    extra.mkdir()
    save_file({**tensors, "features.conv9.weight": torch.zeros(1)}, str(extra / "model.safetensors"), metadata)
    with pytest.raises(CheckpointError, match="unexpected keys: features.conv9.weight"):
        lbgat.load_model(extra)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    save_file(tensors, str(foreign / "model.safetensors"), {"format": "pt"})
    with pytest.raises(CheckpointError, match="not an lbgat export: its metadata has no 'lbgat_export'"):
        lbgat.load_model(foreign)

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "model.safetensors").write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="damaged or not a safetensors file") as error:
        lbgat.load_model(damaged)
    assert "\n" not in str(error.value)

    refused = run_cli("eval", str(tiny_run), "--n", "4", "--no-progress")
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1, refused.stderr
    assert "not an lbgat export" in refused.stderr


def test_a_normalising_model_keeps_its_normalisation_in_the_header_and_the_card(tiny_run: Path,
                                                                               tmp_path: Path) -> None:
    """The mean/std that lbgat applies inside the model is not in the weights: the header
    records it, load_model puts it back, and the card tells users of other code to apply it themselves."""
    from lbgat.checkpoints.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(tiny_run / "last.pt")
    meta = {**checkpoint.meta, "student": {**checkpoint.meta["student"], "mean": [0.1307], "std": [0.3081]}}
    normalising = tmp_path / "normalising.pt"
    save_checkpoint(normalising, meta, checkpoint.state, checkpoint.optimizer)
    out = tmp_path / "export"
    assert main(["export", str(normalising), "--out", str(out)]) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as file:
        assert json.loads(file.metadata()["normalization"]) == {"mean": [0.1307], "std": [0.3081]}
        assert not any(key.startswith("normalize") for key in file.keys())
    exported = lbgat.load_model(out)
    assert exported.normalize.mean == (0.1307,) and exported.normalize.std == (0.3081,)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(exported(x), lbgat.load_model(normalising)(x))
    assert "must normalise its inputs first" in (out / "README.md").read_text()


@pytest.mark.parametrize("arch, shape, layout", [
    ("tiny-cnn", (1, 28), "lbgat"), ("small-cnn", (1, 28), "trades-small-cnn"),
    ("wrn-10-1", (3, 32), "trades-lbgat-wideresnet"), ("wrn-16-2", (3, 32), "trades-lbgat-wideresnet"),
    ("resnet18", (3, 32), "kuangliu-resnet18"), ("resnet18-lbgat", (3, 32), "lbgat-resnet18-cifar"),
    ("preact-resnet18", (3, 32), "rice-preact-resnet18"),
])
def test_each_key_layout_round_trips_and_names_a_class_only_where_one_exists(arch: str, shape: tuple[int, int],
                                                                             layout: str) -> None:
    """To_official then from_official gives the state dict back, tensor for tensor; only
    wrn-10-1 gains keys (its sub_block1); an input the official classes cannot take is said to be a limitation."""
    from lbgat.models import create_model
    from lbgat.models.official import key_layout

    channels, size = shape
    model = create_model(arch, num_classes=10, in_channels=channels, image_size=size)
    found = key_layout(model, arch, 10, channels, size)
    assert found.name == layout and bool(found.classes) == (layout != "lbgat") and found.limitation is None
    state = model.state_dict()
    official = found.to_official(state)
    added = sorted(set(official) - set(state))
    assert (added != []) == (arch == "wrn-10-1") and all(key.startswith("sub_block1.") for key in added)
    back = found.from_official(official)
    assert back.keys() == state.keys() and all(torch.equal(back[key], state[key]) for key in state)
    if layout == "trades-lbgat-wideresnet":
        other = create_model(arch, num_classes=10, in_channels=1, image_size=28)
        assert "3×32×32 inputs" in (key_layout(other, arch, 10, 1, 28).limitation or "")


@pytest.mark.parametrize("out_exists", [False, True])
def test_a_failed_write_takes_back_what_the_export_wrote(tiny_run: Path, tmp_path: Path, monkeypatch, capsys,
                                                         out_exists: bool) -> None:
    """A full disk at the second file: one line, and the export leaves nothing behind (its first
    file removed; --out removed too when the export created it, kept empty when it was there)."""
    import errno

    import lbgat.export.writer as writer

    real_write = writer.write_bytes_atomic
    written: list[Path] = []

    def write_until_the_disk_is_full(path: Path, data: bytes) -> None:
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)
        written.append(path)

    monkeypatch.setattr(writer, "write_bytes_atomic", write_until_the_disk_is_full)
    out = tmp_path / "export"
    if out_exists:
        out.mkdir()
    assert main(["export", str(tiny_run / "last.pt"), "--out", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert written and not written[0].exists()
    assert (out.is_dir() and not any(out.iterdir())) if out_exists else not out.exists()


def test_the_card_names_the_plugins_of_a_real_run(tmp_path: Path) -> None:
    """With plug-ins, the card lists each plug-in with its settings, RPAT's lambda on
    both scales."""
    run = tmp_path / "run"
    assert main(["train", "--method", "pgd-at", "--plugin", "rpat", "--plugin", "awp", "--dataset", "mnist-5k",
                 "--model", "tiny-cnn", "--max-steps", "1", "--no-progress", "--set", "data.val_size=0",
                 "--out", str(run)]) == 0
    assert main(["export", str(run / "last.pt"), "--out", str(tmp_path / "export")]) == 0
    card = (tmp_path / "export" / "README.md").read_text()
    assert "rpat(lam=1.0 on the official code's scale = 0.0625 on the paper's" in card
    assert card.index("rpat(") < card.index("awp(gamma=0.01")


def test_the_card_names_the_augmentation_a_run_trained_with() -> None:
    """IDBH by its version; crop and flip as before, also for runs from before data.augment."""
    from lbgat.export.card import _augmentation
    assert _augmentation({"augment": "idbh-strong", "crop_padding": 0, "flip": False}) == (
        "IDBH (idbh-strong; Li & Spratling 2023)")
    assert _augmentation({"crop_padding": 4, "flip": True}) == "random crop with padding 4, horizontal flip on"


def test_the_card_names_the_schedule_a_run_trained_with() -> None:
    """A onecycle run's cycle and cycled momentum; a step run's decays as before, also for runs from before
    schedule.kind."""
    from lbgat.export.card import _schedule
    optim = {"lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}
    onecycle = {"kind": "onecycle", "epochs": 400, "pct_start": 0.025, "cycle_momentum": True}
    assert _schedule({"optim": optim, "schedule": onecycle}) == (
        "SGD lr 0.2, momentum cycled 0.95 → 0.85 → 0.95 against the lr, weight decay 0.0005, Nesterov; OneCycleLR "
        "stepped once an epoch: a cosine from lr/25 up to lr over a share 0.025 of the epochs, then down to lr/25/1e4")
    step = {"epochs": 100, "decay_epochs": [75, 90], "decay_factor": 0.1, "warmup": True, "warmup_factor": 0.2}
    assert _schedule({"optim": optim, "schedule": step}) == (
        "SGD lr 0.2, momentum 0.9, weight decay 0.0005, Nesterov; lr × 0.1 after epochs 75, 90; epoch 1 at 0.2 × lr "
        "(warm-up)")
