"""Run the official IDBH code (TreeLLi/DA-Alone-Improves-AT 38b740a, src/data/idbh.py) on fixed images and
store what it produced as test data (tests/fixtures/idbh_official.npz), checked against lbgat's batched IDBH
by tests/data/test_idbh_matches_official.py. See README.md in this folder.

    python tools/official_compare/idbh.py --official PATH/TO/DA-Alone-Improves-AT --deps /tmp/tvdeps

PATH is a git repository (a bare mirror is fine); the commit is extracted into a temporary folder and the
official module imported from there. torchvision is not a dependency of lbgat: install it into a folder of its
own (``pip install --no-deps --target /tmp/tvdeps torchvision==0.28.0``, the release for torch 2.13).

What is stored, all uint8 outputs of the official code:
  * each colour-or-shape operation alone (``ColorShape.transform``), its strength draw given: the four blends
    at several strengths on generated colour and grey images, autocontrast and equalize on them, the shear
    (both tables' ranges, both signs and axes) and every rotation (+-1..30 degrees) on coordinate images
    (nearest-neighbour geometry is independent of the content, so an image whose pixels name their own
    position shows the whole map);
  * the whole pipeline (``IDBH(version)``) for each version, its torch draws replaced by lbgat's draws for
    (seed, epoch, dataset index) in the order the official code draws them.
It also prints lbgat's largest difference per operation (0 everywhere means bit for bit), and the
exhaustive checks of the draws whose arithmetic goes through float64 transcendentals: the operation chosen
for every one of the 2**24 rolls, and the shear's fixed-point coefficients for every strength draw.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "src"), str(ROOT / "tests")]

from harness import checkout  # noqa: E402

from helpers.idbh_cases import DRAW_FIELDS, EPOCHS, SEED, operation_draws, table_version  # noqa: E402
from lbgat.data import idbh  # noqa: E402
from lbgat.runtime.rng import ExampleRNG  # noqa: E402

COMMIT = "38b740aeffe5933c16869a126c6972ef443a8352"
OUT = ROOT / "tests" / "fixtures" / "idbh_official.npz"
BLEND_DRAWS = (0.0, 0.125, 0.5, 0.8125, 1.0 - 2.0**-24)  # unit draws u; strength u * (high - low) + low
SHEAR_DRAWS = (0.0, 0.3, 1.0 - 2.0**-24)


def import_official(tree: Path, deps: str) -> types.ModuleType:
    """The official idbh module, with torchvision from ``deps``. torchvision's operator registrations need its
    compiled operators, which a CUDA wheel cannot load beside a CPU torch; the transforms never use them, so
    those two modules are empty stand-ins."""
    sys.path[:0] = [deps, str(tree)]
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules[name] = types.ModuleType(name)
    from src.data import idbh as official  # type: ignore[import-not-found]
    return official


# ---------------------------------------------------------------- the images

def generated_images(count: int, channels: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth random fields with noise, each in its own value range (dark, low-contrast, full, ...), and two
    edge cases: one flat image (autocontrast and equalize leave it) and one of two values."""
    rng = np.random.default_rng(seed)
    images = []
    ranges = [(0, 255), (100, 140), (0, 60), (190, 255), (30, 220), (0, 255)]
    for number in range(count):
        if number == count - 1:
            images.append(np.full((channels, height, width), 77, dtype=np.uint8))
            continue
        if number == count - 2 and count > 2:
            images.append(np.where(rng.random((channels, height, width)) < 0.7, 40, 200).astype(np.uint8))
            continue
        low, high = ranges[number % len(ranges)]
        coarse = torch.from_numpy(rng.random((1, channels, 4, 5), dtype=np.float32))
        field = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)[0]
        noisy = field.numpy() * 0.85 + rng.random((channels, height, width), dtype=np.float32) * 0.15
        images.append(np.clip(low + noisy * (high - low + 1), low, high).astype(np.uint8))
    return np.stack(images)


def coordinate_image(height: int, width: int) -> np.ndarray:
    """Red 1 + x, green 1 + y: every pixel names its position, and 0 is the official fill."""
    y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([1 + x, 1 + y, np.full_like(x, 255)]).astype(np.uint8)[None]


SOURCES = {
    "rgb32": lambda: generated_images(8, 3, 32, 32, seed=1),
    "grey32": lambda: generated_images(3, 1, 32, 32, seed=2),
    "rgb24x40": lambda: generated_images(3, 3, 24, 40, seed=3),
    "coords32": lambda: coordinate_image(32, 32),
    "coords24x40": lambda: coordinate_image(24, 40),
}


def to_pil(image: np.ndarray) -> Any:
    from PIL import Image
    return Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))


def from_pil(image: Any) -> np.ndarray:
    array = np.asarray(image)
    return array[None].copy() if array.ndim == 2 else array.transpose(2, 0, 1).copy()


def from_tensor(image: torch.Tensor) -> np.ndarray:
    """ToTensor's float32 v / 255 back to v (exact: |x * 255 - v| < 1e-4)."""
    return torch.round(image.double() * 255).to(torch.uint8).numpy()


# ---------------------------------------------------------------- the official draws, scripted

class Script:
    """The official code's torch draws (torch.rand, torch.randint, Tensor.uniform_) answered from a list of
    (kind, expected arguments, value); a call of another kind or range than expected is an error, so the
    official code must draw what lbgat's draws say, in that order."""

    def __init__(self, entries: list[tuple[str, Any, Any]]) -> None:
        self.entries = list(entries)

    def _next(self, kind: str, arguments: Any) -> Any:
        if not self.entries:
            raise AssertionError(f"the official code drew {kind}{arguments} beyond the script")
        expected_kind, expected, value = self.entries.pop(0)
        if expected_kind != kind or (expected is not None and expected != arguments):
            raise AssertionError(f"the official code drew {kind}{arguments}, the script has {expected_kind}{expected}")
        return value

    @contextlib.contextmanager
    def installed(self) -> Iterator[Script]:
        saved = torch.rand, torch.randint, torch.Tensor.uniform_
        script = self

        def rand(*size: Any, **kwargs: Any) -> torch.Tensor:
            return torch.tensor([script._next("rand", None)], dtype=torch.float32)

        def randint(*args: Any, size: Any = None, **kwargs: Any) -> torch.Tensor:
            numbers = [int(a) for a in args if not isinstance(a, tuple)]
            low, high = (0, numbers[0]) if len(numbers) == 1 else (numbers[0], numbers[1])
            return torch.tensor([script._next("randint", (low, high))], dtype=torch.int64)

        def uniform_(tensor: torch.Tensor, low: Any = 0.0, high: Any = 1.0, **kwargs: Any) -> torch.Tensor:
            bounds = torch.tensor([float(low), float(high)], dtype=torch.float32)
            unit = torch.tensor(script._next("uniform", None), dtype=torch.float32)
            return tensor.fill_(unit * (bounds[1] - bounds[0]) + bounds[0])  # lbgat's erase_size arithmetic

        torch.rand, torch.randint, torch.Tensor.uniform_ = rand, randint, uniform_  # type: ignore[assignment]
        try:
            yield self
        finally:
            torch.rand, torch.randint, torch.Tensor.uniform_ = saved  # type: ignore[method-assign]
        if self.entries:
            raise AssertionError(f"the official code left {len(self.entries)} scripted draws unused")


def operation_script(name: str, operation: idbh.Operation, u: float, negative: bool, shear_x: bool,
                     degrees: int) -> list[tuple[str, Any, Any]]:
    """The draws ColorShape.transform makes for one operation."""
    if name == "rotate":
        return [("randint", (int(operation.low), int(operation.high)), degrees), ("randint", (0, 2), int(negative))]
    if name == "shear":
        return [("rand", None, u), ("randint", (0, 2), int(negative)), ("randint", (0, 2), int(shear_x))]
    if name in ("autocontrast", "equalize"):
        return []
    return [("rand", None, u)]


def pipeline_script(draws: idbh.Draws, row: int, version: idbh.Version, height: int,
                    width: int) -> list[tuple[str, Any, Any]]:
    """Example ``row``'s draws in the official order: flip, crop-shift, roll, the operation's own, erasing."""
    strength, crop_x, first_x, first_y, second_x, second_y = (int(v) for v in draws.shift[row])
    crop_y = strength - crop_x
    entries: list[tuple[str, Any, Any]] = [
        ("rand", None, 0.25 if bool(draws.flip[row]) else 0.75),
        ("randint", (0, version.shift_high), strength), ("randint", (0, strength + 1), crop_x),
        ("randint", (0, crop_x + 1), first_x), ("randint", (0, crop_y + 1), first_y),
        ("randint", (0, crop_x + 1), second_x), ("randint", (0, crop_y + 1), second_y),
        ("rand", None, float(draws.roll[row]))]
    chosen = int(idbh.chosen_operations(draws, version, torch.device("cpu"))[row])
    if chosen < len(idbh.OPERATIONS):
        entries += operation_script(idbh.OPERATIONS[chosen], version.operations[chosen], float(draws.strength[row]),
                                    bool(draws.negative[row]), bool(draws.shear_x[row]), int(draws.degrees[row]))
    entries.append(("rand", None, float(draws.erase_roll[row])))
    if float(draws.erase_roll[row]) < version.erase_probability:
        found, erase_height, erase_width = idbh.erase_size(draws.erase_area, draws.erase_ratio, version, height, width)
        area, ratio = draws.erase_area[row], draws.erase_ratio[row]
        fits = [bool(v) for v in _fits(area, ratio, version, height, width)]
        tries = fits.index(True) + 1 if any(fits) else idbh.ERASE_TRIES
        for number in range(tries):
            entries += [("uniform", None, float(area[number])), ("uniform", None, float(ratio[number]))]
        if bool(found[row]):
            top, left = (int(v) for v in draws.erase_place[row])
            entries += [("randint", (0, height - int(erase_height[row]) + 1), top),
                        ("randint", (0, width - int(erase_width[row]) + 1), left)]
    return entries


def _fits(area: torch.Tensor, ratio: torch.Tensor, version: idbh.Version, height: int, width: int) -> list[bool]:
    """Which of one example's ten tries fit, each computed alone (as the official loop does)."""
    out = []
    for number in range(idbh.ERASE_TRIES):
        found, _, _ = idbh.erase_size(area[None, number:number + 1], ratio[None, number:number + 1], version,
                                      height, width)
        out.append(bool(found[0]))
    return out


# ---------------------------------------------------------------- the cases

def operation_cases(source: str) -> list[dict[str, Any]]:
    """(operation, table, u, negative, shear_x, degrees) run on every image of ``source``."""
    cases: list[dict[str, Any]] = []
    base = {"u": 0.0, "negative": False, "shear_x": False, "degrees": 0}
    if source.startswith("coords"):
        for table in ("colour", "shape"):
            for u in SHEAR_DRAWS:
                for negative in (False, True):
                    for shear_x in (False, True):
                        cases.append({**base, "operation": "shear", "table": table, "u": u, "negative": negative,
                                      "shear_x": shear_x})
        for degrees in range(1, 31):
            for negative in (False, True):
                cases.append({**base, "operation": "rotate", "table": "shape", "degrees": degrees,
                              "negative": negative})
        return cases
    for name in ("color", "brightness", "contrast", "sharpness"):
        for u in BLEND_DRAWS:
            cases.append({**base, "operation": name, "table": "colour", "u": u})
    for name in ("autocontrast", "equalize"):
        cases.append({**base, "operation": name, "table": "colour"})
    return cases


def official_operation(official: types.ModuleType, image: np.ndarray, case: dict[str, Any]) -> np.ndarray:
    shape = official.ColorShape("color" if case["table"] == "colour" else "shape")
    version = table_version(case["table"])
    operation = version.operations[idbh.OPERATIONS.index(case["operation"])]
    trans = next(trans for trans in shape.space.values() if trans[0] == case["operation"])
    script = Script(operation_script(case["operation"], operation, case["u"], case["negative"], case["shear_x"],
                                     case["degrees"]))
    with script.installed():
        return from_pil(shape.transform(to_pil(image), trans))


def run_operations(official: types.ModuleType, stored: dict[str, np.ndarray], images: dict[str, np.ndarray]) -> None:
    worst: dict[str, int] = {}
    for source, batch in images.items():
        cases = operation_cases(source)
        outputs = np.stack([np.stack([official_operation(official, image, case) for image in batch])
                            for case in cases])
        for key in ("operation", "table"):
            stored[f"{source}.op.{key}"] = np.array([case[key] for case in cases])
        stored[f"{source}.op.u"] = np.array([case["u"] for case in cases], dtype=np.float32)
        stored[f"{source}.op.negative"] = np.array([case["negative"] for case in cases])
        stored[f"{source}.op.shear_x"] = np.array([case["shear_x"] for case in cases])
        stored[f"{source}.op.degrees"] = np.array([case["degrees"] for case in cases], dtype=np.int64)
        stored[f"{source}.op.out"] = outputs
        for case, expected in zip(cases, outputs, strict=True):
            draws = operation_draws(case["operation"], case["table"], len(batch), u=case["u"],
                                    negative=case["negative"], shear_x=case["shear_x"], degrees=case["degrees"])
            ours = idbh.colour_shape(torch.from_numpy(batch), draws, table_version(case["table"]))
            gap = int((ours.to(torch.int16) - torch.from_numpy(expected).to(torch.int16)).abs().max())
            worst[case["operation"]] = max(worst.get(case["operation"], 0), gap)
    print("largest difference per operation (uint8 levels):", json.dumps(worst))


def run_pipelines(official: types.ModuleType, stored: dict[str, np.ndarray], images: dict[str, np.ndarray]) -> None:
    worst: dict[str, int] = {}
    for source in ("rgb32", "grey32", "rgb24x40"):
        batch = images[source]
        _, _, height, width = batch.shape
        for name, version in idbh.VERSIONS.items():
            for epoch in EPOCHS:
                draws = idbh.draw(ExampleRNG(SEED, epoch, torch.arange(len(batch))), version, height, width)
                expected = []
                for row, image in enumerate(batch):
                    with Script(pipeline_script(draws, row, version, height, width)).installed():
                        expected.append(from_tensor(official.IDBH(version.official)(to_pil(image))))
                prefix = f"{source}.{name}.epoch{epoch}"
                stored[f"{prefix}.out"] = np.stack(expected)
                for field in DRAW_FIELDS:
                    stored[f"{prefix}.draws.{field}"] = getattr(draws, field).numpy()
                ours = idbh.apply(torch.from_numpy(batch), draws, version)
                gap = int((ours.to(torch.int16) - torch.from_numpy(np.stack(expected)).to(torch.int16)).abs().max())
                worst[name] = max(worst.get(name, 0), gap)
    print("largest difference per version, whole pipeline:", json.dumps(worst))


# ---------------------------------------------------------------- exhaustive checks

def check_rolls(official: types.ModuleType) -> None:
    """The operation chosen for each of the 2**24 rolls: the official loop's comparisons (a float32 tensor
    against float64 bounds, as torch compares them) against lbgat's."""
    rolls = torch.arange(1 << 24, dtype=torch.float32) * 2.0**-24
    for table, version in (("color", idbh.VERSIONS["idbh-weak"]), ("shape", idbh.VERSIONS["idbh-svhn"])):
        space = official.ColorShape(table).space
        chosen = torch.full(rolls.shape, len(idbh.OPERATIONS), dtype=torch.int64)
        for (lower, upper), trans in reversed(list(space.items())):
            chosen = torch.where((rolls <= upper) & (rolls >= lower), idbh.OPERATIONS.index(trans[0]), chosen)
        draws = types.SimpleNamespace(roll=rolls)
        ours = idbh.chosen_operations(draws, version, torch.device("cpu"))  # type: ignore[arg-type]
        print(f"{table} table: operation chosen differently for {int((ours != chosen).sum())} of 2**24 rolls")


def reference_matrices(t: np.ndarray, along_x: bool, height: int, width: int) -> np.ndarray:
    """torchvision's inverse matrix for the shear, from its one transcendental value t (tan(sx) along x,
    sin(sy) / cos(sy) along y; the rest is IEEE arithmetic on exact constants): (N, 6) float64."""
    centre_x, centre_y = width * 0.5, height * 0.5
    one, zero = np.ones_like(t), np.zeros_like(t)
    if along_x:
        m0, m1, m3, m4 = one, t, -zero, one
    else:
        m0, m1, m3, m4 = one, zero, t, one
    m2 = 0.0 + (m0 * (-centre_x - 0) + m1 * (-centre_y - 0)) + centre_x
    m5 = 0.0 + (m3 * (-centre_x - 0) + m4 * (-centre_y - 0)) + centre_y
    return np.stack([m0, m1, m2, m3, m4, m5], 1)


def transcendental(values: list[float], along_x: bool) -> np.ndarray:
    """t for each strength, through Python's math as torchvision computes it."""
    if along_x:
        return np.array([math.tan(math.radians(math.degrees(v))) for v in values])
    return np.array([-(math.sin(0.0 - r) / math.cos(r)) for r in (math.radians(math.degrees(v)) for v in values)])


def check_shear_reference_against_torchvision() -> None:
    """reference_matrices is torchvision's own matrix, entry for entry (a sample of strengths)."""
    from torchvision.transforms.functional import _get_inverse_affine_matrix
    values = np.random.default_rng(0).uniform(-0.35, 0.35, 20000).astype(np.float32).tolist()
    for along_x in (True, False):
        ours = reference_matrices(transcendental(values, along_x), along_x, 32, 32)
        for value, row in zip(values, ours, strict=True):
            shear = [math.degrees(value), 0.0] if along_x else [0.0, math.degrees(value)]
            assert row.tolist() == _get_inverse_affine_matrix([16.0, 16.0], 0.0, [0, 0], 1.0, shear), value


def check_shear_coefficients() -> None:
    """The shear's 16.16 coefficients for every strength draw u (2**24 per table, both axes, both signs):
    Python's math (torchvision's arithmetic) against lbgat's torch float64."""
    units = torch.arange(1 << 24, dtype=torch.float32) * 2.0**-24
    for table in ("colour", "shape"):
        version = table_version(table)
        shear = version.operations[idbh.OPERATIONS.index("shear")]
        positive = units * (shear.high - shear.low) + shear.low  # the official tc.rand(1) * (upper-lower) + lower
        for strength in (positive, -positive):
            values = strength.double().tolist()
            for along_x in (True, False):
                ours = idbh.shear_matrix(strength, torch.full(strength.shape, along_x), 32, 32)
                reference = torch.from_numpy(reference_matrices(transcendental(values, along_x), along_x, 32, 32))
                bits = int((ours != reference).any(1).sum())
                fixed = int((idbh.fixed_point(ours) != idbh.fixed_point(reference)).any(1).sum())
                print(f"{table} shear, {'negative' if strength is not positive else 'positive'}, along "
                      f"{'x' if along_x else 'y'}: the float64 matrix differs in its last bits for {bits} of 2**24 "
                      f"draws, its 16.16 coefficients for {fixed}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="git repository of DA-Alone-Improves-AT")
    parser.add_argument("--commit", default=COMMIT)
    parser.add_argument("--deps", required=True, help="folder holding torchvision (pip install --target)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--skip-exhaustive", action="store_true", help="only the stored cases")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tree, commit = checkout(args.official, args.commit)
    official = import_official(tree, args.deps)
    import PIL
    import torchvision

    images = {name: make() for name, make in SOURCES.items()}
    stored: dict[str, np.ndarray] = {f"{name}.images": batch for name, batch in images.items()}
    run_operations(official, stored, images)
    run_pipelines(official, stored, images)
    stored["meta"] = np.array(json.dumps({
        "official": f"TreeLLi/DA-Alone-Improves-AT {commit} src/data/idbh.py", "seed": SEED, "epochs": list(EPOCHS),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "Pillow": PIL.__version__}))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **stored)
    args.out.write_bytes(buffer.getvalue())
    print(f"wrote {args.out} ({len(buffer.getvalue())} bytes)")
    if not args.skip_exhaustive:
        check_shear_reference_against_torchvision()
        check_rolls(official)
        check_shear_coefficients()
    return 0


if __name__ == "__main__":
    sys.exit(main())
