"""The logit embedding of LBGAT Figs. 3-4: a model's logits on clean test images of k sampled classes and
on their adversarial versions, embedded together in 2-D by scikit-learn's t-SNE.

The adversarial inputs come from the evaluation's strongest PGD (or CW) attack, with its settings, so the
picture matches the numbers in the table; without an evaluation, the dataset's default PGD.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.manifold import TSNE

from ..checkpoints.loading import load_for_eval
from ..config import threat_profile
from ..data import load_dataset
from ..data.loader import Batch
from ..errors import ConfigError
from ..evaluate import AttackSpec
from ..evaluate.suite import adversarial_examples
from ..runtime.world import resolve_device
from .collect import Run
from .summary import attack_kind, attack_title

DEFAULT_CLASSES = 5
DEFAULT_PER_CLASS = 50
DEFAULT_PERPLEXITY = 30.0


@dataclass(frozen=True)
class EmbeddingSettings:
    classes: int = DEFAULT_CLASSES  # k classes sampled with ``seed``
    per_class: int = DEFAULT_PER_CLASS  # test images per class, sampled with ``seed``
    seed: int = 0
    perplexity: float = DEFAULT_PERPLEXITY  # capped below the number of points
    batch_size: int = 200
    device: str = "auto"
    data_root: str | None = None  # default: the one the run trained on

    def check(self) -> None:
        if self.classes < 2:
            raise ConfigError(f"--tsne-classes must be >= 2, got {self.classes}")
        if self.per_class < 2:
            raise ConfigError(f"--tsne-per-class must be >= 2, got {self.per_class}")
        if self.perplexity <= 0:
            raise ConfigError(f"--tsne-perplexity must be > 0, got {self.perplexity}")


@dataclass(frozen=True)
class Embedding:
    coordinates: np.ndarray  # (2N, 2): the N clean points, then their N adversarial versions
    labels: np.ndarray  # (2N,) index into class_names
    adversarial: np.ndarray  # (2N,) bool
    class_names: list[str]
    attack: str  # e.g. "PGD-20"
    settings: dict[str, Any]  # everything needed to redo it, for the caption and report.json


def checkpoint_of(run: Run) -> Path:
    """The checkpoint the run's evaluation measured, else the run's last.pt."""
    if run.evaluation is not None and run.evaluation.checkpoint.get("path"):
        recorded = Path(run.evaluation.checkpoint["path"])
        if recorded.is_file():
            return recorded
    if run.run_dir is not None and (run.run_dir / "last.pt").is_file():
        return run.run_dir / "last.pt"
    raise ConfigError(f"--tsne needs the checkpoint of {run.label!r}, and none was found")


def sample_text(used: dict[str, int], asked: int) -> str:
    """The images the embedding was fitted on, in the caption's words, from the numbers actually sampled:
    ``50 mnist test images of each of 5 classes`` with what fell short of ``--tsne-per-class`` said."""
    counts = [count for count in used.values() if count]
    if not counts:
        return "no test images"
    low, high = min(counts), max(counts)
    amount = str(low) if low == high else f"{low} to {high}"
    text = f"{amount} test images of each of {len(counts)} classes"
    short = [f"{name} ({count})" for name, count in used.items() if count < asked]
    if len(short) == len(used):
        text += f" (all the test split holds; {asked} were asked)"
    elif short:
        text += (f" ({asked} asked per class; the test split holds fewer of class{'es' if len(short) > 1 else ''} "
                 f"{', '.join(short)}: all of those were used)")
    return text


def _attack_spec(run: Run, eps_default: float, step_default: float, steps_default: int) -> AttackSpec:
    rows = [row for row in (run.evaluation.results if run.evaluation else []) if attack_kind(row) in ("pgd", "cw")]
    if rows:
        row = max(rows, key=lambda row: (attack_kind(row) == "pgd", int(row.get("steps") or 0)))
        return AttackSpec(name=row["attack"], kind=attack_kind(row), eps=float(row["eps"]), steps=int(row["steps"]),
                          step_size=float(row["step_size"]), random_start=bool(row.get("random_start", True)),
                          kappa=row.get("kappa"), norm=str(row.get("norm", "Linf")))
    return AttackSpec(name=f"pgd{steps_default}", kind="pgd", eps=eps_default, steps=steps_default,
                      step_size=step_default, random_start=True)


def logit_embedding(run: Run, settings: EmbeddingSettings) -> Embedding:
    settings.check()
    checkpoint = checkpoint_of(run)
    device = resolve_device(settings.device)
    loaded = load_for_eval(checkpoint, device=device)
    meta = loaded.meta or {}
    trained_on = meta.get("dataset", {})
    name = (run.evaluation.protocol.get("dataset") if run.evaluation else None) or trained_on.get("name")
    if not name:
        raise ConfigError(f"--tsne: {checkpoint} does not say which data it was trained on")
    image_size = meta.get("config", {}).get("data", {}).get("image_size")
    dataset = load_dataset(name, settings.data_root or trained_on.get("root"), image_size=image_size)
    if settings.classes > dataset.num_classes:
        raise ConfigError(f"--tsne-classes {settings.classes} is more than the {dataset.num_classes} classes of "
                          f"{dataset.name}")
    generator = torch.Generator().manual_seed(settings.seed)
    classes = torch.randperm(dataset.num_classes, generator=generator)[: settings.classes].sort().values
    labels_all = dataset.test.labels
    chosen: list[torch.Tensor] = []
    for cls in classes.tolist():
        members = torch.nonzero(labels_all == cls).flatten()
        order = torch.randperm(len(members), generator=generator)[: settings.per_class]
        chosen.append(members[order].sort().values)
    index = torch.cat(chosen)
    # What was used, which is less than asked where a class holds fewer test images: the caption says this.
    used = {dataset.classes[cls]: len(members) for cls, members in zip(classes.tolist(), chosen, strict=True)}
    profile = threat_profile(dataset.image_shape[0])
    spec = _attack_spec(run, profile.eps, profile.eval_step_size, profile.eval_steps)
    clean_logits, adversarial_logits = [], []
    model = loaded.model.to(device).eval()
    for start in range(0, len(index), settings.batch_size):
        part = index[start:start + settings.batch_size]
        x = dataset.test.images[part].to(device).float().div_(255)
        y = labels_all[part].to(device)
        batch = Batch(x, y, part.to(device), epoch=0, seed=settings.seed)
        x_adv = adversarial_examples(model, batch, spec)
        with torch.no_grad():
            clean_logits.append(model(x).float().cpu())
            adversarial_logits.append(model(x_adv).float().cpu())
    logits = torch.cat([torch.cat(clean_logits), torch.cat(adversarial_logits)]).numpy().astype(np.float64)
    points = len(logits)
    perplexity = min(settings.perplexity, (points - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=settings.seed,
                max_iter=1000)
    coordinates = tsne.fit_transform(logits)
    class_of = {cls: position for position, cls in enumerate(classes.tolist())}
    labels = np.array([class_of[int(label)] for label in labels_all[index].tolist()] * 2)
    adversarial = np.array([False] * len(index) + [True] * len(index))
    attack_row = {"attack": spec.name, "kind": spec.kind, "steps": spec.steps}
    recorded = {
        "checkpoint": str(checkpoint), "dataset": dataset.name, "split": "test",
        "classes": [dataset.classes[cls] for cls in classes.tolist()], "per_class_asked": settings.per_class,
        "per_class_used": used,
        "points": points, "seed": settings.seed, "attack": spec.describe(),
        "tsne": {"perplexity": perplexity, "init": "pca", "learning_rate": "auto", "max_iter": 1000,
                 "metric": "euclidean", "random_state": settings.seed, "input": "raw logits (no softmax)",
                 "fit": "clean and adversarial logits embedded together"},
    }
    return Embedding(coordinates, labels, adversarial, recorded["classes"], attack_title(attack_row), recorded)
