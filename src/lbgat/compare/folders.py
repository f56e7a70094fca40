"""What a comparison checks in ``--out`` before any work: that it writes only inside it, and replaces only
what lbgat wrote.

A link planted anywhere a comparison writes or resumes (``OUT`` itself, ``compare.json``, a method's
folder, a seed folder, a run's files, its ``eval-last`` and the files in it, ``OUT/report``, the cluster
launchers' ``OUT/.jobs``) would make it
train, evaluate or report into someone else's folder, so any link there refuses the comparison. So does a
file in ``eval-last`` or ``OUT/report`` that lbgat cannot show it wrote (:mod:`lbgat.storage.ownership`): the last
method's evaluation and the report come after hours of training, and must not be refused only then.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..evaluate.report_files import check_out as check_eval_out
from ..report.outputs import prepare_out as check_report_out
from .launchers import JOBS_FOLDER
from .one_run import EVAL_FOLDER
from .state import STATE_FILE

REPORT_FOLDER = "report"


def _link(path: Path) -> ConfigError:
    return ConfigError(f"{path} is a symbolic link; a comparison writes only inside --out, never through a link: "
                       "nothing was written (remove the link, or choose another --out)")


def _refuse_links_in(folder: Path) -> None:
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            raise _link(entry)


def check_out_folders(out: Path, run_folders: list[str]) -> None:
    """Refuse, before any work, a link where the comparison would write or resume, and a file in the way of
    its evaluations or report that lbgat did not write."""
    for path in (out, out / STATE_FILE, out / REPORT_FOLDER, out / JOBS_FOLDER):
        if path.is_symlink():
            raise _link(path)
    for folder in run_folders:
        run_dir = out
        for part in Path(folder).parts:  # trades-alpha6, then seed0 with --seeds
            run_dir = run_dir / part
            if run_dir.is_symlink():
                raise _link(run_dir)
        if not run_dir.is_dir():
            continue
        _refuse_links_in(run_dir)
        evaluations = run_dir / EVAL_FOLDER
        if evaluations.is_dir():
            _refuse_links_in(evaluations)
            check_eval_out(evaluations)
    check_report_out(out / REPORT_FOLDER)
