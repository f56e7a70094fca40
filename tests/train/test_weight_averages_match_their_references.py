"""Weight averaging (lbgat.train.averaging): each kind equals the official code it follows bit for bit over a
trajectory of weights (tests/fixtures/official_weight_averages.json), and an independent computation from the
definitions (values, the warm-up of the decay, the start, the cadence, each way of handling BatchNorm); in a
run, only real weights are averaged (a weight perturbation is removed first)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.averaging_trajectory import EPOCHS, SCENARIOS, STEPS_PER_EPOCH, TinyBN, images, raw_state
from helpers.paths import FIXTURES
from lbgat.checkpoints.checkpoint import load_checkpoint
from lbgat.config import AverageConfig, build_config
from lbgat.train import train
from lbgat.train.averaging import WeightAverage

STATISTICS = ("bn.running_mean", "bn.running_var")


def lbgat_average(settings: dict[str, object]) -> list[dict[str, torch.Tensor]]:
    """lbgat's average over the trajectory, called as the trainer calls it; its state at each epoch end."""
    model = TinyBN()
    model.load_state_dict(raw_state(model, 0))
    average = WeightAverage(AverageConfig(**settings), model, TinyBN())
    saved = []
    for epoch in range(EPOCHS):
        for batch in range(1, STEPS_PER_EPOCH + 1):
            model.load_state_dict(raw_state(model, epoch * STEPS_PER_EPOCH + batch))
            average.step(epoch, batch)
        average.end_epoch(epoch, images(epoch))
        saved.append({key: value.clone() for key, value in average.model.state_dict().items()})
    return saved


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_average_is_the_official_codes_bit_for_bit(name: str) -> None:
    stored = json.loads((FIXTURES / "official_weight_averages.json").read_text())["scenarios"][name]
    assert stored["settings"] == SCENARIOS[name]
    mine = lbgat_average(SCENARIOS[name])
    compared = 0
    for epoch, official in enumerate(stored["epochs"]):
        for key, values in official.items():
            if mine[epoch][key].is_floating_point():  # DA-Alone never resets num_batches_tracked; unused
                assert torch.equal(mine[epoch][key], torch.tensor(values, dtype=torch.float32)), (epoch, key)
                compared += 1
    assert compared >= 2 * 5  # the two epochs after the start at least, every parameter and statistic


def trajectory_of(key: str) -> list[torch.Tensor]:
    """The raw value of ``key`` after each step 0..EPOCHS*STEPS_PER_EPOCH, in float64."""
    model = TinyBN()
    return [raw_state(model, step)[key].double() for step in range(EPOCHS * STEPS_PER_EPOCH + 1)]


def expected_ema(key: str, decay: float, warmup: bool, start: int, every: int) -> list[torch.Tensor]:
    """a = w before the start epochs; then at every `every`-th step of an epoch a = d a + (1 - d) w, with
    d = min(decay, (1 + n)/(10 + n)) at the n-th update under the warm-up (Wang et al. 2023)."""
    weights = trajectory_of(key)
    value, updates, at_epoch_ends = weights[0], 0, []
    for epoch in range(EPOCHS):
        for batch in range(1, STEPS_PER_EPOCH + 1):
            current = weights[epoch * STEPS_PER_EPOCH + batch]
            if epoch < start:
                value = current
            elif batch % every == 0:
                d = min(decay, (1 + updates) / (10 + updates)) if warmup else decay
                value, updates = d * value + (1 - d) * current, updates + 1
        at_epoch_ends.append(value)
    return at_epoch_ends


@pytest.mark.parametrize(("warmup", "start", "every"), [(True, 1, 1), (False, 0, 2), (True, 2, 3)])
def test_ema_is_the_formula_with_its_warmup_start_and_cadence(warmup: bool, start: int, every: int) -> None:
    settings = {"kind": "ema", "decay": 0.3, "warmup": warmup, "start": start, "every": every, "bn": "ema"}
    saved = lbgat_average(settings)
    for key in ("conv.weight", "fc.bias", *STATISTICS):  # bn ema: the statistics move with the weights
        for epoch, value in enumerate(expected_ema(key, 0.3, warmup, start, every)):
            assert torch.allclose(saved[epoch][key].double(), value, rtol=0, atol=1e-6), (key, epoch)
    last_update = (EPOCHS - 1) * STEPS_PER_EPOCH + STEPS_PER_EPOCH // every * every
    assert saved[-1]["bn.num_batches_tracked"] == last_update  # the raw model's count, copied at each update


def test_the_warmup_ramps_the_decay_from_a_tenth() -> None:
    """With a decay the ramp never reaches, every update is min(decay, (1 + n)/(10 + n)) = (1 + n)/(10 + n)."""
    decays = [min(0.999, (1 + n) / (10 + n)) for n in range(STEPS_PER_EPOCH)]
    assert decays[0] == pytest.approx(0.1) and decays[1] == pytest.approx(2 / 11)
    saved = lbgat_average({"kind": "ema", "decay": 0.999, "warmup": True, "start": 0, "every": 1, "bn": "copy"})
    weights = trajectory_of("fc.weight")
    value = weights[0]
    for step, d in enumerate(decays, start=1):
        value = d * value + (1 - d) * weights[step]
    assert torch.allclose(saved[0]["fc.weight"].double(), value, rtol=0, atol=1e-6)


def test_bn_copy_takes_the_raw_statistics_at_each_epoch_end() -> None:
    saved = lbgat_average(SCENARIOS["wang2023"])
    model = TinyBN()
    for epoch, state in enumerate(saved):
        raw = raw_state(model, (epoch + 1) * STEPS_PER_EPOCH)
        for key in (*STATISTICS, "bn.num_batches_tracked"):
            assert torch.equal(state[key], raw[key]), (epoch, key)


def expected_statistics(conv_weight: torch.Tensor, conv_bias: torch.Tensor, epoch: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm running statistics from scratch over the epoch's images: the batches' means and unbiased
    variances of the conv output per channel, each batch weighted by its size."""
    means, variances, sizes = [], [], []
    for x in images(epoch):
        out = torch.nn.functional.conv2d(x.double(), conv_weight, conv_bias, padding=1)
        per_channel = out.transpose(0, 1).reshape(out.shape[1], -1)
        means.append(per_channel.mean(1))
        variances.append(per_channel.var(1, unbiased=True))
        sizes.append(len(x))
    total = sum(sizes)
    return (sum(size / total * mean for size, mean in zip(sizes, means, strict=True)),
            sum(size / total * var for size, var in zip(sizes, variances, strict=True)))


def test_swa_is_the_equal_weight_mean_with_statistics_recomputed() -> None:
    settings = SCENARIOS["da-alone-mean"]  # every 2nd step of each epoch after the first
    saved = lbgat_average(settings)
    sampled = [epoch * STEPS_PER_EPOCH + batch for epoch in range(settings["start"], EPOCHS)
               for batch in range(1, STEPS_PER_EPOCH + 1) if batch % settings["every"] == 0]
    per_epoch = [[step for step in sampled if step <= (epoch + 1) * STEPS_PER_EPOCH] for epoch in range(EPOCHS)]
    for key in ("conv.weight", "conv.bias", "bn.weight", "fc.weight"):
        weights = trajectory_of(key)
        for epoch in range(settings["start"], EPOCHS):
            mean = sum(weights[step] for step in per_epoch[epoch]) / len(per_epoch[epoch])
            assert torch.allclose(saved[epoch][key].double(), mean, rtol=0, atol=1e-6), (key, epoch)
    for epoch in range(settings["start"], EPOCHS):
        mean, variance = expected_statistics(saved[epoch]["conv.weight"].double(), saved[epoch]["conv.bias"].double(),
                                             epoch)
        assert torch.allclose(saved[epoch]["bn.running_mean"].double(), mean, rtol=0, atol=1e-6)
        assert torch.allclose(saved[epoch]["bn.running_var"].double(), variance, rtol=0, atol=1e-6)


def test_swa_with_a_decay_starts_from_the_first_sampled_weights() -> None:
    """DA-Alone's fixed weight: the first update is the weights themselves, then a = d a + (1 - d) w."""
    settings = SCENARIOS["da-alone-fixed"]
    saved = lbgat_average(settings)
    weights = trajectory_of("fc.weight")
    value = weights[1]
    for step in range(2, STEPS_PER_EPOCH + 1):
        value = 0.75 * value + 0.25 * weights[step]
    assert torch.allclose(saved[0]["fc.weight"].double(), value, rtol=0, atol=1e-6)


def test_only_real_weights_are_averaged_under_awp(tmp_path: Path) -> None:
    """AWP moves the weights for its step and moves them back after the optimiser's: with decay 0 the average is
    a copy of the weights after every update, so it equals the trained weights, not the perturbed ones."""
    config = build_config(None, {"method.name": "pgd-at", "method.plugins": ["awp"], "model": "tiny-cnn",
                                 "batch_size": 16, "max_steps": 3, "average.kind": "ema", "out": str(tmp_path / "run")},
                          ["data.val_size=0", "data.train_size=48", "attack.steps=2", "average.decay=0",
                           "average.warmup=false"])
    checkpoint = load_checkpoint(train(config, progress=False).last)
    student, average = checkpoint.network_state("student"), checkpoint.network_state("average")
    assert checkpoint.meta["average"] == {"kind": "ema", "updates": 3}
    assert student.keys() == average.keys()
    assert all(torch.equal(student[key], average[key]) for key in student)
