"""The ``lbgat`` command line: train, eval, report, compare, export, demo, data, and listings."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from . import config as config_module
from .attacks import NORMS
from .checkpoints.averaged_weights import WEIGHTS, WEIGHTS_HELP
from .compare.launchers import LAUNCHERS, LOCAL
from .data.download import DOWNLOADABLE
from .errors import LbgatError
from .evaluate.autoattack import AA_VERSIONS
from .evaluate.runner import PROTOCOLS
from .evaluate.specs import ATTACK_FORMS, DEFAULT_ATTACKS
from .runtime.arithmetic import FLOAT32_SWITCHES
from .runtime.precision import PRECISIONS
from .settings import add_setting_flags, add_switches, finite_float, flag_values
from .storage.files import describe_os_error

if TYPE_CHECKING:
    from .report import EmbeddingSettings


def terminal_line(text: str) -> str:
    """``text`` as one terminal line: a newline or control character in a name a user chose (a folder called
    "a\\nb") is shown escaped, so an error stays one line and cannot move the cursor or recolour the terminal."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (plus where to get help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {terminal_line(message)} (see `{self.prog} --help`)\n")


def _folder(value: str) -> Path:
    """A folder argument: an empty string is a mistake (it would silently mean the current or default folder)."""
    if not value:
        raise argparse.ArgumentTypeError("an empty string is not a folder name")
    return Path(value)


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train a model (LBGAT, TRADES, PGD-AT, ...)",
                                 description="Train a model. Settings: defaults < --config recipe < flags < --set. "
                                             "Under `torchrun --nproc_per_node N -m lbgat train ...` the processes "
                                             "train one model with DistributedDataParallel (global batch = "
                                             "--batch-size).")
    parser.add_argument("--config", help="YAML recipe: a file, or a shipped recipe name (see `lbgat recipes`)")
    # The settings' flags, declared at each setting in lbgat.config (lbgat.settings.setting).
    add_setting_flags(parser, config_module.TrainConfig)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any setting, e.g. --set method.alpha=0 --set attack.steps=5 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .config import build_config, load_yaml
    from .recipes import find_recipe
    from .train import train

    recipe = load_yaml(find_recipe(args.config)) if args.config else None
    flags = flag_values(args, config_module.TrainConfig)
    config = build_config(recipe, flags, args.overrides)
    result = train(config, resume=args.resume, progress=not args.no_progress, argv=sys.argv)
    if not result.is_main:  # another process of a torchrun job: rank 0 reports
        return 0
    if result.note:
        print(terminal_line(result.note))
    state = "finished" if result.finished else f"stopped after step {result.position.global_step}"
    print(f"training {state}; run directory: {result.run_dir}")
    print(f"  last checkpoint: {result.last}")
    if result.best is not None:
        print(f"  best (held-out robust accuracy) checkpoint: {result.best}")
    averaged = config.average.kind != "none"
    print(f"  evaluate with: lbgat eval {shlex.quote(str(result.last))}"
          + (f" (its {config.average.kind} weights once averaging has started; --weights raw for the raw ones)"
             if averaged else ""))
    return 0


def _add_eval(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval", help="evaluate a checkpoint: PGD, CW, AutoAttack, transfer, sanity checks",
        description="Evaluate a model on the test split; writes report.json, report.md and per_sample.json. "
                    "Under `torchrun --nproc_per_node N -m lbgat eval ...` the examples are sharded across processes.")
    parser.add_argument("checkpoint", type=Path, help="an lbgat checkpoint, a folder written by `lbgat export`, "
                                                      "or a plain state dict with --model")
    parser.add_argument("--attacks", help=f"comma-separated: {ATTACK_FORMS} "
                                          f"(default {DEFAULT_ATTACKS}, or the --protocol's list)")
    parser.add_argument("--protocol", choices=list(PROTOCOLS),
                        help="lbgat: eps 0.031, step 0.003, full test set, clean,pgd20,cw20,aa; "
                             "robustbench: eps 8/255, first 10,000 test points, AutoAttack standard")
    # --num-examples first: under torchrun, whose parser sees every argument, a bare --n is ambiguous.
    parser.add_argument("--num-examples", "--n", dest="n", type=int,
                        help="evaluate the first N test examples (default all)")
    parser.add_argument("--norm", choices=NORMS, help="threat model (default Linf)")
    parser.add_argument("--eps", type=finite_float, help="radius (default: the dataset's, 0.031 on CIFAR; 0.5 for L2)")
    parser.add_argument("--step-size", type=finite_float, help="PGD/CW step size (default 0.003 on CIFAR; 0.1 for L2)")
    parser.add_argument("--steps", type=int, help="override the number of steps of every pgd<K>/cw<K>")
    parser.add_argument("--cw-kappa", type=finite_float, default=50.0, help="CW margin confidence (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random starts and of AutoAttack (default 0)")
    parser.add_argument("--batch-size", type=int, default=200, help="evaluation batch size (default 200)")
    parser.add_argument("--aa-version", choices=AA_VERSIONS,
                        help="AutoAttack version (default standard)")
    parser.add_argument("--aa-attacks", help="attacks of --aa-version custom, e.g. apgd-ce,apgd-t,fab-t,square")
    parser.add_argument("--aa-batch-size", type=int, help="AutoAttack batch size (default --batch-size)")
    parser.add_argument("--transfer-from", type=Path, help="black-box transfer: also craft PGD-20 on this source model "
                                                              "and measure CHECKPOINT on it (adds transfer-pgd20)")
    parser.add_argument("--source-model", help="architecture of --transfer-from when it is a plain state dict")
    parser.add_argument("--model", help="architecture of CHECKPOINT when it is a plain state dict (e.g. wrn-34-10)")
    parser.add_argument("--num-classes", type=int, help="classes of a plain state dict (default: the dataset's)")
    parser.add_argument("--dataset", help="evaluate on this dataset (default: the one trained on)")
    parser.add_argument("--data-root", help="dataset folder (default: the one used in training)")
    parser.add_argument("--check-n", type=int, default=100,
                        help="examples for the PGD-100x5 strength check (default 100; 0 skips it)")
    parser.add_argument("--out", type=_folder, help="report folder (default: eval-<checkpoint name> beside it)")
    parser.add_argument("--weights", choices=WEIGHTS, default="auto", help=WEIGHTS_HELP)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="model arithmetic: fp32 (default, the evaluation of record) or bf16/fp16 autocast")
    add_switches(parser, "float32", FLOAT32_SWITCHES)  # as lbgat train's; neither: torch's own flags
    parser.set_defaults(float32="default")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalRequest, evaluate_checkpoint
    from .evaluate.doubts import doubts_of, mark_text
    from .evaluate.intervals import interval_of, interval_text

    request = EvalRequest(
        checkpoint=args.checkpoint, attacks=args.attacks, n=args.n, eps=args.eps, step_size=args.step_size,
        steps=args.steps, kappa=args.cw_kappa, seed=args.seed, batch_size=args.batch_size, dataset=args.dataset,
        data_root=args.data_root, out=args.out, device=args.device, protocol=args.protocol, norm=args.norm,
        model=args.model, num_classes=args.num_classes, aa_version=args.aa_version, aa_attacks=args.aa_attacks,
        aa_batch_size=args.aa_batch_size, transfer_from=args.transfer_from, source_model=args.source_model,
        check_n=args.check_n, precision=args.precision, float32=args.float32, weights=args.weights,
    )
    report, out = evaluate_checkpoint(request, progress=not args.no_progress)
    if not report:  # a non-main process of a sharded evaluation
        return 0
    protocol = report["protocol"]
    arch = report["checkpoint"]["arch"]
    print(f"{arch} ({report['checkpoint']['weights']} weights) on {protocol['dataset']} test, n = {protocol['n']}, "
          f"{protocol['norm']} eps = {protocol['eps']!r}")
    doubts = doubts_of(report)
    for row in report["results"]:
        interval = interval_text(interval_of(row))  # 95% Wilson interval over the n test images
        mark = mark_text(doubts.get(row["attack"], []))
        print(f"  {row['attack']:>15}: {100 * row['accuracy']:6.2f}% {interval:<14}  "
              f"({row['correct']}/{row['total']})  {row['description']}" + (f"  {mark}" if mark else ""))
        for step in row.get("cascade", []):
            print(f"  {'':>15}   after {step['attack']}: {step['robust']}/{row['total']} ({step['seconds']:.1f} s)")
    for check in report["checks"]:
        if check["verdict"] in ("warn", "fail"):
            label = "WARNING" if check["verdict"] == "warn" else "CHECK FAILED"
            print(f"{label}: {check['name']}: {check['detail']}", file=sys.stderr)
    passed = sum(check["verdict"] == "pass" for check in report["checks"])
    print("[lo, hi]: 95% interval over the n test images (Wilson score; test-set sampling only)")
    print(f"sanity checks: {passed} of {len(report['checks'])} passed (details in the report)")
    print(f"report: {out / 'report.md'} and {out / 'report.json'}")
    return 0


def _add_export(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export", help="write a checkpoint as safetensors in the official key layout, with a model card",
        description="Export the trained model of a checkpoint: OUT/model.safetensors (the official TRADES/LBGAT/"
                    "RobustBench key layout where the architecture has one), OUT/README.md (model card) and "
                    "OUT/config.yaml. `lbgat eval OUT` and lbgat.load_model(OUT) read the folder back.")
    parser.add_argument("checkpoint", type=Path, help="a run's last.pt, best.pt or epoch-N.pt, or a run folder "
                                                      "(meaning its last.pt)")
    parser.add_argument("--out", type=_folder, required=True, help="a new or empty folder for the export")
    parser.add_argument("--weights", choices=WEIGHTS, default="auto", help=WEIGHTS_HELP)
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.out, args.weights)
    for path in result.evaluations.stale:
        print(terminal_line(f"note: {path} evaluated an earlier {result.checkpoint.name} (another sha256); "
                            "not in the card"))
    for path in result.evaluations.unreadable:
        print(terminal_line(f"note: {path} could not be read as an lbgat report; not in the card"))
    print(f"exported the {result.weights} weights of {result.checkpoint} to {result.folder}")
    loads = ", ".join(f"{cls.project} {cls.constructor}" for cls in result.layout.classes)
    print(f"  model.safetensors: key layout {result.layout.name}"
          + (f"; loads strictly into {loads}" if loads else " (no official counterpart)"))
    evaluated = ", ".join(evaluation.folder.name for evaluation in result.evaluations.matching)
    print(f"  README.md: model card ({'evaluation: ' + evaluated if evaluated else 'not evaluated'})")
    print("  config.yaml: the run's settings")
    print(f"  evaluate with: lbgat eval {shlex.quote(str(result.folder))}")
    return 0


def _add_demo(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="train and compare natural, PGD-AT, TRADES and LBGAT+TRADES on CPU",
                                 description="The main job: train four methods on the embedded MNIST subset, "
                                             "evaluate them, print one comparison table and write the report with "
                                             "its figures (OUT/report/report.html). It is `lbgat compare` with the "
                                             "recipe cpu/mnist-5k-demo; run again, it reuses what is done.")
    parser.add_argument("--out", type=_folder, default=Path("runs/demo"),
                        help="folder for the runs (default runs/demo)")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps per method, in OUT-quick (OUT/demo-quick for `.`); its numbers mean nothing")
    parser.add_argument("--fresh", action="store_true",
                        help="delete earlier demo runs in --out first (refused if the folder holds anything else)")
    parser.add_argument("--seed", type=int,
                        help="training seed of every run (default: the recipe's); another seed, or another "
                             "thread count, is another draw of the same experiment")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick, fresh=args.fresh, progress=not args.no_progress, seed=args.seed)
    return 0


def _add_compare(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare", help="train several methods with one recipe, evaluate them with one protocol, write the report",
        description="Train each of --methods with the same recipe into OUT/<method>, evaluate each last.pt with the "
                    "same attacks into OUT/<method>/eval-last, and write one report (OUT/report/report.html). "
                    "Run again with the same command, it reuses finished runs and evaluations and resumes a "
                    "stopped run.")
    parser.add_argument("--methods", required=True,
                        help="comma-separated methods, each with its own settings as NAME:KEY=VALUE (each key "
                             "once), e.g. natural,pgd-at,trades:alpha=6,lbgat-trades:alpha=0; plug-ins as "
                             "NAME+PLUGIN, e.g. trades+rpat+awp, or as NAME:plugins=[rpat,awp] (a comma inside "
                             "[...] does not start a new method), their settings as trades+rpat:rpat.lam=2")
    parser.add_argument("--config", help="the shared recipe: a YAML file or a shipped recipe name (`lbgat recipes`)")
    parser.add_argument("--out", type=_folder, required=True, help="folder for the runs and the report")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training setting for every method, e.g. --set schedule.epochs=10")
    parser.add_argument("--data-root", help="dataset folder (data.root)")
    parser.add_argument("--max-steps", type=int, help="stop each run after this many optimiser steps (smoke runs)")
    parser.add_argument("--val-size", type=int,
                        help="training images held out and attacked after every epoch (data.val_size); default: "
                             "the recipe's, or 500 where the recipe holds none out; 0 trains on all of them")
    parser.add_argument("--seeds", metavar="S1,S2,...",
                        help="train each method once per seed (e.g. 0,1,2) into OUT/<method>/seed<N>; the report "
                             "gives each seed and the mean ± sd over seeds (default: one run per method, the "
                             "recipe's seed, in OUT/<method>)")
    parser.add_argument("--attacks", default="clean,pgd",
                        help=f"evaluation attacks ({ATTACK_FORMS}; default clean,pgd: the dataset's PGD, "
                             "PGD-20 on CIFAR, PGD-40 on MNIST)")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), help="an evaluation preset of `lbgat eval`")
    parser.add_argument("--num-examples", "--n", dest="n", type=int, help="evaluate on the first N test examples")
    parser.add_argument("--eps", type=finite_float, help="evaluation radius (default: the dataset's threat model)")
    parser.add_argument("--step-size", type=finite_float, help="evaluation PGD/CW step (default: the dataset's)")
    parser.add_argument("--check-n", type=int, default=100,
                        help="examples for the evaluation's PGD-100x5 strength check (default 100; 0 skips it)")
    parser.add_argument("--paper", action="store_true", help="add the LBGAT paper's points to the trade-off figure")
    _add_tsne_flags(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    cluster = parser.add_argument_group(
        "cluster", "--launcher slurm: one SLURM job per run (per method, and per seed with --seeds), through submitit "
                   "(pip install 'lbgat[slurm]'); the command waits for them and writes the report. Killed, run it "
                   "again: it picks up the jobs by the ids in OUT/compare.json. Job logs: OUT/.jobs/")
    cluster.add_argument("--launcher", choices=LAUNCHERS, default=LOCAL,
                         help="local: train the runs one after another in this process (default); slurm: one job "
                              "per run; submitit-local: the same jobs as processes of this machine (for trying the "
                              "cluster path on one machine)")
    cluster.add_argument("--partition", help="the SLURM partition (required with --launcher slurm)")
    cluster.add_argument("--gpus-per-job", type=int, metavar="N",
                         help="GPUs of each job (default 1): one process on 1, torchrun over N > 1, 0 for a CPU job")
    cluster.add_argument("--time", metavar="LIMIT",
                         help="each job's time limit as sbatch writes it: MINUTES, HH:MM:SS or D-HH:MM:SS (required "
                              "with --launcher slurm); a job that reaches it is requeued and resumes from last.pt")
    cluster.add_argument("--slurm-account", metavar="ACCOUNT", help="the SLURM account to charge (sbatch --account)")
    cluster.add_argument("--cpus-per-job", type=int, metavar="N", help="CPU cores of each job (sbatch --cpus-per-task)")
    cluster.add_argument("--slurm-param", dest="slurm_params", action="append", metavar="KEY=VALUE",
                         help="any other sbatch option, e.g. --slurm-param qos=high --slurm-param mem=64G (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from .compare import ComparePlan, EvalSettings, comparison_table, parse_methods, run_compare
    from .compare.launchers import cluster_options
    from .compare.seeds import parse_seeds
    from .config import load_yaml
    from .recipes import find_recipe
    from .report import ReportOptions

    entries = parse_methods(args.methods)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    cluster = cluster_options(args.launcher, partition=args.partition, gpus_per_job=args.gpus_per_job, time=args.time,
                              account=args.slurm_account, cpus_per_job=args.cpus_per_job,
                              sbatch=args.slurm_params or ())
    flags: dict[str, object] = {"device": args.device}
    if args.max_steps is not None:
        flags["max_steps"] = args.max_steps
    if args.data_root is not None:
        flags["data.root"] = args.data_root
    plan = ComparePlan(
        entries=tuple(entries), out=args.out, recipe=load_yaml(find_recipe(args.config)) if args.config else None,
        flags=flags, overrides=tuple(args.overrides),
        evaluation=EvalSettings(attacks=None if args.protocol and args.attacks == "clean,pgd" else args.attacks,
                                n=args.n, protocol=args.protocol, eps=args.eps, step_size=args.step_size,
                                check_n=args.check_n, device=args.device),
        report=ReportOptions(paper=args.paper, tsne=_tsne_settings(args)), val_size=args.val_size, seeds=seeds,
        cluster=cluster)
    result = run_compare(plan, progress=not args.no_progress)
    table = comparison_table(result)
    if table:
        print()
        print(table)
        print()
    for note in result.report.notes:
        print(f"note: {terminal_line(note)}")
    print(f"runs: {args.out}/<method>/{'seed<N>/' if seeds else ''}; report: {result.report.markdown}")
    print(f"open: {result.report.html}")
    return 0


def _add_report(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report", help="one report (Markdown, self-contained HTML, PNG/SVG figures) over runs and evaluations",
        description="From finished runs (run folders) and their evaluations (folders with the report.json of "
                    "`lbgat eval`): a table of runs, the clean-vs-robust trade-off, training curves, white-box vs "
                    "black-box bars when transfer results exist and, with --tsne, the logit embedding.")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="RUN_OR_EVAL",
                        help="a run folder (its eval-last/ evaluation is used) or an evaluation folder")
    parser.add_argument("--out", type=_folder, required=True, help="report folder (new, empty or an earlier report)")
    parser.add_argument("--paper", action="store_true",
                        help="add the LBGAT paper's reported points for the same dataset to the trade-off figure")
    _add_tsne_flags(parser)
    parser.add_argument("--title", help="the report's title")
    parser.set_defaults(handler=_run_report)


def _add_tsne_flags(parser: argparse.ArgumentParser) -> None:
    from .report.embedding import DEFAULT_CLASSES, DEFAULT_PER_CLASS, DEFAULT_PERPLEXITY

    parser.add_argument("--tsne", action="store_true", help="add the logit embedding of each run (LBGAT Figs. 3-4; "
                                                            "runs each model on clean and adversarial test images)")
    parser.add_argument("--tsne-classes", type=int, default=DEFAULT_CLASSES,
                        help=f"classes sampled for --tsne (default {DEFAULT_CLASSES})")
    parser.add_argument("--tsne-per-class", type=int, default=DEFAULT_PER_CLASS,
                        help=f"test images per class for --tsne (default {DEFAULT_PER_CLASS})")
    parser.add_argument("--tsne-seed", type=int, default=0, help="seed of the sampling and of t-SNE (default 0)")
    parser.add_argument("--tsne-perplexity", type=finite_float, default=DEFAULT_PERPLEXITY,
                        help=f"t-SNE perplexity (default {DEFAULT_PERPLEXITY:g})")


def _tsne_settings(args: argparse.Namespace) -> EmbeddingSettings | None:
    from .report import EmbeddingSettings

    if not args.tsne:
        return None
    return EmbeddingSettings(classes=args.tsne_classes, per_class=args.tsne_per_class, seed=args.tsne_seed,
                             perplexity=args.tsne_perplexity, device=getattr(args, "device", "auto"))


def _run_report(args: argparse.Namespace) -> int:
    from .report import ReportOptions, build_report

    result = build_report(args.inputs, args.out, ReportOptions(paper=args.paper, tsne=_tsne_settings(args),
                                                               title=args.title), progress=True)
    for note in result.notes:
        print(f"note: {terminal_line(note)}")
    print(f"report of {len(result.runs)} run(s): {result.markdown}, {len(result.figures)} figure(s) in "
          f"{result.out / 'figures'}")
    print(f"open: {result.html}")
    return 0


def _add_data(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("data", help="download or inspect datasets")
    actions = parser.add_subparsers(dest="action", required=True, parser_class=_Parser)
    download = actions.add_parser("download", help="fetch an official archive and verify its checksum; on a "
                                  "folder that is there, verify its files and repair missing or damaged ones")
    download.add_argument("name", choices=DOWNLOADABLE)
    download.add_argument("--root", required=True, type=Path, help="folder to put the dataset in")
    download.add_argument("--url", help="a mirror of the official archive (http, https or file URL)")
    download.add_argument("--md5", help="expected md5 of the archive at --url")
    download.set_defaults(handler=_run_download)
    info = actions.add_parser("info", help="read a dataset and print its size and classes")
    info.add_argument("name")
    info.add_argument("--root", help=config_module.DATA_ROOT_HELP)
    info.add_argument("--image-size", type=int)
    info.set_defaults(handler=_run_data_info)
    store = actions.add_parser("store-npz", help="write .npz files of extra data (a compressed one, or the parts "
                               "of a split set) as one uncompressed .npz that data.extra reads by offset (streams: "
                               "needs no memory)")
    store.add_argument("sources", type=Path, nargs="+", metavar="SOURCE",
                       help="the .npz file(s); several are joined in this order")
    store.add_argument("target", type=Path, metavar="TARGET", help="the new file to write (never an existing one)")
    store.set_defaults(handler=_run_store_npz)


def _run_download(args: argparse.Namespace) -> int:
    from .data import download_dataset

    path = download_dataset(args.name, args.root, url=args.url, md5=args.md5)
    print(f"{args.name} is in {path}")
    return 0


def _run_data_info(args: argparse.Namespace) -> int:
    from .data import load_dataset

    dataset = load_dataset(args.name, args.root, image_size=args.image_size)
    shape = "x".join(map(str, dataset.image_shape))
    print(f"{dataset.name}: {len(dataset.train)} train / {len(dataset.test)} test images of {shape}, "
          f"{dataset.num_classes} classes, from {dataset.source}")
    return 0


def _run_store_npz(args: argparse.Namespace) -> int:
    from .data.npz_file import store_uncompressed

    store_uncompressed(args.sources, args.target)
    print(f"{args.target} holds the arrays of {', '.join(map(str, args.sources))}, uncompressed")
    return 0


def _add_listings(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("methods", help="list training methods and their hyperparameters").set_defaults(
        handler=_run_methods)
    commands.add_parser("models", help="list architectures").set_defaults(handler=_run_models)
    commands.add_parser("recipes", help="list shipped recipes").set_defaults(handler=_run_recipes)


def _run_methods(args: argparse.Namespace) -> int:
    import dataclasses

    from .methods import Method, list_methods
    from .methods.guidance import GuidanceParams
    from .methods.plugin import Plugin, list_plugins

    def defaults(params: type, skip: frozenset[str] = frozenset()) -> str:
        shown = []
        for field in dataclasses.fields(params):
            if field.name in skip:
                continue
            value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            shown.append(f"{field.name}={value!r}")
        return ", ".join(shown)

    def joins(plugin: type[Plugin], method: type[Method]) -> bool:
        return plugin.refusal(method, method.Params(), plugin.Params()) is None  # at their default settings

    knobs = {field.name for field in dataclasses.fields(GuidanceParams)}
    plugins = list_plugins()
    print("Methods (--method NAME; hyperparameters with --set method.NAME=VALUE):")
    for method in list_methods():
        fields = dataclasses.fields(method.Params)
        own = defaults(method.Params, frozenset(knobs))
        guidance = ", ".join(f"{field.name}={field.default!r}" for field in fields if field.name in knobs)
        print(f"  {method.name:14} {method.description}")
        details = [f"hyperparameters: {own or 'none'}"]
        if method.attack_objective:
            details.append(f"trains against {method.attack_objective.upper()}-PGD")
        if method.frozen_teacher:
            details.append("frozen natural teacher(s) from --teacher-checkpoint")
        elif method.uses_teacher:
            details.append("trains a natural teacher with it (--teacher)")
        print(f"  {'':14} {'; '.join(details)}")
        if guidance:
            print(f"  {'':14} guidance knobs: {guidance}")
        takes = [plugin.name for plugin in plugins if joins(plugin, method)]
        print(f"  {'':14} plug-ins: {', '.join(takes) if takes else 'none'}")
    print()
    print("Plug-ins (--plugin NAME, repeatable; settings with --set method.PLUGIN.KEY=VALUE):")
    for plugin in plugins:
        hosts = [method.name for method in list_methods() if joins(plugin, method)]
        kind = "wraps the host's step" if plugin.kind == "weight-perturbation" else "adds a term to the host's loss"
        print(f"  {plugin.name:14} {plugin.description}")
        print(f"  {'':14} {kind}; settings: {defaults(plugin.Params)}")
        print(f"  {'':14} from: {plugin.paper}")
        if plugin.reconstruction:
            print(f"  {'':14} RECONSTRUCTION from the abstract (no official code or full text): not the paper's method")
        print(f"  {'':14} joins: {', '.join(hosts)}")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from .models import ModelEntry, list_model_families, list_models

    def shape_note(entry: ModelEntry) -> str:
        return " (needs " + "x".join(map(str, entry.input_shape)) + ")" if entry.input_shape else ""

    # A family is one line (its pattern), with its registered sizes below it as examples.
    members = {family.pattern: [entry for entry in list_models() if family.member(entry.name)]
               for family in list_model_families()}
    grouped = {entry.name for entries in members.values() for entry in entries}
    for entry in list_models():
        if entry.name not in grouped:
            print(f"{entry.name:18} {entry.description}{shape_note(entry)}")
    for family in list_model_families():
        print(f"{family.pattern:18} {family.description}")
        for entry in members[family.pattern]:
            print(f"  {entry.name:16} {entry.description}{shape_note(entry)}")
    return 0


def _run_recipes(args: argparse.Namespace) -> int:
    from .recipes import list_recipes, recipes_root

    print(f"recipes in {recipes_root()}:")
    for name in list_recipes():
        print(f"  {name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = _Parser(prog="lbgat", description="Adversarial training that keeps clean accuracy (LBGAT and family).")
    parser.add_argument("--version", action="version", version=f"lbgat {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(commands)
    _add_eval(commands)
    _add_export(commands)
    _add_demo(commands)
    _add_report(commands)
    _add_compare(commands)
    _add_data(commands)
    _add_listings(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except LbgatError as error:
        if getattr(error, "announce", True):
            print(f"lbgat {args.command}: {error.label}: {terminal_line(str(error))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"lbgat {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        # A file or folder the system refused (a name too long, a full disk, no permission): the
        # user's environment, not a bug, so one line. An OSError without a file keeps its traceback.
        if error.filename is None:
            raise
        print(f"lbgat {args.command}: error: {terminal_line(describe_os_error(error))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
