"""Bad input that used to give a traceback or a wrong answer: each ends in one clear line and a non-zero
exit, and leaves existing files as they were.

The checks that are about a real process (what a user sees on stderr, the exit status, no traceback)
run ``python -m lbgat`` in a subprocess; the rest call the command line's ``main`` in this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from lbgat.checkpoints.checkpoint import load_checkpoint, read_tensors_file, save_checkpoint
from lbgat.cli import main
from lbgat.config import build_config, load_yaml, parse_override
from lbgat.errors import CheckpointError, ConfigError, UnsafeCheckpointError
from lbgat.recipes import find_recipe
from lbgat.train.setup import validate

TRADES = ["train", "--method", "trades", "--model", "tiny-cnn", "--batch-size", "8", "--no-progress"]
EVAL = ["--num-examples", "16", "--batch-size", "8", "--check-n", "0", "--no-progress"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "lbgat", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def one_line_refusal(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refused command (non-zero exit, no traceback)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def random_bytes(count: int, seed: int = 12) -> bytes:
    return random.Random(seed).randbytes(count)


class Exploit:
    """A pickle that would create ``marker`` if it were ever unpickled with code allowed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Opaque:
    pass


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A TRADES run with last.pt (step 2) and last.prev.pt (step 1). Tests copy it before changing it."""
    out = tmp_path_factory.mktemp("trades") / "run"
    assert main([*TRADES, "--max-steps", "2", "--checkpoint-every", "1", "--out", str(out)]) == 0
    return out


def copy_run(run: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for path in run.iterdir():
        (to / path.name).write_bytes(path.read_bytes())
    return to


def rewritten(source: Path, target: Path, *, meta=None, state=None) -> Path:
    """``source`` saved again as ``target`` with its metadata or state replaced."""
    checkpoint = load_checkpoint(source)
    save_checkpoint(target, checkpoint.meta if meta is None else meta, checkpoint.state if state is None else state,
                    checkpoint.optimizer)
    return target


# ---------------------------------------------------------------------------------------- item 4: recipes

def test_a_recipe_of_random_bytes_is_one_line(tmp_path: Path) -> None:
    """`head -c 3000 /dev/urandom > b.yaml; T --config b.yaml` gave a UnicodeDecodeError."""
    recipe = tmp_path / "b.yaml"
    recipe.write_bytes(random_bytes(3000))
    line = one_line_refusal(run_cli(*TRADES, "--max-steps", "1", "--config", str(recipe), "--out",
                                    str(tmp_path / "r")))
    assert "b.yaml is not a YAML text file" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]\n", "must hold a mapping of settings, got a list"),
    ("just words\n", "must hold a mapping of settings, got a string"),
    ("1: 2\nseed: 3\n", "has a setting named 1"),
    ("method: {params: 3}\n", "'method.params' must be a mapping, got 3"),
    ("seed: [unclosed\n", "is not valid YAML"),
    ("seed: !!python/object/apply:os.system [touch x]\n", "is not valid YAML"),
    ("optim: {lr: .inf}\n", "'optim.lr' must be a finite number, got inf"),
    ("optim: {1: 2, lr: 3}\n", "unknown setting 'optim.1'"),
])
def test_recipes_that_are_not_settings_are_one_line(tmp_path: Path, capsys, text: str, message: str) -> None:
    """A YAML file that is not a mapping of settings."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    assert main([*TRADES, "--config", str(recipe), "--out", str(tmp_path / "r")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "r").exists() and not (tmp_path / "x").exists()


def test_a_directory_or_fifo_as_the_recipe_is_one_line(tmp_path: Path, capsys) -> None:
    """--config naming a folder or a FIFO (never opened: a FIFO would block)."""
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    for name, message in (("folder", "is a directory"), ("fifo", "is not a regular file")):
        assert main([*TRADES, "--config", str(tmp_path / name), "--out", str(tmp_path / "r")]) == 2
        assert message in one_line_error(capsys)
    with pytest.raises(ConfigError, match="is a directory"):
        load_yaml(tmp_path / "folder")


@pytest.mark.parametrize(("flags", "message"), [
    (["--seed", str(2**63)], "seed must be in [0, 2**63)"),
    (["--set", f"data.split_seed={2**64}"], "data.split_seed must be in [0, 2**63)"),
])
def test_seeds_beyond_64_bits_are_one_line(tmp_path: Path, capsys, flags: list[str], message: str) -> None:
    """torch.manual_seed once raised an OverflowError traceback."""
    assert main([*TRADES, *flags, "--out", str(tmp_path / "r")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------- item 5: floats

@pytest.mark.parametrize(("typed", "value"), [
    ("1e-3", 1e-3), ("1E-3", 1e-3), ("5e2", 500.0), (".5", 0.5), ("1.", 1.0), ("+1e-3", 1e-3),
    ("-2.5e-4", -2.5e-4), ("1.0e+30", 1e30), ("1e30", 1e30), ("0.031", 0.031), ("1_000.5", 1000.5), ("2", 2.0),
])
def test_every_float_a_person_types_is_a_float(tmp_path: Path, typed: str, value: float) -> None:
    """YAML 1.1 read 1e-3 as a string, so --set optim.lr=1e-3 was "not a float"."""
    assert build_config(None, None, [f"optim.lr={typed}"]).optim.lr == value
    assert build_config(None, None, [f"method.alpha={typed}"]).method.params["alpha"] == value
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"optim:\n  lr: {typed}\nmethod: {{name: trades, alpha: {typed}}}\n")
    config = build_config(load_yaml(recipe))
    assert config.optim.lr == value and isinstance(config.optim.lr, float)
    assert config.method.params["alpha"] == value


def test_integers_stay_integers_and_strings_stay_strings() -> None:
    """The float reader must not turn integers (or words) into floats."""
    assert parse_override("attack.steps=3") == ("attack.steps", 3)
    assert parse_override("method.alpha=6") == ("method.alpha", 6)
    assert build_config(None, None, ["schedule.epochs=1_000"]).schedule.epochs == 1000
    assert build_config(None, None, ["data.root=1e3"]).data.root == "1e3"  # a path setting keeps the text
    with pytest.raises(ConfigError, match="'schedule.epochs' must be int, got 1000.0"):
        build_config(None, None, ["schedule.epochs=1e3"])


@pytest.mark.parametrize("typed", [".inf", "-.inf", ".nan", "1e400"])
def test_non_finite_floats_are_refused(typed: str) -> None:
    """Infinity and NaN mean nothing for any setting (lr, eps, alpha, ...)."""
    with pytest.raises(ConfigError, match="must be a finite number"):
        build_config(None, None, [f"optim.lr={typed}"])
    config = build_config(None, {"method.name": "trades"}, [f"method.alpha={typed}"])
    with pytest.raises(ConfigError, match="'method.alpha' must be a finite number"):
        validate(config)


def test_set_lr_in_scientific_notation_trains(tmp_path: Path) -> None:
    """End to end: `T --set optim.lr=1e-3` trains with lr 0.001."""
    result = run_cli(*TRADES, "--max-steps", "1", "--set", "optim.lr=1e-3", "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / "r" / "last.pt").meta["config"]["optim"]["lr"] == 1e-3


# ---------------------------------------------------------------------------------------- item 6: teachers

def test_a_teacher_for_a_method_without_one_is_refused(tmp_path: Path) -> None:
    """--teacher with natural was dropped silently (the run said teacher: null)."""
    line = one_line_refusal(run_cli("train", "--method", "natural", "--model", "tiny-cnn", "--teacher", "tiny-cnn",
                                    "--max-steps", "1", "--no-progress", "--out", str(tmp_path / "r")))
    assert "natural has no teacher, but teacher is set (tiny-cnn)" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("method", ["natural", "pgd-at", "trades", "alp"])
def test_teacher_settings_of_a_method_without_a_teacher_are_errors(method: str, tmp_path: Path) -> None:
    """Both the teacher architecture and teacher checkpoints."""
    with pytest.raises(ConfigError, match=f"{method} has no teacher, but teacher is set"):
        validate(build_config(None, {"method.name": method, "teacher": "tiny-cnn"}))
    with pytest.raises(ConfigError, match=f"{method} has no teacher, but teacher_checkpoints is set"):
        validate(build_config(None, {"method.name": method, "teacher_checkpoints": [str(tmp_path / "t.pt")]}))


def test_a_recipes_teacher_is_for_the_methods_that_have_one() -> None:
    """One recipe serves several methods (the demo's names a teacher for LBGAT+TRADES and
    also trains natural, PGD-AT and TRADES), so only a teacher asked for on the command line is an error."""
    recipe = load_yaml(find_recipe("cpu/mnist-5k-demo"))
    assert recipe["teacher"] == "tiny-cnn"
    for method in ("natural", "pgd-at", "trades"):
        config = build_config(recipe, {"method.name": method})
        validate(config)
        assert config.teacher is None
    assert build_config(recipe, {"method.name": "lbgat-trades"}).teacher == "tiny-cnn"
    with pytest.raises(ConfigError, match="natural has no teacher, but teacher is set"):
        validate(build_config(recipe, {"method.name": "natural", "teacher": "tiny-cnn"}))
    with pytest.raises(ConfigError, match="natural has no teacher, but teacher is set"):
        validate(build_config(recipe, {"method.name": "natural"}, ["teacher=tiny-cnn"]))


# ---------------------------------------------------------------------------------------- item 8: metadata

def test_a_checkpoint_whose_metadata_is_a_list_is_one_line_in_eval_and_resume(run: Path, tmp_path: Path) -> None:
    """Meta set to a list once gave a TypeError traceback."""
    bad = rewritten(run / "last.pt", tmp_path / "bad.pt", meta=[1, 2])
    line = one_line_refusal(run_cli("eval", str(bad), *EVAL))
    assert f"checkpoint {bad} has malformed metadata: it must be a mapping, got list" in line
    resumed = copy_run(run, tmp_path / "run")
    (resumed / "last.prev.pt").unlink()
    rewritten(run / "last.pt", resumed / "last.pt", meta=[1, 2])
    before = digest(resumed)
    line = one_line_refusal(run_cli(*TRADES, "--max-steps", "3", "--resume", "--out", str(resumed)))
    assert "malformed metadata" in line
    assert digest(resumed) == before


def without(mapping: dict, key: str) -> dict:
    return {name: value for name, value in mapping.items() if name != key}


MALFORMED = {
    # name: (how the metadata is changed, message in eval or None when eval does not need it, message in resume)
    "no position": (lambda meta: without(meta, "position"), None, "'position' must map epoch, batch and global_step"),
    "position of text": (lambda meta: {**meta, "position": {"epoch": "x", "batch": 0, "global_step": 1}}, None,
                         "'position' must map epoch, batch and global_step"),
    "config a list": (lambda meta: {**meta, "config": [1]}, "'config' must be a mapping, got list",
                      "'config' must be a mapping, got list"),
    "no student": (lambda meta: without(meta, "student"), "lacks 'student'", "lacks 'student'"),
    "student of text": (lambda meta: {**meta, "student": "tiny-cnn"}, "'student' must be a mapping",
                        "'student' must be a mapping"),
    "student without classes": (lambda meta: {**meta, "student": without(meta["student"], "num_classes")},
                                "'student' lacks 'num_classes'", "'student' lacks 'num_classes'"),
    "dataset a number": (lambda meta: {**meta, "dataset": 5}, "'dataset' must be a mapping", "'dataset' must be"),
    "epoch totals odd": (lambda meta: {**meta, "epoch_totals": {"x": 1}}, None, "'epoch_totals' must hold"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_metadata_is_one_line_in_eval_and_resume(run: Path, tmp_path: Path, capsys, case: str) -> None:
    """Metadata checked once, when read, for what eval needs and what --resume needs."""
    change, in_eval, in_resume = MALFORMED[case]
    meta = load_checkpoint(run / "last.pt").meta
    bad = rewritten(run / "last.pt", tmp_path / "bad.pt", meta=change(dict(meta)))
    status = main(["eval", str(bad), *EVAL, "--out", str(tmp_path / "eval")])
    if in_eval is None:
        assert status == 0  # evaluation does not need the training position
        capsys.readouterr()
    else:
        assert status == 2 and in_eval in one_line_error(capsys)
    resumed = copy_run(run, tmp_path / "run")
    (resumed / "last.prev.pt").unlink()
    (resumed / "last.pt").write_bytes(bad.read_bytes())
    before = digest(resumed)
    assert main([*TRADES, "--max-steps", "3", "--resume", "--out", str(resumed)]) == 2
    assert in_resume in one_line_error(capsys)
    assert digest(resumed) == before


def test_a_checkpoint_describing_a_model_that_cannot_be_built_is_one_line(run: Path, tmp_path: Path,
                                                                         capsys) -> None:
    """A student "for 1x1000000000 inputs" gave a RuntimeError traceback while building it."""
    meta = load_checkpoint(run / "last.pt").meta
    bad = rewritten(run / "last.pt", tmp_path / "huge.pt", meta={**meta, "student": {**meta["student"],
                                                                                    "image_size": 10**9}})
    assert main(["eval", str(bad), *EVAL, "--out", str(tmp_path / "eval")]) == 2
    assert "describes a tiny-cnn that cannot be built" in one_line_error(capsys)


def test_a_checkpoint_without_optimiser_state_cannot_be_resumed(run: Path, tmp_path: Path, capsys) -> None:
    """A checkpoint without optimiser state (best.pt) as last.pt."""
    resumed = copy_run(run, tmp_path / "run")
    (resumed / "last.prev.pt").unlink()
    checkpoint = load_checkpoint(run / "last.pt")
    save_checkpoint(resumed / "last.pt", checkpoint.meta, checkpoint.state)
    assert main([*TRADES, "--max-steps", "3", "--resume", "--out", str(resumed)]) == 2
    assert "holds no optimiser state, so it cannot be resumed" in one_line_error(capsys)


# ---------------------------------------------------------------------------------------- item 9: NaN weights

def with_nan_weights(run: Path, target: Path, *, value: float = float("nan")) -> Path:
    state = dict(load_checkpoint(run / "last.pt").state)
    weight = state["student.features.conv1.weight"].clone()
    weight.view(-1)[:10] = value
    state["student.features.conv1.weight"] = weight
    return rewritten(run / "last.pt", target, state=state)


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_tensor(run: Path, tmp_path: Path) -> None:
    """NaN weights were evaluated and reported with rc 0."""
    bad = with_nan_weights(run, tmp_path / "nan.pt")
    line = one_line_refusal(run_cli("eval", str(bad), *EVAL, "--out", str(tmp_path / "eval")))
    assert "student.features.conv1.weight holds 10 NaN values" in line
    assert not (tmp_path / "eval").exists()


def test_non_finite_weights_are_refused_in_every_loading_path(run: Path, tmp_path: Path, capsys) -> None:
    """Including a NaN BGAT teacher: plain state dicts, teacher checkpoints, --resume."""
    infinite = with_nan_weights(run, tmp_path / "inf.pt", value=float("inf"))
    assert main(["eval", str(infinite), *EVAL]) == 2
    assert "student.features.conv1.weight holds 10 infinite values" in one_line_error(capsys)
    plain = tmp_path / "plain.pt"
    torch.save(load_checkpoint(infinite).network_state("student"), plain)
    assert main(["eval", str(plain), "--model", "tiny-cnn", "--dataset", "mnist-5k", *EVAL]) == 2
    assert "features.conv1.weight holds 10 infinite values" in one_line_error(capsys)
    nan = with_nan_weights(run, tmp_path / "nan.pt")
    assert main(["train", "--method", "bgat", "--model", "tiny-cnn", "--teacher-checkpoint", str(nan),
                 "--max-steps", "1", "--no-progress", "--out", str(tmp_path / "bgat")]) == 2
    assert "holds 10 NaN values" in one_line_error(capsys)
    assert not (tmp_path / "bgat").exists()
    resumed = copy_run(run, tmp_path / "run")
    (resumed / "last.prev.pt").unlink()
    with_nan_weights(run, resumed / "last.pt")
    before = digest(resumed)
    assert main([*TRADES, "--max-steps", "3", "--resume", "--out", str(resumed)]) == 2
    assert "student.features.conv1.weight holds 10 NaN values" in one_line_error(capsys)
    assert digest(resumed) == before


# ---------------------------------------------------------------------------------------- item 10: damage vs tampering

def test_random_bytes_as_last_checkpoint_fall_back_to_the_previous_one(run: Path, tmp_path: Path) -> None:
    """`head -c 1343600 /dev/urandom > run/last.pt; T --max-steps 3 --resume` said
    "contains pickled code" and did not fall back to the valid last.prev.pt."""
    resumed = copy_run(run, tmp_path / "run")
    (resumed / "last.pt").write_bytes(random_bytes(1343600))
    previous = (resumed / "last.prev.pt").read_bytes()
    result = run_cli(*TRADES, "--max-steps", "3", "--resume", "--out", str(resumed))
    assert result.returncode == 0, result.stderr
    assert "is damaged or not a PyTorch file" in result.stderr
    assert "resuming from the previous checkpoint" in result.stderr
    assert "pickled code" not in result.stderr
    assert load_checkpoint(resumed / "last.pt").meta["position"]["global_step"] == 3
    # The good fallback stays the fallback: the damaged file is not rotated over it.
    assert (resumed / "last.prev.pt").read_bytes() == previous


def torch_zip_with_changed_pickle(source: Path, target: Path, change) -> Path:
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as copy:
        for name in archive.namelist():
            data = archive.read(name)
            copy.writestr(name, change(data) if name.endswith("data.pkl") else data)
    return target


DAMAGE = {
    "random bytes": lambda good: random_bytes(5000),
    "random bytes, other seed": lambda good: random_bytes(5000, seed=99),
    "truncated": lambda good: good[: len(good) // 2],
    "first bytes only": lambda good: good[:100],
    "empty": lambda good: b"",
    "text": lambda good: b"hello world\n" * 10,
    "a bare pickled number": lambda good: pickle.dumps(5),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_files_are_damage_not_tampering(run: Path, tmp_path: Path, case: str) -> None:
    """Random, truncated or rewritten bytes are damage (CheckpointError, not unsafe)."""
    path = tmp_path / "damaged.pt"
    path.write_bytes(DAMAGE[case]((run / "last.pt").read_bytes()))
    with pytest.raises(CheckpointError) as refused:
        read_tensors_file(path)
    assert not isinstance(refused.value, UnsafeCheckpointError), str(refused.value)
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)


GARBLED = {
    "noise": lambda data: random_bytes(len(data), seed=3),
    # A flipped byte inside a global torch writes: a name torch refuses, but a damaged one, not code.
    "a letter changed": lambda data: data.replace(b"torch._utils\n", b"torchR_utils\n"),
    "a control byte": lambda data: data.replace(b"torch._utils\n", b"torch\x13_utils\n"),
    "a storage misspelt": lambda data: data.replace(b"FloatStorage", b"FNoatStorage"),
}


@pytest.mark.parametrize("case", sorted(GARBLED))
def test_a_torch_archive_with_a_garbled_pickle_is_damage(run: Path, tmp_path: Path, case: str) -> None:
    """The zip is intact, its data.pkl is noise or names a damaged spelling of a torch
    global (found by flipping random bytes of a checkpoint)."""
    path = torch_zip_with_changed_pickle(run / "last.pt", tmp_path / "garbled.pt", GARBLED[case])
    with zipfile.ZipFile(path) as changed, zipfile.ZipFile(run / "last.pt") as original:
        pickled = [name for name in original.namelist() if name.endswith("data.pkl")]
        assert changed.read(pickled[0]) != original.read(pickled[0])
    with pytest.raises(CheckpointError) as refused:
        read_tensors_file(path)
    assert not isinstance(refused.value, UnsafeCheckpointError), str(refused.value)


def write_tampered(kind: str, path: Path, marker: Path) -> Path:
    payload = {"lbgat_checkpoint": 1, "meta": "{}", "state": {"weight": Exploit(marker)}}
    if kind == "torch zip":
        torch.save(payload, path)
    elif kind == "torch legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif kind == "an object, not code":
        torch.save({"state": Opaque()}, path)
    else:  # a bare pickle, protocol 0, 2 (torch's) or 5 (which torch's reader refuses at its first opcode)
        path.write_bytes(pickle.dumps(payload, protocol=int(kind.removeprefix("pickle protocol "))))
    return path


TAMPERED = ["torch zip", "torch legacy", "pickle protocol 0", "pickle protocol 2", "pickle protocol 5",
            "an object, not code"]


@pytest.mark.parametrize("kind", TAMPERED)
def test_a_file_that_names_a_python_global_is_tampering(tmp_path: Path, kind: str) -> None:
    """Refused as unsafe, naming the global, in a message that ends cleanly."""
    marker = tmp_path / "PWNED"
    path = write_tampered(kind, tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError) as refused:
        read_tensors_file(path)
    message = str(refused.value)
    expected = "Opaque" if kind == "an object, not code" else "system"
    assert "it contains pickled code or objects" in message and expected in message
    assert message.endswith("which weights-only loading does not allow)") and "\n" not in message
    assert not marker.exists()


def test_a_malicious_last_checkpoint_is_refused_not_skipped(run: Path, tmp_path: Path) -> None:
    """Tampering stops --resume (no fallback), nothing runs, no file changes."""
    resumed = copy_run(run, tmp_path / "run")
    marker = tmp_path / "PWNED"
    write_tampered("pickle protocol 5", resumed / "last.pt", marker)
    before = digest(resumed)
    line = one_line_refusal(run_cli(*TRADES, "--max-steps", "3", "--resume", "--out", str(resumed)))
    assert line.startswith(f"lbgat train: error: refusing to load {resumed / 'last.pt'}")
    assert "posix.system" in line or "nt.system" in line
    assert digest(resumed) == before
    assert not marker.exists()


# ---------------------------------------------------------------------------------------- item 11: NaN stop

def test_a_nan_stop_before_any_checkpoint_says_none_was_written(tmp_path: Path) -> None:
    """It once named RUN/last.pt, which did not exist."""
    out = tmp_path / "r"
    line = one_line_refusal(run_cli("train", "--method", "natural", "--model", "tiny-cnn", "--batch-size", "8",
                                    "--max-steps", "6", "--set", "optim.lr=1e30", "--set", "log_every=1",
                                    "--no-progress", "--out", str(out)))
    assert "loss became non-finite" in line and line.endswith("no checkpoint was written yet")
    assert not (out / "last.pt").exists()


@pytest.mark.parametrize(("extra", "expected"), [
    (["--on-nan", "skip", "--max-steps", "30"], "no checkpoint was written yet"),
    (["--checkpoint-every", "1"], "the last good checkpoint is {out}/last.pt"),
])
def test_a_nan_stop_names_a_checkpoint_only_if_one_exists(tmp_path: Path, capsys, extra, expected) -> None:
    """Also with --on-nan skip; a step checkpoint written before the NaN is named."""
    out = tmp_path / "r"
    status = main(["train", "--method", "natural", "--model", "tiny-cnn", "--batch-size", "8", "--max-steps", "6",
                   "--set", "optim.lr=1e30", "--set", "log_every=1", "--no-progress", "--out", str(out), *extra])
    assert status == 2
    line = one_line_error(capsys)
    assert line.endswith(expected.format(out=out)), line
    if "last.pt" in expected:
        assert load_checkpoint(out / "last.pt").meta["position"]["global_step"] >= 1


# ---------------------------------------------------------------------------------------- Smaller

def test_a_directory_or_fifo_as_a_checkpoint_is_named_as_such(tmp_path: Path, capsys) -> None:
    """They were once reported as "does not exist"."""
    (tmp_path / "folder.pt").mkdir()
    os.mkfifo(tmp_path / "fifo.pt")
    assert main(["eval", str(tmp_path / "folder.pt"), *EVAL]) == 2
    assert f"checkpoint {tmp_path / 'folder.pt'} is a directory" in one_line_error(capsys)
    assert main(["eval", str(tmp_path / "fifo.pt"), *EVAL]) == 2
    assert f"checkpoint {tmp_path / 'fifo.pt'} is not a regular file" in one_line_error(capsys)
    assert main(["train", "--method", "bgat", "--model", "tiny-cnn", "--teacher-checkpoint",
                 str(tmp_path / "folder.pt"), "--no-progress", "--out", str(tmp_path / "r")]) == 2
    assert f"teacher checkpoint {tmp_path / 'folder.pt'} is a directory" in one_line_error(capsys)


def test_a_plain_state_dict_as_teacher_checkpoint_is_told_about_arch_equals_path(run: Path, tmp_path: Path,
                                                                                 capsys) -> None:
    """The hint once said --model, which does not apply to a teacher."""
    plain = tmp_path / "plain.pt"
    torch.save(load_checkpoint(run / "last.pt").network_state("student"), plain)
    assert main(["train", "--method", "bgat", "--model", "tiny-cnn", "--teacher-checkpoint", str(plain),
                 "--max-steps", "1", "--no-progress", "--out", str(tmp_path / "r")]) == 2
    line = one_line_error(capsys)
    assert "ARCH=PATH" in line and "--model" not in line
    assert main(["train", "--method", "bgat", "--model", "tiny-cnn", "--teacher-checkpoint", f"tiny-cnn={plain}",
                 "--max-steps", "1", "--no-progress", "--out", str(tmp_path / "r")]) == 0


def test_a_plain_state_dict_as_transfer_source_is_told_about_source_model(run: Path, tmp_path: Path,
                                                                          capsys) -> None:
    """The same hint for `lbgat eval --transfer-from`."""
    plain = tmp_path / "plain.pt"
    torch.save(load_checkpoint(run / "last.pt").network_state("student"), plain)
    assert main(["eval", str(run / "last.pt"), "--transfer-from", str(plain), *EVAL,
                 "--out", str(tmp_path / "eval")]) == 2
    assert "is a plain state dict: say which architecture it is with --source-model" in one_line_error(capsys)


def test_a_folder_in_place_of_last_checkpoint_is_refused_not_skipped(run: Path, tmp_path: Path, capsys) -> None:
    """A folder named last.pt is not damage to fall back from (the run could not write there)."""
    resumed = copy_run(run, tmp_path / "run")
    (resumed / "last.pt").unlink()
    (resumed / "last.pt").mkdir()
    before = digest(resumed)
    assert main([*TRADES, "--max-steps", "3", "--resume", "--out", str(resumed)]) == 2
    assert f"checkpoint {resumed / 'last.pt'} is a directory" in one_line_error(capsys)
    assert digest(resumed) == before and (resumed / "last.pt").is_dir()


def test_resume_with_another_method_names_the_method_first(run: Path, capsys) -> None:
    """trades -> pgd-at once named attack.objective, not the method."""
    before = digest(run)
    assert main(["train", "--method", "pgd-at", "--model", "tiny-cnn", "--batch-size", "8", "--no-progress",
                 "--max-steps", "3", "--resume", "--out", str(run)]) == 2
    assert "differ from the run: method.name ('trades' in the run, 'pgd-at' now)" in one_line_error(capsys)
    assert digest(run) == before


def test_the_evaluate_hint_quotes_a_path_with_spaces(tmp_path: Path, capsys) -> None:
    """`lbgat eval my run/last.pt` cannot be pasted into a shell."""
    out = tmp_path / "my run"
    assert main([*TRADES, "--max-steps", "1", "--out", str(out)]) == 0
    assert f"evaluate with: lbgat eval '{out / 'last.pt'}'" in capsys.readouterr().out


def test_resume_past_max_steps_says_there_is_nothing_to_do(run: Path, tmp_path: Path) -> None:
    """`--resume --max-steps 1` on a run at step 2 exited 0 and did nothing silently."""
    resumed = copy_run(run, tmp_path / "run")
    before = digest(resumed)
    result = run_cli(*TRADES, "--max-steps", "1", "--resume", "--out", str(resumed))
    assert result.returncode == 0, result.stderr
    assert "nothing to do: the run is already at step 2, and --max-steps is 1" in result.stdout
    assert {name: value for name, value in digest(resumed).items() if name != "metrics.jsonl"} == \
        {name: value for name, value in before.items() if name != "metrics.jsonl"}


def test_resuming_a_finished_run_says_there_is_nothing_to_do(tmp_path: Path, capsys) -> None:
    """The same for a run that finished all its epochs."""
    out = tmp_path / "run"
    finished = ["train", "--method", "natural", "--model", "tiny-cnn", "--batch-size", "32", "--epochs", "1",
                "--no-progress", "--set", "data.val_size=0", "--set", "data.train_size=64", "--out", str(out)]
    assert main(finished) == 0
    capsys.readouterr()
    assert main([*finished, "--resume"]) == 0
    assert "nothing to do: the run already finished all 1 epochs" in capsys.readouterr().out
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["event"] == "resumed"
