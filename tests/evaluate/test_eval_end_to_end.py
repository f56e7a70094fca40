"""``lbgat eval`` end to end: AutoAttack kill-and-resume against the official code, transfer,
sharding under torchrun, the consistency check, protocol presets and checkpoint interop."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lbgat
from helpers.paths import FIXTURES
from lbgat.checkpoints.checkpoint import read_tensors_file
from lbgat.cli import main
from lbgat.data import load_dataset
from lbgat.evaluate import suite as suite_module
from lbgat.evaluate.runner import EvalRequest, plan

EPS = "0.1"
QUIET = ["--no-progress", "--check-n", "0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny-cnn trained briefly on the embedded mnist-5k: some examples robust, some not."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", "--method", "natural", "--model", "tiny-cnn", "--batch-size", "64", "--no-progress",
                 "--max-steps", "60", "--out", str(run), "--set", "data.val_size=0"]) == 0
    return run / "last.pt"


def lbgat_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lbgat", *args]


def quiet_environment() -> dict[str, str]:
    return dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def report_of(folder: Path) -> tuple[dict, dict]:
    report = json.loads((folder / "report.json").read_text())
    per_sample = json.loads((folder / "per_sample.json").read_text())
    return report, per_sample


def row(report: dict, attack: str) -> dict:
    return next(result for result in report["results"] if result["attack"] == attack)


def official_cascade(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: list[str], eps: float,
                     batch_size: int) -> tuple[torch.Tensor, list[str]]:
    """Robust flags of a direct call of the packaged official code, and the cascade it logs."""
    from pyautoattack import AutoAttack

    messages: list[str] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("auto-attack")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        adversary = AutoAttack(model, attacks=attacks, device="cpu", eps=eps, seed=0, version="custom")
        _, predicted = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    after = [re.sub(r" \(total time.*", "", message) for message in messages
             if message.startswith("robust accuracy after")]
    return (predicted == y), after


def test_killed_autoattack_run_resumes_and_equals_the_official_code(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    attacks = ["apgd-ce", "apgd-t", "apgd-dlr"]
    command = lbgat_command("eval", str(checkpoint), "--attacks", "clean,pgd20,aa", "--aa-version", "custom",
                            "--aa-attacks", ",".join(attacks), "--eps", EPS, "--n", "32", "--batch-size", "16",
                            "--out", str(out), *QUIET)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=quiet_environment())
    state = out / "aa_state.pt"
    deadline = time.monotonic() + 300
    finished_attacks = 0
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists():
            finished_attacks = len(json.loads(read_tensors_file(state)["cascade"]))
            if finished_attacks >= 1:
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr.read() if process.stderr else ""
    assert 1 <= finished_attacks < len(attacks)
    assert not (out / "report.json").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, env=quiet_environment(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    report, per_sample = report_of(out)
    aa = row(report, "aa")
    assert aa["autoattack"]["resumed_after"] == attacks[:finished_attacks]
    assert [step["attack"] for step in aa["cascade"]] == attacks
    assert all(check["ok"] for check in report["consistency"]), report["consistency"]

    model = lbgat.load_model(checkpoint)
    test = load_dataset("mnist-5k").test
    x, y = test.images[:32].float() / 255, test.labels[:32]
    flags, cascade = official_cascade(model, x, y, attacks, float(EPS), batch_size=16)
    assert per_sample["correct"]["aa"] == flags.int().tolist()
    assert [f"robust accuracy after {step['attack'].upper()}: {step['robust'] / 32:.2%}"
            for step in aa["cascade"]] == cascade
    assert 0 < aa["correct"] < row(report, "clean")["correct"]


def test_transfer_from_the_model_itself_equals_white_box_pgd20(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["eval", str(checkpoint), "--attacks", "clean,pgd20", "--transfer-from", str(checkpoint),
                 "--eps", EPS, "--n", "64", "--batch-size", "16", "--out", str(out), *QUIET]) == 0
    report, per_sample = report_of(out)
    assert [result["attack"] for result in report["results"]] == ["clean", "pgd20", "transfer-pgd20"]
    assert per_sample["correct"]["transfer-pgd20"] == per_sample["correct"]["pgd20"]
    assert row(report, "transfer-pgd20")["accuracy"] == row(report, "pgd20")["accuracy"] < 1
    assert report["transfer"]["source"] == str(checkpoint)
    assert "transfer-pgd20" in (out / "report.md").read_text()


def test_two_process_torchrun_equals_one_process(checkpoint: Path, tmp_path: Path) -> None:
    arguments = ["eval", str(checkpoint), "--attacks", "clean,fgsm,pgd10,cw10,transfer-pgd10,aa",
                 "--transfer-from", str(checkpoint), "--aa-version", "custom", "--aa-attacks", "apgd-ce",
                 "--eps", EPS, "--num-examples", "40", "--batch-size", "16", *QUIET]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main([*arguments, "--out", str(single)]) == 0
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lbgat",
         *arguments, "--out", str(sharded)], capture_output=True, text=True, env=quiet_environment(), timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]

    one, one_flags = report_of(single)
    two, two_flags = report_of(sharded)
    assert two_flags["indices"] == one_flags["indices"] == list(range(40))
    for attack in ("clean", "fgsm", "pgd10", "cw10", "transfer-pgd10"):
        assert two_flags["correct"][attack] == one_flags["correct"][attack], attack
        assert row(two, attack)["correct"] == row(one, attack)["correct"]
    aa = row(two, "aa")
    assert aa["total"] == 40 and len(two_flags["correct"]["aa"]) == 40
    assert aa["correct"] == sum(two_flags["correct"]["aa"])
    assert "sharded over 2 processes" in aa["autoattack"]["how"]
    assert two["protocol"]["processes"] == 2 and one["protocol"]["processes"] == 1
    assert all(check["ok"] for check in two["consistency"])
    # each rank kept its own resumable AutoAttack state
    assert sorted(path.name for path in sharded.glob("aa_state*")) == [
        "aa_state.rank0-of-2.pt", "aa_state.rank1-of-2.pt"]


def test_every_eval_flag_passes_through_torchrun_unabbreviated() -> None:
    """torchrun's parser sees the script's arguments too and expands abbreviations of its own flags."""
    from torch.distributed.run import get_args_parser

    from lbgat.cli import build_parser

    torchrun_flags = [flag for action in get_args_parser()._actions for flag in action.option_strings]
    commands = next(action for action in build_parser()._actions if hasattr(action, "choices") and action.choices)
    eval_flags = [flag for action in commands.choices["eval"]._actions for flag in action.option_strings]
    clashing = {flag for flag in eval_flags if any(theirs.startswith(flag) for theirs in torchrun_flags)}
    assert clashing == {"-h", "--help", "--n"}  # --n has the long form --num-examples


def test_adversarial_inputs_outside_the_threat_model_make_the_report_an_error(checkpoint: Path, tmp_path: Path,
                                                                              monkeypatch, capsys) -> None:
    real = suite_module.adversarial_examples

    def too_far(model, batch, spec, source=None):
        x_adv = real(model, batch, spec, source)
        return x_adv if spec.kind == "clean" else (x_adv + 2 * spec.eps).clamp(0, 1)

    monkeypatch.setattr(suite_module, "adversarial_examples", too_far)
    out = tmp_path / "eval"
    assert main(["eval", str(checkpoint), "--attacks", "clean,pgd5", "--eps", EPS, "--n", "16", "--out", str(out),
                 *QUIET]) == 3
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "INCONSISTENT" in error and "beyond eps 0.1" in error
    report, _ = report_of(out)
    assert [check["ok"] for check in report["consistency"]] == [True, False]


def test_protocol_presets_and_explicit_flags() -> None:
    dataset = load_dataset("mnist-5k")
    robustbench = plan(EvalRequest(Path("x.pt"), protocol="robustbench"), dataset)
    assert robustbench.eps == 8 / 255 and robustbench.count == len(dataset.test)  # fewer than 10,000 here
    assert [spec.name for spec in robustbench.attacks] == ["clean", "aa"] and robustbench.aa.version == "standard"
    paper = plan(EvalRequest(Path("x.pt"), protocol="lbgat"), dataset)
    assert (paper.eps, paper.step_size, paper.count) == (0.031, 0.003, len(dataset.test))
    assert [spec.name for spec in paper.attacks] == ["clean", "pgd20", "cw20", "aa"]
    assert paper.attacks[1].step_size == 0.003 and paper.attacks[2].kappa == 50.0
    overridden = plan(EvalRequest(Path("x.pt"), protocol="robustbench", eps=0.02, n=100), dataset)
    assert (overridden.eps, overridden.count, overridden.aa.eps) == (0.02, 100, 0.02)
    l2 = plan(EvalRequest(Path("x.pt"), norm="L2", attacks="pgd20,aa"), dataset)
    assert (l2.eps, l2.step_size, l2.aa.norm, l2.attacks[0].norm) == (0.5, 0.1, "L2", "L2")


def test_plain_state_dict_with_dataparallel_prefix_evaluates_like_the_checkpoint(checkpoint: Path,
                                                                                tmp_path: Path) -> None:
    model = lbgat.load_model(checkpoint)
    plain = tmp_path / "official.pt"
    torch.save({"state_dict": {f"module.{key}": value for key, value in model.state_dict().items()}}, plain)
    common = ["--attacks", "clean,pgd10", "--eps", EPS, "--n", "32", *QUIET]
    assert main(["eval", str(checkpoint), *common, "--out", str(tmp_path / "ours")]) == 0
    assert main(["eval", str(plain), "--model", "tiny-cnn", "--dataset", "mnist-5k", *common,
                 "--out", str(tmp_path / "theirs")]) == 0
    ours, ours_flags = report_of(tmp_path / "ours")
    theirs, theirs_flags = report_of(tmp_path / "theirs")
    assert theirs_flags["correct"] == ours_flags["correct"]
    assert theirs["checkpoint"]["format"] != ours["checkpoint"]["format"]


@pytest.mark.parametrize(("extra", "message"), [
    ([], "plain state dict: say which architecture it is with --model"),
    (["--model", "small-cnn", "--dataset", "mnist-5k"], "missing"),
])
def test_plain_state_dict_errors_are_one_line(checkpoint: Path, tmp_path: Path, capsys, extra, message) -> None:
    plain = tmp_path / "weights.pt"
    torch.save(lbgat.load_model(checkpoint).state_dict(), plain)
    assert main(["eval", str(plain), "--attacks", "clean", "--n", "8", "--out", str(tmp_path / "eval"), *QUIET,
                 *extra]) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error and str(plain) in error, error
    assert not (tmp_path / "eval" / "report.json").exists()


def official_wrn34_10_state(num_classes: int) -> dict[str, torch.Tensor]:
    """Random tensors in the key layout and shapes of the official LBGAT/TRADES WideResNet-34-10,
    saved as DataParallel saves it (every key prefixed with ``module.``)."""
    shapes = json.loads((FIXTURES / "wrn34_10_official_keys.json").read_text())
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if key.startswith("fc."):
            shape = [num_classes, *shape[1:]]
        if key.endswith("num_batches_tracked"):
            state[f"module.{key}"] = torch.tensor(7)
        else:
            state[f"module.{key}"] = torch.rand(shape, generator=generator)
    return state


def test_official_wideresnet_state_dict_loads_strictly(tmp_path: Path) -> None:
    from lbgat.checkpoints.checkpoint import CheckpointError
    from lbgat.checkpoints.loading import load_for_eval

    state = official_wrn34_10_state(100)
    path = tmp_path / "model_cifar_wrn.pt"
    torch.save(state, path)
    loaded = load_for_eval(path, arch="wrn-34-10", num_classes=100)
    ours = loaded.model.state_dict()
    assert len(ours) == len(state)
    assert all(torch.equal(ours[key.removeprefix("module.")], value) for key, value in state.items())
    assert not loaded.model.training and loaded.spec.num_classes == 100

    with pytest.raises(CheckpointError, match=r"fc.weight is 100x640 in the file, 10x640 in the model; "
                                              r"fc.bias is 100 in the file, 10 in the model \(wrong --num-classes"):
        load_for_eval(path, arch="wrn-34-10", num_classes=10)
