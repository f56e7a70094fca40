"""End to end through the real command line: train on a cifar10-mini slice, resume, evaluate; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lbgat
from helpers.cli_runs import assert_same_training_state, run_cli
from helpers.data_fixtures import cifar10_mini_root
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.cli import main

SMALL = ["--model", "wrn-10-1", "--teacher", "wrn-10-1", "--batch-size", "16", "--no-progress"]


def test_train_resume_eval_on_cifar10_mini(tmp_path: Path) -> None:
    mini = str(cifar10_mini_root())
    common = ["train", "--method", "lbgat-trades", "--dataset", "cifar10", "--data-root", mini, *SMALL,
              "--set", "data.val_size=32"]
    split_run, straight_run = tmp_path / "split", tmp_path / "straight"

    first = run_cli(*common, "--max-steps", "2", "--out", str(split_run))
    assert first.returncode == 0, first.stderr
    assert "stopped after step 2" in first.stdout
    resumed = run_cli(*common, "--max-steps", "4", "--out", str(split_run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert main([*common, "--max-steps", "4", "--out", str(straight_run)]) == 0
    assert_same_training_state(split_run / "last.pt", straight_run / "last.pt")

    for name in ("config.yaml", "provenance.json", "split.json", "metrics.jsonl"):
        assert (split_run / name).is_file(), name
    events = [json.loads(line)["event"] for line in (split_run / "metrics.jsonl").read_text().splitlines()]
    assert events == ["started", "stopped", "resumed", "stopped"]

    report_dir = tmp_path / "report"
    evaluated = run_cli("eval", str(split_run / "last.pt"), "--attacks", "clean,fgsm,pgd20,cw20", "--n", "32",
                        "--out", str(report_dir), "--no-progress")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((report_dir / "report.json").read_text())
    assert [row["attack"] for row in report["results"]] == ["clean", "fgsm", "pgd20", "cw20"]
    for row in report["results"]:
        assert row["total"] == 32 and 0 <= row["correct"] <= 32
        assert row["accuracy"] == pytest.approx(row["correct"] / 32)
    pgd20 = report["results"][2]
    assert (pgd20["eps"], pgd20["steps"], pgd20["step_size"], pgd20["random_start"]) == (0.031, 20, 0.003, True)
    assert report["results"][3]["kappa"] == 50.0
    protocol = report["protocol"]
    assert (protocol["dataset"], protocol["split"], protocol["n"], protocol["seed"], protocol["bn_mode"]) == (
        "cifar10", "test", 32, 0, "eval")
    assert len(report["checkpoint"]["sha256"]) == 64 and report["code_version"]["lbgat"] == lbgat.__version__
    assert "| pgd20 |" in (report_dir / "report.md").read_text()

    model = lbgat.load_model(split_run / "last.pt")
    assert not model.training
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_epoch_end_validation_best_checkpoint_and_mid_epoch_resume(tmp_path: Path) -> None:
    common = ["train", "--method", "trades", "--model", "tiny-cnn", "--batch-size", "16", "--epochs", "2",
              "--no-progress", "--set", "data.train_size=48", "--set", "data.val_size=16",
              "--set", "attack.steps=2", "--set", "val.steps=3"]
    split_run, straight_run = tmp_path / "split", tmp_path / "straight"
    assert main([*common, "--out", str(split_run), "--max-steps", "4"]) == 0  # one epoch is 3 steps
    assert main([*common, "--out", str(split_run), "--resume"]) == 0
    assert main([*common, "--out", str(straight_run)]) == 0
    assert_same_training_state(split_run / "last.pt", straight_run / "last.pt")
    assert (split_run / "best.pt").is_file()
    epochs = [json.loads(line) for line in (split_run / "metrics.jsonl").read_text().splitlines()]
    epochs = [record for record in epochs if record["event"] == "epoch"]
    straight = [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]
    straight = [record for record in straight if record["event"] == "epoch"]
    assert [record["epoch"] for record in epochs] == [1, 2]
    for ours, theirs in zip(epochs, straight, strict=True):
        assert ours["train"] == theirs["train"] and ours["val"] == theirs["val"] and ours["lr"] == theirs["lr"]
    assert set(epochs[0]["val"]) == {"clean_acc", "robust_acc", "n"} and epochs[0]["val"]["n"] == 16
    best = load_checkpoint(split_run / "best.pt")
    assert best.optimizer is None and best.meta["kind"] == "best"
    split = json.loads((split_run / "split.json").read_text())
    assert split["train_size"] == 48 and len(split["held_out_indices"]) == 16
    assert not set(split["held_out_indices"]) & set(split["train_indices"])


def test_resume_refuses_changed_settings_and_a_fresh_run_refuses_an_existing_one(tmp_path: Path, capsys) -> None:
    common = ["train", "--method", "natural", "--model", "tiny-cnn", "--batch-size", "16", "--no-progress",
              "--out", str(tmp_path / "run"), "--set", "data.val_size=0"]
    assert main([*common, "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main([*common, "--max-steps", "2"]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert main([*common, "--max-steps", "2", "--resume", "--set", "optim.lr=0.5"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    before = (tmp_path / "run" / "last.pt").read_bytes()
    assert main([*common, "--max-steps", "1", "--resume"]) == 0  # already there: no further step
    assert "stopped after step 1" in capsys.readouterr().out
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


BAD_INPUT = [
    (["train", "--dataset", "cifar10", "--data-root", "/no/such/folder"], "/no/such/folder"),
    (["train", "--dataset", "cifar10"], "--data-root"),
    (["train", "--method", "fgsm-at"], "unknown method 'fgsm-at'"),
    (["train", "--model", "vgg99"], "unknown model 'vgg99'"),
    (["train", "--dataset", "svhn"], "unknown dataset 'svhn'"),
    (["train", "--set", "attack.eps=-0.01"], "attack.eps must be in [0, 1]"),
    (["train", "--set", "val.eps=-1"], "val.eps must be in [0, 1]"),
    (["train", "--epochs", "ten"], "invalid int value"),
    (["train", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["eval", "missing.pt"], "missing.pt does not exist"),
    (["eval", "missing.pt", "--eps", "-0.1"], "--eps must be in [0, 1]"),
    (["eval", "missing.pt", "--attacks", "pgd20,square"], "unknown attack 'square'"),
]


def exit_code_of(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exit_:  # argparse's own usage errors
        return int(exit_.code)


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path: Path, monkeypatch, capsys, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    assert exit_code_of([*args, "--no-progress"]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]
    assert not (tmp_path / "runs").exists()


def test_bad_input_from_a_real_process(tmp_path: Path) -> None:
    result = run_cli("train", "--dataset", "cifar10", "--data-root", "/no/such/folder", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "/no/such/folder" in result.stderr


def test_wrong_layout_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "readme.txt").write_text("not the data")
    result = run_cli("train", "--dataset", "cifar10", "--data-root", str(tmp_path), "--no-progress", cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cifar-10-batches-py" in lines[0], result.stderr


def test_eps_zero_gives_clean_accuracy(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--method", "natural", "--model", "tiny-cnn", "--batch-size", "32", "--no-progress",
                 "--max-steps", "3", "--out", str(run), "--set", "data.val_size=0"]) == 0
    assert main(["eval", str(run / "last.pt"), "--attacks", "clean,fgsm,pgd10,cw10", "--eps", "0", "--n", "50",
                 "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    results = json.loads((tmp_path / "eval" / "report.json").read_text())["results"]
    assert len({row["correct"] for row in results}) == 1


def test_training_on_tensors_passed_from_python(tmp_path: Path) -> None:
    from lbgat.config import build_config
    from lbgat.data import from_tensors
    from lbgat.train import train

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=generator)
    labels = torch.arange(40) % 4
    dataset = from_tensors(images[:32], labels[:32], images[32:], labels[32:], name="my-data")
    config = build_config(None, {"method.name": "lbgat-trades", "model": "wrn-10-1", "teacher": "wrn-10-1",
                                 "out": str(tmp_path / "run"), "batch_size": 8, "max_steps": 2},
                          ["data.val_size=8", "attack.steps=1"])
    result = train(config, dataset=dataset, progress=False)
    checkpoint = load_checkpoint(result.last)
    assert checkpoint.meta["dataset"]["name"] == "my-data" and checkpoint.meta["config"]["teacher"] == "wrn-10-1"
    assert lbgat.load_model(result.last)(torch.rand(2, 3, 16, 16)).shape == (2, 4)


def test_listings(capsys) -> None:
    assert main(["methods"]) == 0
    methods = capsys.readouterr().out
    from lbgat.methods import list_methods
    from lbgat.methods.plugin import list_plugins

    for method in [*list_methods(), *list_plugins()]:  # every method and plug-in, a description and its settings
        assert f"\n  {method.name} " in "\n" + methods
    lines = methods.splitlines()
    lbgat_trades = lines[lines.index(next(line for line in lines if line.startswith("  lbgat-trades "))) + 1]
    assert "beta=1.0" in lbgat_trades and "alpha=6.0" in lbgat_trades and "separate_bn=False" in lbgat_trades
    assert "guidance knobs: guidance='mse', mse_reduction='mean', student_ce=0.0" in methods
    # What each method takes, and what each plug-in joins and where it comes from
    natural = lines[lines.index(next(line for line in lines if line.startswith("  natural "))) + 2]
    assert natural.strip() == "plug-ins: none"
    assert "plug-ins: awp, rpat, vfd" in methods and "joins: alp, bgat" in methods
    assert "RECONSTRUCTION from the abstract" in methods and "Wu, Xia & Wang" in methods
    assert main(["models"]) == 0
    assert "resnet18-lbgat" in capsys.readouterr().out
    assert main(["recipes"]) == 0
    assert "paper/cifar10-lbgat-trades-a0" in capsys.readouterr().out
    assert main(["data", "info", "mnist-5k"]) == 0
    assert "4000 train / 1000 test" in capsys.readouterr().out
