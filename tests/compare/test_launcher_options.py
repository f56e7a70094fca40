"""`lbgat compare --launcher slurm`: a wrong option is one line before anything is submitted or written; what is
submitted to SLURM (through submitit's real SLURM executor, with `sbatch`, `sacct` and `srun` replaced by scripts
that record the submission and report a state); and a killed submitter's job picked up by its id, never submitted
twice."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lbgat.cli import main
from lbgat.compare import ComparePlan, EvalSettings, parse_methods, run_compare
from lbgat.compare import cluster as cluster_module
from lbgat.compare.launchers import ClusterOptions, parse_time_limit
from lbgat.errors import ConfigError

submitit = pytest.importorskip("submitit")

BASE = ["compare", "--methods", "natural", "--config", "cpu/mnist-5k-demo", "--max-steps", "1", "--no-progress"]


@pytest.mark.parametrize(("text", "minutes"), [("90", 90), ("1:30", 2), ("24:00:00", 1440), ("0:00:30", 1),
                                               ("2-00:00:00", 2880), ("1-12", 2160), ("1-00:30", 1470)])
def test_time_limits_read_as_sbatch_reads_them(text: str, minutes: int) -> None:
    assert parse_time_limit(text) == minutes


@pytest.mark.parametrize(("extra", "says"), [
    (["--launcher", "slurm", "--time", "60"], "--launcher slurm needs --partition"),
    (["--launcher", "slurm", "--partition", "gpu"], "--launcher slurm needs --time"),
    (["--launcher", "slurm", "--partition", "gpu", "--time", "1h"], "--time: '1h' is not a time limit"),
    (["--launcher", "slurm", "--partition", "gpu", "--time", "0"], "is no time at all"),
    (["--launcher", "slurm", "--partition", "gpu", "--time", "60", "--gpus-per-job", "-1"], "--gpus-per-job must be"),
    (["--launcher", "slurm", "--partition", "gpu", "--time", "60", "--slurm-param", "qos"], "--slurm-param: write"),
    (["--partition", "gpu"], "--partition is an option of --launcher slurm"),
    (["--launcher", "submitit-local", "--slurm-account", "a"], "--slurm-account is an option of --launcher slurm"),
    (["--launcher", "cloud"], "argument --launcher: invalid choice: 'cloud'"),
])
def test_a_wrong_launcher_option_is_one_line_before_anything(tmp_path: Path, capsys, extra: list[str],
                                                             says: str) -> None:
    out = tmp_path / "cmp"
    try:
        code = main([*BASE, "--out", str(out), *extra])
    except SystemExit as exited:  # argparse's own refusal of an unknown choice
        code = exited.code
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and says in error, error
    assert not out.exists()


def test_without_submitit_the_cluster_launchers_say_how_to_install_it(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now fails as if it were not installed
    out = tmp_path / "cmp"
    assert main([*BASE, "--out", str(out), "--launcher", "slurm", "--partition", "gpu", "--time", "60"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "pip install 'lbgat[slurm]'" in error, error
    assert not out.exists()


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """sbatch copies the job's script to SUBMITTED and says a job id; sacct reports the state in STATE; srun exists."""
    root = tmp_path / "slurm"
    (root / "bin").mkdir(parents=True)
    (root / "submitted").mkdir()
    scripts = {
        "sbatch": '#!/bin/sh\nn=$(ls "$FAKE_SLURM/submitted" | wc -l)\nid=$((4242 + n))\n'
                  'cp "$1" "$FAKE_SLURM/submitted/$id.sh"\necho "Submitted batch job $id"\n',
        "sacct": '#!/bin/sh\necho "JobID|State|NodeList"\ncat "$FAKE_SLURM/state"\n',
        "srun": "#!/bin/sh\nexit 1\n",
    }
    for name, text in scripts.items():
        (root / "bin" / name).write_text(text)
        (root / "bin" / name).chmod(0o755)
    (root / "state").write_text("")
    monkeypatch.setenv("FAKE_SLURM", str(root))
    monkeypatch.setenv("PATH", f"{root / 'bin'}:{__import__('os').environ['PATH']}")
    monkeypatch.setattr(cluster_module, "_pause", _interrupt)  # the submitter "killed" while it waits
    submitit.SlurmJob.watcher.clear()
    return root


def _interrupt(seconds: float) -> None:
    raise KeyboardInterrupt


def _plan(out: Path, max_steps: int = 1) -> ComparePlan:
    options = ClusterOptions(partition="gpu", gpus_per_job=2, time_minutes=90, account="lab", cpus_per_job=8,
                             sbatch=(("qos", "high"),), poll_seconds=0.0)
    return ComparePlan(entries=tuple(parse_methods("natural")), out=out, flags={"max_steps": max_steps},
                       overrides=("data.train_size=64",), evaluation=EvalSettings(attacks="clean", n=16, check_n=0),
                       cluster=options)


def test_what_is_submitted_and_a_job_picked_up_by_its_id(tmp_path: Path, fake_slurm: Path, capsys) -> None:
    out = tmp_path / "cmp"
    with pytest.raises(KeyboardInterrupt):
        run_compare(_plan(out), progress=False)
    (script,) = sorted((fake_slurm / "submitted").iterdir())
    text = script.read_text()
    for line in ("--partition=gpu", "--gpus-per-node=2", "--time=90", "--account=lab", "--cpus-per-task=8",
                 "--qos=high", "--signal=USR2@300", "--job-name=lbgat-natural", "--nodes=1", "--ntasks-per-node=1",
                 f"--output={out.absolute()}/.jobs/%j_0_log.out"):
        assert f"#SBATCH {line}\n" in text, line
    assert "-m submitit.core._submit" in text
    job = json.loads((out / "compare.json").read_text())["runs"]["natural"]["job"]
    assert job["launcher"] == "slurm" and job["id"] == "4242"
    spec = json.loads((out / ".jobs" / f"{job['token']}.spec.json").read_text())
    assert spec["config"]["max_steps"] == 1 and spec["run_dir"] == str((out / "natural").absolute())
    printed = capsys.readouterr().out
    assert "submitted as slurm job 4242" in printed and "interrupted: run the same command again" in printed

    # The same command again while the job is queued: it is waited for by its id, not submitted again.
    (fake_slurm / "state").write_text("4242|PENDING|\n")
    with pytest.raises(KeyboardInterrupt):
        run_compare(_plan(out), progress=False)
    assert "picked up slurm job 4242" in capsys.readouterr().out
    assert len(list((fake_slurm / "submitted").iterdir())) == 1

    # Other settings while it is queued: one line, nothing submitted.
    with pytest.raises(ConfigError, match="is still trained by slurm job 4242 with other settings"):
        run_compare(_plan(out, max_steps=2), progress=False)
    assert len(list((fake_slurm / "submitted").iterdir())) == 1

    # Cancelled (scancel) before it wrote its outcome: the run is submitted again.
    (fake_slurm / "state").write_text("4242|CANCELLED by 0|\n")
    with pytest.raises(KeyboardInterrupt):
        run_compare(_plan(out), progress=False)
    assert "ended without finishing (killed?); its run is submitted again" in capsys.readouterr().out
    assert sorted(path.name for path in (fake_slurm / "submitted").iterdir()) == ["4242.sh", "4243.sh"]
    assert json.loads((out / "compare.json").read_text())["runs"]["natural"]["job"]["id"] == "4243"


def test_the_local_launcher_will_not_train_a_run_a_job_still_trains(tmp_path: Path, fake_slurm: Path) -> None:
    out = tmp_path / "cmp"
    with pytest.raises(KeyboardInterrupt):
        run_compare(_plan(out), progress=False)
    (fake_slurm / "state").write_text("4242|RUNNING|node1\n")
    local = ComparePlan(entries=tuple(parse_methods("natural")), out=out, flags={"max_steps": 1},
                        overrides=("data.train_size=64",), evaluation=EvalSettings(attacks="clean", n=16, check_n=0))
    with pytest.raises(ConfigError, match="is still trained by slurm job 4242"):
        run_compare(local, progress=False)
    assert not (out / "natural" / "config.yaml").exists()


@pytest.mark.parametrize(("methods", "recipe"), [("trades+rpat+awp:rpat.lam=2", "paper/cifar10-trades-a6"),
                                                 ("lbgat-trades:alpha=0", "cpu/mnist-5k-demo")])
def test_a_job_trains_exactly_the_settings_of_the_local_launcher(tmp_path: Path, methods: str, recipe: str) -> None:
    """A job reads its run's settings back from the JSON spec: the very config the local launcher would train."""
    from lbgat.compare.engine import _config
    from lbgat.config import TrainConfig, load_yaml
    from lbgat.recipes import find_recipe
    from lbgat.storage.files import strict_json
    from lbgat.structured import from_mapping, to_mapping

    (entry,) = parse_methods(methods)
    config = _config(ComparePlan(entries=(entry,), out=tmp_path, recipe=load_yaml(find_recipe(recipe))), entry, 3)
    assert from_mapping(TrainConfig, json.loads(strict_json(to_mapping(config)))) == config
