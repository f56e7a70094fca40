"""One training step per scenario, run by the official code (its functions, in its order), on lbgat's
setting (tests/helpers/official_plugin_setting.py, tests/helpers/official_settings.py): the same wrn-10-1
weights, batch, start draw and SGD, in one of the settings (seed, batch size, plain or perturbed weights).

Each scenario has two functions. ``prepare_<scenario>(repo, setting, recorder)`` imports the official code
from the folder of a plain checkout and sets up the step on its objects (``harness.OfficialStep``); with a
``Recorder`` the official functions' results are kept as they return, without one (a timed step,
benchmarks/train_step.py) the official code runs untouched. ``<scenario>(repo, setting)`` runs the recorded
step once and returns what it produced: the tensors (x_adv, the loss and its terms, every gradient, every
parameter and buffer after the step), the forwards in order with their BatchNorm mode, and what was
neutralised. Where the official training loop is a function that takes a loader (ISEAT ``update``, RPAT
``train``, TRADES-AWP ``train``) it is called itself on a one-batch loader; where it is inline in ``main()``
(AT_AWP) its body is re-expressed below in the script's order, citing the lines.
"""

from __future__ import annotations

import importlib
import importlib.util
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from harness import (
    ForwardLog,
    OfficialStep,
    Recorder,
    RecordingSGD,
    StartDraw,
    batchnorm_untouched_on_calls,
    functions_from_file,
    module_with,
    on_cpu,
    on_path,
    recorded,
    stub_modules,
)
from torch import nn

from helpers.official_plugin_setting import MODEL, NUM_CLASSES, SCENARIOS, Scenario, batch, start_draw
from helpers.official_settings import Setting, initial_state
from lbgat.models import create_model

Result = dict[str, Any]


def official_network(scenario: Scenario, setting: Setting) -> nn.Module:
    """The same wrn-10-1 and weights as the lbgat side, without input normalisation: an official script
    that normalises does it outside the model (AT_AWP's ``normalize``), and its own code does it here."""
    model = create_model(MODEL, num_classes=NUM_CLASSES)
    model.load_state_dict(initial_state(model, setting))
    return model.train()


def sgd(scenario: Scenario, model: nn.Module, recorder: Recorder | None) -> torch.optim.SGD:
    """The script's SGD; recording, one that keeps the gradients and the loss at its step."""
    settings = {"lr": scenario.lr, "momentum": scenario.momentum, "weight_decay": scenario.weight_decay}
    if recorder is None:
        return torch.optim.SGD(model.parameters(), **settings)
    return RecordingSGD(model, recorder.backward, **settings)


def result(x_adv: torch.Tensor, terms: dict[str, torch.Tensor], optimizer: RecordingSGD, model: nn.Module,
           forwards: list[str], notes: list[str]) -> Result:
    if optimizer.steps != 1:
        raise AssertionError(f"the official step took {optimizer.steps} optimiser steps")
    tensors = {"x_adv": x_adv.detach().clone()}
    tensors.update({f"term/{name}": value.detach().clone() for name, value in terms.items()})
    tensors.update({f"grad/{name}": grad for name, grad in optimizer.gradients.items()})
    tensors.update({f"after/{key}": value.detach().clone() for key, value in model.state_dict().items()})
    return {"tensors": tensors, "forwards": forwards, "notes": notes}


def run_recorded(step: OfficialStep, recorder: Recorder) -> tuple[dict[str, torch.Tensor], ForwardLog,
                                                                  RecordingSGD, nn.Module]:
    """The step once, with every forward of the trained network logged and every backward recorded."""
    model = step.trained["model"]
    forwards = ForwardLog(model)
    with recorder.backward.installed():
        left = step.run()
    optimizer = step.optimizers[0]
    assert isinstance(optimizer, RecordingSGD)
    return left, forwards, optimizer, model


def recorded_with_x_adv(step: OfficialStep, recorder: Recorder,
                        terms: Callable[[Recorder, torch.Tensor], dict[str, torch.Tensor]]) -> Result:
    """A step whose x_adv the recorder keeps (an official function returns it), run once and recorded;
    ``terms(recorder, loss)``: lbgat's terms from the recorded values and the official loss."""
    _, forwards, optimizer, model = run_recorded(step, recorder)
    assert optimizer.loss is not None
    x_adv = recorder.last("x_adv")
    return result(x_adv, terms(recorder, optimizer.loss), optimizer, model, forwards.describe(step.inputs, x_adv),
                  step.notes)


def module_from_file(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def first(outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return outputs[0]


# --- MART (YisenWang/MART) --------------------------------------------------------------------------


def prepare_mart(repo: Path, setting: Setting, recorder: Recorder | None = None) -> OfficialStep:
    """train_wideresnet.py's train(): optimizer.zero_grad(); loss = mart_loss(...); loss.backward();
    optimizer.step() (then a print of loss.item(), nothing else)."""
    scenario = SCENARIOS["mart"]
    on_path(repo)
    official = importlib.import_module("mart")
    official.F = module_with(F, recorder, "cross_entropy", "nll_loss")
    official.torch = module_with(torch, recorder, "sum")
    model, step_batch = official_network(scenario, setting), batch(scenario, setting)
    optimizer = sgd(scenario, model, recorder)
    draw = start_draw(step_batch, "normal")
    assert draw is not None

    def run() -> dict[str, torch.Tensor]:
        with on_cpu(), StartDraw("normal", draw).installed():
            model.train()
            optimizer.zero_grad()
            loss = official.mart_loss(model=model, x_natural=step_batch.x, y=step_batch.y, optimizer=optimizer,
                                      step_size=scenario.step_size, epsilon=scenario.eps,
                                      perturb_steps=scenario.steps, beta=scenario.params["beta"])
            loss.backward()
            optimizer.step()
        return {"loss": loss}

    notes = ["train_wideresnet.py's --epsilon, --num-steps, --step-size and --beta have no type=: given on the "
             "command line they arrive as strings; the defaults are used here"]
    return OfficialStep({"model": model}, [optimizer], run, step_batch.x, notes)


def mart(repo: Path, setting: Setting) -> Result:
    recorder = Recorder()
    step = prepare_mart(repo, setting, recorder)
    left, forwards, optimizer, model = run_recorded(step, recorder)
    x_adv = forwards.calls[-1][0]  # logits_adv = model(x_adv), the last forward
    terms = mart_terms(left["loss"], recorder, len(step.inputs))
    return result(x_adv, terms, optimizer, model, forwards.describe(step.inputs, x_adv), step.notes)


def mart_terms(loss: torch.Tensor, recorder: Recorder, batch_size: int) -> dict[str, torch.Tensor]:
    """lbgat's names for the official MART terms, from the official values: bce = loss_adv =
    F.cross_entropy(...) + F.nll_loss(...) (the same sum as the official line), kl = loss_robust =
    (1.0 / batch_size) * torch.sum(...) (the last torch.sum is its outer sum)."""
    return {"loss": loss, "bce": recorder.last("cross_entropy") + recorder.last("nll_loss"),
            "kl": (1.0 / batch_size) * recorder.last("sum")}


# --- AWP (csdongxian/AWP) ---------------------------------------------------------------------------


def prepare_pgd_at_awp(repo: Path, setting: Setting, recorder: Recorder | None = None) -> OfficialStep:
    """AT_AWP/train_cifar10.py main(), one batch of epoch 0 with the defaults (--attack pgd, --restarts 1,
    --norm l_inf, --awp-gamma 0.01, --awp-warmup 0, lr 0.1 at epoch 0, proxy SGD lr 0.01)."""
    scenario = SCENARIOS["pgd-at+awp"]
    on_path(repo / "AT_AWP")
    stub_modules("torchvision")
    with on_cpu():
        script = importlib.import_module("train_cifar10")
        utils_awp = importlib.import_module("utils_awp")
    model, proxy = official_network(scenario, setting), official_network(scenario, setting)
    step_batch = batch(scenario, setting)
    X, y = step_batch.x, step_batch.y  # noqa: N806 (the script's names)
    opt = sgd(scenario, model, recorder)
    proxy_opt = torch.optim.SGD(proxy.parameters(), lr=scenario.plugins["awp"]["eta"])
    awp_adversary = utils_awp.AdvWeightPerturb(model=model, proxy=proxy, proxy_optim=proxy_opt,
                                               gamma=scenario.plugins["awp"]["gamma"])
    criterion = nn.CrossEntropyLoss()
    epsilon, pgd_alpha = 8 / 255.0, 2 / 255.0  # (args.epsilon / 255.), (args.pgd_alpha / 255.)
    draw = start_draw(step_batch, "uniform")
    assert draw is not None
    notes = [
        "attack_pgd clips its uniform start to [0, 1] (delta = clamp(delta, 0 - X, 1 - X)) and keeps the "
        "perturbation delta between steps: kept (lbgat attack.start uniform-clipped, attack.iterate delta)",
        "attack_pgd's restart-selection forward (model(normalize(X + delta)) after the last step, train mode) "
        "updates BatchNorm's running statistics; lbgat has no such forward: the buffers were restored "
        "around that one forward (its output is unchanged)",
        "main() runs model(normalize(X)) in train mode after the step and the restore, for the training "
        "accuracy log; it updates BatchNorm's running statistics; outside the method: not run",
        "the model is in train mode during attack_pgd (model.train() before the first batch; kept: lbgat "
        "bn_mode train); from the second epoch on the first batch of each epoch is attacked in eval mode "
        "(left from the test pass), which lbgat does not do",
        "normalize(X) with cifar10_mean/std is applied by the script outside the model; lbgat applies the "
        "same (x - mean) / std inside the model (create_model(mean=, std=)): kept",
    ]

    def run() -> dict[str, torch.Tensor]:
        with on_cpu(), StartDraw("uniform", draw).installed():
            model.train()  # the model's state at the first batch of epoch 0
            opt.param_groups[0].update(lr=scenario.lr)  # lr_schedule(epoch + (i + 1) / len) = lr_max at epoch 0
            with batchnorm_untouched_on_calls(model, {scenario.steps + 1}):
                delta = script.attack_pgd(model, X, y, epsilon, pgd_alpha, scenario.steps, 1, "l_inf")
            delta = delta.detach()
            x_adv = torch.clamp(X + delta[: X.size(0)], min=script.lower_limit, max=script.upper_limit)
            X_adv = script.normalize(x_adv)  # noqa: N806
            model.train()
            awp = awp_adversary.calc_awp(inputs_adv=X_adv, targets=y)
            awp_adversary.perturb(awp)
            robust_output = model(X_adv)
            robust_loss = criterion(robust_output, y)
            opt.zero_grad()
            robust_loss.backward()
            opt.step()
            awp_adversary.restore(awp)
        return {"x_adv": x_adv, "X_adv": X_adv, "X": script.normalize(X), "loss": robust_loss}

    return OfficialStep({"model": model}, [opt], run, X, notes)


def pgd_at_awp(repo: Path, setting: Setting) -> Result:
    recorder = Recorder()
    step = prepare_pgd_at_awp(repo, setting, recorder)
    left, forwards, opt, model = run_recorded(step, recorder)
    steps = SCENARIOS["pgd-at+awp"].steps
    if len(forwards.calls) != steps + 2:  # attack_pgd's steps + 1, then the loss's
        raise AssertionError(f"the step made {len(forwards.calls)} forwards, expected attack_pgd's steps + 1 "
                             "and one more")
    seen = forwards.describe(left["X"], left["X_adv"])  # the model sees normalised inputs here
    return result(left["x_adv"], {"loss": left["loss"], "ce_adv": left["loss"]}, opt, model, seen, step.notes)


def prepare_trades_awp(repo: Path, setting: Setting, recorder: Recorder | None = None) -> OfficialStep:
    """trades_AWP/train_trades_cifar.py train() itself on a one-batch loader, epoch 10 (its --awp-warmup:
    AWP on from epoch 10), with the script's defaults (beta 6, gamma 0.005, proxy SGD at --lr 0.1)."""
    scenario = SCENARIOS["trades+awp"]
    folder = repo / "trades_AWP"
    on_path(folder)
    utils_awp = importlib.import_module("utils_awp")
    misc = module_from_file(folder / "utils" / "misc.py", "trades_awp_misc")

    class Bar:  # progress.bar.Bar: a progress display
        elapsed_td = eta_td = 0
        suffix = ""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def next(self) -> None:
            pass

        def finish(self) -> None:
            pass

    def logged_accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[torch.Tensor]:
        # utils/eval.py accuracy() (the progress bar's top-1/top-5) calls .view on a non-contiguous tensor,
        # an error on current torch; it only feeds the progress display
        return [torch.zeros(1) for _ in topk]

    args = types.SimpleNamespace(beta=scenario.params["alpha"], awp_warmup=scenario.plugins["awp"]["warmup_epochs"],
                                 num_steps=scenario.steps, norm="l_inf")
    namespace: dict[str, Any] = {
        "torch": torch, "F": module_with(F, recorder, "cross_entropy", "kl_div"), "time": __import__("time"),
        "Variable": torch.autograd.Variable, "optim": torch.optim, "device": torch.device("cpu"),
        "args": args, "epsilon": 8 / 255, "step_size": 2 / 255, "AverageMeter": misc.AverageMeter,
        "accuracy": logged_accuracy, "Bar": Bar,
    }
    script = folder / "train_trades_cifar.py"
    functions_from_file(script, ("perturb_input", "train"), namespace)
    model, proxy = official_network(scenario, setting), official_network(scenario, setting)
    step_batch = batch(scenario, setting)
    optimizer = sgd(scenario, model, recorder)
    proxy_optim = torch.optim.SGD(proxy.parameters(), lr=scenario.plugins["awp"]["eta"])
    awp_adversary = utils_awp.TradesAWP(model=model, proxy=proxy, proxy_optim=proxy_optim,
                                        gamma=scenario.plugins["awp"]["gamma"])
    namespace["perturb_input"] = recorded(recorder, "x_adv", namespace["perturb_input"])
    draw = start_draw(step_batch, "normal")
    assert draw is not None

    def run() -> dict[str, torch.Tensor]:
        with on_cpu(), StartDraw("normal", draw).installed():
            model.train()
            namespace["train"](model, [(step_batch.x, step_batch.y)], optimizer, scenario.epoch, awp_adversary)
        return {}

    notes = ["utils/eval.py accuracy() (top-1/top-5 for the progress bar) fails on current torch (.view of a "
             "non-contiguous tensor); it feeds only the display: replaced by zeros",
             "AWP is on when epoch >= --awp-warmup (10) with epochs counted from 1 (--start_epoch 1): 9 epochs "
             "without AWP; lbgat counts epochs from 0 (awp.warmup_epochs 9 is the official schedule)",
             "the step's three train-mode forwards run in the order f(x_adv), f(x) (KL target), f(x) (CE); "
             "TRADES' trades_loss runs f(x), f(x_adv), f(x): the loss is the same, BatchNorm's running "
             "statistics see the batches in another order: kept"]
    return OfficialStep({"model": model}, [optimizer], run, step_batch.x, notes)


def trades_awp(repo: Path, setting: Setting) -> Result:
    recorder = Recorder()
    return recorded_with_x_adv(prepare_trades_awp(repo, setting, recorder), recorder, lambda values, loss: {
        "loss": loss, "ce": values.last("cross_entropy"), "kl": values.last("kl_div")})


# --- ISEAT (TreeLLi/ISEAT) ---------------------------------------------------------------------------


def prepare_iseat(repo: Path, setting: Setting, awp_on: bool, recorder: Recorder | None = None) -> OfficialStep:
    """src/utils/train.py update() itself on a one-batch loader, epoch 0, with the objects train() builds
    (model, tmp_model, awp_proxy with SGD lr awp_eta, the AWP, SGD lr 0.1 momentum 0.9 wd 5e-4)."""
    scenario = SCENARIOS["iseat" if awp_on else "iseat-no-awp"]
    on_path(repo)
    importlib.import_module("src.data")  # the real (namespace) packages, so the stand-ins go inside them
    attacks = ("FGSM", "PGD", "APGD", "AutoAttack", "NIFGSM", "TPGD", "Jitter")  # evaluation attacks, unused
    stub_modules(**{
        "torchattacks": dict.fromkeys(attacks),
        "src.data.factory": {"fetch_dataset": None, "DATASETS": {}},
        "src.data.dataset": {"TinyImages": None},
    })
    train_module = importlib.import_module("src.utils.train")
    awp_module = importlib.import_module("src.utils.awp")
    train_module.cross_entropy = recorded(recorder, "cross_entropy", F.cross_entropy)
    train_module.tc = module_with(torch, recorder, "mean", "sum")
    train_module.pgd = recorded(recorder, "x_adv", importlib.import_module("src.utils.adversary").pgd, first)
    gamma = scenario.params["gamma"] if awp_on else []
    args = types.SimpleNamespace(
        annealing=scenario.params["stage_epochs"], lam=scenario.params["lam"], awp_gamma=gamma,
        awp_eta=scenario.params["awp_eta"], warm_start=False, eps=scenario.eps, eps_step=scenario.step_size,
        max_iter=scenario.steps, random_init=False, device="cpu", advt=True, log_pbtc=25, rank=0)
    model, step_batch = official_network(scenario, setting), batch(scenario, setting)
    optimizer = sgd(scenario, model, recorder)
    if awp_on:
        tmp_model = official_network(scenario, setting).train()
        awp_proxy = official_network(scenario, setting)
        awp_opt = torch.optim.SGD(awp_proxy.parameters(), lr=args.awp_eta)
        awp = awp_module.AdvWeightPerturb(model=model, proxy=awp_proxy, proxy_optim=awp_opt, gamma=gamma)
        tmp_opt = torch.optim.SGD(tmp_model.parameters(), lr=scenario.lr, momentum=scenario.momentum,
                                  weight_decay=scenario.weight_decay)
    else:
        awp = tmp_model = tmp_opt = None
    train_module.adjust_learning_rate(optimizer, scenario.epoch, scenario.lr, args.annealing)
    criterion = nn.CrossEntropyLoss()

    def run() -> dict[str, torch.Tensor]:
        with on_cpu():
            train_module.update([(step_batch.x, step_batch.y)], model, criterion, optimizer, scenario.epoch, args,
                                awp, None, tmp_model, tmp_opt)
        return {}

    notes = ["update() keeps the model in train mode for the whole step: the clean forward and the 9 attack "
             "forwards (the first step reuses the clean input gradient) update BatchNorm's running statistics: "
             "kept (lbgat's iseat does the same)",
             "update() puts the rank weights on the GPU (.cuda()): a no-op here"]
    if awp_on:
        notes.append("tmp_model (the unperturbed copy that recomputes f_theta(x) for the regulariser) is "
                     "loaded after the clean forward, and its train-mode forward updates only its own "
                     "BatchNorm statistics, which are discarded with it")
    return OfficialStep({"model": model}, [optimizer], run, step_batch.x, notes)


def iseat(repo: Path, setting: Setting, awp_on: bool) -> Result:
    recorder = Recorder()
    step = prepare_iseat(repo, setting, awp_on, recorder)
    # loss = tc.mean(loss_adv) (the last tc.mean); with lam != 0, loss += tc.sum(smooth) * lam / batch_size:
    # lbgat's "smoothness" is that sum / batch_size
    return recorded_with_x_adv(step, recorder, lambda values, loss: {
        "loss": loss, "ce_adv": values.last("mean"), "smoothness": values.last("sum") / len(step.inputs)})


# --- RPAT (FlaAI/RPAT, RPAT_Benchmarks) ----------------------------------------------------------------


def _rpat_imports(repo: Path) -> None:
    on_path(repo / "RPAT_Benchmarks")
    stub_modules(**{"tensorboardX": {"SummaryWriter": object}, "common.train": {"start_epoch": 1},
                    # advertorch's JPEG defence (not used) builds torchvision transforms at import
                    "torchvision": {"transforms": types.SimpleNamespace(ToPILImage=object, ToTensor=object)}})
    gradcheck = importlib.import_module("torch.autograd.gradcheck")
    if not hasattr(gradcheck, "zero_gradients"):  # advertorch 0.2.3 imports it (for an attack not used here)
        gradcheck.zero_gradients = lambda tensor: None


class _Scheduler:
    """The epoch's lr scheduler: stepped once after the loop, which changes nothing in the step."""

    def step(self) -> None:
        pass


def _rpat_options(scenario: Scenario) -> types.SimpleNamespace:
    rpat = scenario.plugins["rpat"]
    return types.SimpleNamespace(
        n_gpus=1, RA_start=0, RA_ip_rate=rpat["r"], lam=rpat["lam"], optimizer="sgd", distance="Linf",
        alpha=scenario.step_size, epsilon=scenario.eps, n_iters=scenario.steps,
        beta=scenario.params.get("beta", scenario.params.get("alpha")))


def _rpat_step(scenario: Scenario, setting: Setting, recorder: Recorder | None, train: Any, start: str,
               adversary: Any = None, criterion: Any = None, notes: tuple[str, ...] = ()) -> OfficialStep:
    """A RPAT script's train() on a one-batch loader, epoch 1 (the first); ``adversary(model)`` builds the
    attack train() is given, where it takes one."""
    model, step_batch = official_network(scenario, setting), batch(scenario, setting)
    optimizer = sgd(scenario, model, recorder)
    draw = start_draw(step_batch, start)
    assert draw is not None
    kind = "normal" if start == "normal" else "uniform"
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    attack = () if adversary is None else (adversary(model),)

    def run() -> dict[str, torch.Tensor]:
        with on_cpu(), StartDraw(kind, draw).installed():
            model.train()
            train(_rpat_options(scenario), 1, model, criterion, optimizer, _Scheduler(),
                  [(step_batch.x, step_batch.y)], *attack)
        return {}

    return OfficialStep({"model": model}, [optimizer], run, step_batch.x, list(notes))


def prepare_pgd_at_rpat(repo: Path, setting: Setting, recorder: Recorder | None = None) -> OfficialStep:
    """adv_train_ra.py train() itself on a one-batch loader, epoch 1 (the first), with the adversary
    attack_module builds: EvalBN(advertorch PGDAttack(CE, eps 8/255, eps_iter 2/255, 10 steps, rand_init,
    clip [0, 1]))."""
    scenario = SCENARIOS["pgd-at+rpat"]
    _rpat_imports(repo)
    advertorch_attacks = importlib.import_module("advertorch.attacks")
    attack_module = importlib.import_module("adv_lib.attack")
    train_module = importlib.import_module("training.adv_train.adv_train_ra")
    train_module.criterion_ra = recorded(recorder, "mse", nn.MSELoss())
    criterion = nn.CrossEntropyLoss()

    def adversary(model: nn.Module) -> Any:
        pgd = advertorch_attacks.PGDAttack(model, loss_fn=criterion, clip_min=0, clip_max=1, eps=scenario.eps,
                                           eps_iter=scenario.step_size, ord=float("inf"), nb_iter=scenario.steps,
                                           rand_init=True)
        return recorded(recorder, "x_adv", attack_module.EvalBN(pgd))

    notes = ("advertorch clips its uniform start to [0, 1] twice (delta = clamp(x + delta, 0, 1) - x at the end of "
             "rand_init_delta and again in PGDAttack.perturb): kept (lbgat attack.start uniform-clipped)",
             "advertorch's attack calls loss.backward() (the model's parameters collect gradients during the "
             "attack); train() zeroes them (optimizer.zero_grad()) before the loss's backward: no effect",
             "train() computes loss = loss_adv_ce; loss += lam * loss_ra in place, so the logged 'LossC' is the "
             "total loss, not the CE (logging only; the stored 'ce' is the CE)")
    return _rpat_step(scenario, setting, recorder, train_module.train, "uniform-clipped", adversary,
                      recorded(recorder, "ce", criterion), notes)


def pgd_at_rpat(repo: Path, setting: Setting) -> Result:
    recorder = Recorder()
    return recorded_with_x_adv(prepare_pgd_at_rpat(repo, setting, recorder), recorder, lambda values, loss: {
        "loss": loss, "ce_adv": values.last("ce"), "rpat": values.last("mse")})


def prepare_trades_rpat(repo: Path, setting: Setting, recorder: Recorder | None = None) -> OfficialStep:
    """adv_trades_ra.py train() itself on a one-batch loader, epoch 1, with RPAT's defaults (generate_trades
    with --alpha 2/255, eps 8/255, 10 steps; beta 6; lam 1; RA_ip_rate 0.5)."""
    _rpat_imports(repo)
    train_module = importlib.import_module("training.adv_train.adv_trades_ra")
    train_module.criterion_ra = recorded(recorder, "mse", nn.MSELoss())
    train_module.F = module_with(F, recorder, "cross_entropy")
    train_module._kl_div = recorded(recorder, "kl", importlib.import_module("training")._kl_div)
    generate = importlib.import_module("adv_lib.trades").generate_trades
    train_module.generate_trades = recorded(recorder, "x_adv", generate)
    return _rpat_step(SCENARIOS["trades+rpat"], setting, recorder, train_module.train, "normal")


def trades_rpat(repo: Path, setting: Setting) -> Result:
    recorder = Recorder()
    return recorded_with_x_adv(prepare_trades_rpat(repo, setting, recorder), recorder, lambda values, loss: {
        "loss": loss, "ce": values.last("cross_entropy"), "kl": values.last("kl"), "rpat": values.last("mse")})


def prepare_mart_rpat(repo: Path, setting: Setting, recorder: Recorder | None = None) -> OfficialStep:
    """adv_mart_ra.py train() itself on a one-batch loader, epoch 1 (mart_loss_ra: MART's attack with
    --alpha 2/255, eps 8/255; beta 6; lam 1; RA_ip_rate 0.5)."""
    _rpat_imports(repo)
    mart_module = importlib.import_module("adv_lib.mart")
    train_module = importlib.import_module("training.adv_train.adv_mart_ra")
    mart_module.criterion_ra = recorded(recorder, "mse", nn.MSELoss())
    mart_module.F = module_with(F, recorder, "cross_entropy", "nll_loss")
    mart_module.torch = module_with(torch, recorder, "sum")
    return _rpat_step(SCENARIOS["mart+rpat"], setting, recorder, train_module.train, "normal")


def mart_rpat(repo: Path, setting: Setting) -> Result:
    recorder = Recorder()
    step = prepare_mart_rpat(repo, setting, recorder)
    _, forwards, optimizer, model = run_recorded(step, recorder)
    train_forwards = [inputs for inputs, training in forwards.calls if training]
    x_adv = train_forwards[1]  # mart_loss_ra: model(x_natural), model(x_adv), model(interpolation)
    terms = {**mart_terms(optimizer.loss, recorder, len(step.inputs)), "rpat": recorder.last("mse")}
    return result(x_adv, terms, optimizer, model, forwards.describe(step.inputs, x_adv), step.notes)


# scenario: (repository family, the step set up without recording, its recorded run)
FUNCTIONS = {
    "mart": ("mart", prepare_mart, mart),
    "pgd-at+awp": ("awp", prepare_pgd_at_awp, pgd_at_awp),
    "trades+awp": ("awp", prepare_trades_awp, trades_awp),
    "iseat": ("iseat", lambda repo, setting: prepare_iseat(repo, setting, awp_on=True),
              lambda repo, setting: iseat(repo, setting, awp_on=True)),
    "iseat-no-awp": ("iseat", lambda repo, setting: prepare_iseat(repo, setting, awp_on=False),
                     lambda repo, setting: iseat(repo, setting, awp_on=False)),
    "pgd-at+rpat": ("rpat", prepare_pgd_at_rpat, pgd_at_rpat),
    "trades+rpat": ("rpat", prepare_trades_rpat, trades_rpat),
    "mart+rpat": ("rpat", prepare_mart_rpat, mart_rpat),
}
STEPS = {name: (family, recorded_run) for name, (family, _, recorded_run) in FUNCTIONS.items()}
# set up without recording: benchmarks/train_step.py times them
PREPARED = {name: (family, prepare) for name, (family, prepare, _) in FUNCTIONS.items()}
