"""IDBH augmentation (Li & Spratling, "Data augmentation alone can improve adversarial training", ICLR 2023),
batched on the device.

Per image it is the official pipeline (TreeLLi/DA-Alone-Improves-AT 38b740a, ``src/data/idbh.py``): a random
horizontal flip, a crop-shift, one colour-or-shape operation drawn from the version's table of probabilities
and strength ranges, then random erasing. Each operation computes what Pillow computes on a uint8 image (the
official code calls it through torchvision's functional API), in the same integer, float32 and float64 steps
and in the same order, so that for the same draws the output is the official one bit for bit
(``tests/data/test_idbh_matches_official.py``; docs/training.md, "Augmentation").

What is drawn for an image, from which range and with which probability is the official code's; the draws
themselves come from the example's own counter-based streams (:mod:`lbgat.runtime.rng`), so an example's
augmentation depends only on (seed, epoch, dataset index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch

from ..runtime.rng import ExampleRNG, Stream, integers_below, unit_floats


@dataclass(frozen=True)
class Operation:
    """One entry of the colour-or-shape table: its probability and strength range [low, high) (uniform
    float32 for the colour operations and the shear, whole degrees for the rotation; none for the rest)."""

    name: str
    probability: float
    low: float = 0.0
    high: float = 0.0


# The official tables (ColorShape.ColorBiased and ShapeBiased); every version lists the operations in this order.
OPERATIONS = ("color", "brightness", "contrast", "sharpness", "autocontrast", "equalize", "shear", "rotate")
COLOUR_BIASED = (
    Operation("color", 0.125, 0.1, 1.9), Operation("brightness", 0.125, 0.5, 1.9),
    Operation("contrast", 0.125, 0.5, 1.9), Operation("sharpness", 0.125, 0.1, 1.9),
    Operation("autocontrast", 0.125), Operation("equalize", 0.125),
    Operation("shear", 0.125, 0.05, 0.15), Operation("rotate", 0.125, 1, 11),
)
SHAPE_BIASED = (
    Operation("color", 0.08, 0.1, 1.9), Operation("brightness", 0.08, 0.5, 1.9),
    Operation("contrast", 0.04, 0.5, 1.9), Operation("sharpness", 0.08, 0.1, 1.9),
    Operation("autocontrast", 0.04), Operation("equalize", 0.08),
    Operation("shear", 0.3, 0.05, 0.35), Operation("rotate", 0.3, 1, 31),
)
ERASE_RATIO = (0.3, 3.3)  # torchvision RandomErasing's default aspect range, which the official code keeps
ERASE_TRIES = 10  # RandomErasing draws up to ten rectangles and erases the first that fits


@dataclass(frozen=True)
class Version:
    official: str  # the official version string
    shift_high: int  # crop-shift strength drawn from [0, shift_high), as CropShift(0, high)
    operations: tuple[Operation, ...]
    erase_probability: float
    erase_scale: tuple[float, float]


VERSIONS = {
    "idbh-weak": Version("cifar10-weak", 11, COLOUR_BIASED, 0.5, (0.02, 0.33)),
    "idbh-strong": Version("cifar10-strong", 11, COLOUR_BIASED, 1.0, (0.02, 0.33)),
    "idbh-svhn": Version("svhn", 9, SHAPE_BIASED, 1.0, (0.02, 0.5)),
}


@dataclass
class Draws:
    """What the official code draws for each image (one row per example), in its terms.

    The official draw sites, in order: the flip (``rand < 0.5``); the crop-shift's strength, its split into
    ``crop_x`` and ``crop_y = strength - crop_x``, and two placements; the operation's ``roll`` in [0, 1); its
    uniform strength draw (colour operations, shear) or whole-degree draw (rotation); the sign and, for the
    shear, the axis; the erasing roll, up to ten (area, aspect) draws and the rectangle's place.
    """

    flip: torch.Tensor  # bool (B,)
    shift: torch.Tensor  # int64 (B, 6): strength, crop_x, first placement x, y, second placement x, y
    roll: torch.Tensor  # float32 (B,)
    strength: torch.Tensor  # float32 (B,): the unit draw u; the strength is u * (high - low) + low
    degrees: torch.Tensor  # int64 (B,): the rotation's whole degrees in [low, high), before the sign
    negative: torch.Tensor  # bool (B,): the strength's sign
    shear_x: torch.Tensor  # bool (B,): shear along x ([s, 0]), else along y ([0, s])
    erase_roll: torch.Tensor  # float32 (B,)
    erase_area: torch.Tensor  # float32 (B, 10): unit draws of the erased share of the image
    erase_ratio: torch.Tensor  # float32 (B, 10): unit draws of the log aspect ratio
    erase_place: torch.Tensor  # int64 (B, 2): the rectangle's top and left


def draw(rng: ExampleRNG, version: Version, height: int, width: int) -> Draws:
    """Each example's draws from its own streams (the same word serves the rotation's degrees and the other
    operations' strength: an example uses one of them)."""
    shift = rng.words(Stream.CROP_SHIFT, (6,))
    strength = integers_below(shift[:, 0], version.shift_high)
    crop_x = integers_below(shift[:, 1], strength + 1)
    crop_y = strength - crop_x
    places = integers_below(shift[:, 2:], torch.stack([crop_x, crop_y, crop_x, crop_y], 1) + 1)
    colour = rng.words(Stream.COLOUR_SHAPE, (4,))
    rotate = version.operations[OPERATIONS.index("rotate")]
    erase = rng.words(Stream.ERASE, (3 + 2 * ERASE_TRIES,))
    area, ratio = unit_floats(erase[:, 1:-2:2]), unit_floats(erase[:, 2:-2:2])
    _, erase_height, erase_width = erase_size(area, ratio, version, height, width)
    return Draws(
        flip=rng.uniform(Stream.FLIP) < 0.5,
        shift=torch.stack([strength, crop_x, *places.unbind(1)], 1),
        roll=unit_floats(colour[:, 0]),
        strength=unit_floats(colour[:, 1]),
        degrees=int(rotate.low) + integers_below(colour[:, 1], int(rotate.high - rotate.low)),
        negative=integers_below(colour[:, 2], 2) == 1,
        shear_x=integers_below(colour[:, 3], 2) == 1,
        erase_roll=unit_floats(erase[:, 0]),
        erase_area=area,
        erase_ratio=ratio,
        erase_place=integers_below(erase[:, -2:], torch.stack([height - erase_height, width - erase_width], 1) + 1),
    )


def augment(images: torch.Tensor, rng: ExampleRNG, version: Version) -> torch.Tensor:
    """IDBH on a uint8 batch (B, C, H, W), C = 1 or 3; returns uint8 of the same shape."""
    return apply(images, draw(rng, version, images.shape[-2], images.shape[-1]), version)


def apply(images: torch.Tensor, draws: Draws, version: Version) -> torch.Tensor:
    """The official pipeline for the given draws: flip, crop-shift, the drawn operation, erasing."""
    shifted = flip_and_shift(images, draws)
    return erase(colour_shape(shifted, draws, version), draws, version)


def _gather(images: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """``images[b, c, rows[b, i, j], columns[b, i, j]]`` where ``inside``, else 0 (the official fill)."""
    batch, channels, height, width = images.shape
    flat = (rows.clamp(0, height - 1) * width + columns.clamp(0, width - 1)).reshape(batch, 1, -1)
    picked = images.reshape(batch, channels, -1).gather(2, flat.expand(-1, channels, -1))
    picked = picked.reshape(batch, channels, *rows.shape[1:])
    return torch.where(inside[:, None], picked, torch.zeros((), dtype=images.dtype, device=images.device))


def flip_and_shift(images: torch.Tensor, draws: Draws) -> torch.Tensor:
    """RandomHorizontalFlip then CropShift: a crop of (W - crop_x) x (H - crop_y) at the first placement,
    padded with zeros by crop_x left and right and crop_y top and bottom, cropped back to W x H at the second."""
    _, _, height, width = images.shape
    device = images.device
    strength, crop_x, first_x, first_y, second_x, second_y = draws.shift.to(device).unbind(1)
    crop_y = strength - crop_x
    # Output (i, j) is padded pixel (i + second_y, j + second_x), which holds crop pixel (i + second_y - crop_y, ...).
    in_crop_rows = torch.arange(height, device=device)[None, :] + (second_y - crop_y)[:, None]
    in_crop_columns = torch.arange(width, device=device)[None, :] + (second_x - crop_x)[:, None]
    inside = (((in_crop_rows >= 0) & (in_crop_rows < (height - crop_y)[:, None]))[:, :, None]
              & ((in_crop_columns >= 0) & (in_crop_columns < (width - crop_x)[:, None]))[:, None, :])
    rows = in_crop_rows + first_y[:, None]
    columns = in_crop_columns + first_x[:, None]
    columns = torch.where(draws.flip.to(device)[:, None], width - 1 - columns, columns)
    return _gather(images, rows[:, :, None].expand(-1, -1, width), columns[:, None, :].expand(-1, height, -1), inside)


def chosen_operations(draws: Draws, version: Version, device: torch.device) -> torch.Tensor:
    """The operation's index in OPERATIONS, len(OPERATIONS) for none. The official code takes the first entry
    whose [lower, upper] holds the roll, its bounds summed in float64 and compared in float32."""
    total, uppers = 0.0, []
    for operation in version.operations:
        total += operation.probability
        uppers.append(total)
    upper = torch.tensor(uppers, dtype=torch.float32, device=device)
    return (draws.roll.to(device)[:, None] > upper).sum(1)


def colour_shape(images: torch.Tensor, draws: Draws, version: Version) -> torch.Tensor:
    """Each example's one operation; the others leave it exactly as it is (a blend with factor 1, the identity
    map), so every operation runs on the whole batch and no example waits on the host."""
    device = images.device
    chosen = chosen_operations(draws, version, device)
    index = {name: OPERATIONS.index(name) for name in OPERATIONS}
    low = torch.tensor([operation.low for operation in version.operations], dtype=torch.float32, device=device)
    # The official float32 strength, tc.rand(1) * (upper - lower) + lower: the span rounded from float64.
    span = torch.tensor([operation.high - operation.low for operation in version.operations], dtype=torch.float32,
                        device=device)
    some = chosen.clamp(max=len(OPERATIONS) - 1)
    strength = draws.strength.to(device) * span[some] + low[some]
    negative = draws.negative.to(device)  # drawn for the shear and the rotation only

    factor = torch.where(chosen <= index["sharpness"], strength, torch.ones_like(strength))
    out = blend(_degenerate(images, chosen, index), images, factor)
    out = torch.where((chosen == index["autocontrast"])[:, None, None, None], autocontrast(out), out)
    out = torch.where((chosen == index["equalize"])[:, None, None, None], equalize(out), out)
    shear = shear_matrix(torch.where(negative, -strength, strength), draws.shear_x.to(device), *images.shape[-2:])
    matrix = torch.where((chosen == index["shear"])[:, None], shear, _identity(len(images), device))
    degrees = torch.where(negative, -draws.degrees.to(device), draws.degrees.to(device))
    rotation = rotation_matrices(*images.shape[-2:], device)
    limit = (rotation.shape[0] - 1) // 2
    matrix = torch.where((chosen == index["rotate"])[:, None], rotation[degrees.clamp(-limit, limit) + limit], matrix)
    return affine_nearest(out, matrix)


def _luminance(images: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB to L conversion (ITU-R 601-2 in 16-bit fixed point, int32 suffices); a one-channel image is
    its own."""
    if images.shape[1] == 1:
        return images.to(torch.int32)
    red, green, blue = images.to(torch.int32).unbind(1)
    return ((red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16)[:, None]


def _degenerate(images: torch.Tensor, chosen: torch.Tensor, index: dict[str, int]) -> torch.Tensor:
    """The image each ImageEnhance operation blends away from, as float32 levels: grey (color), black
    (brightness), the mean grey level (contrast), the smoothed image (sharpness)."""
    luminance = _luminance(images)
    count = luminance.shape[-1] * luminance.shape[-2]
    # ImageStat's mean is the integer sum over the count in float64, rounded as int(mean + 0.5).
    # Divided by a tensor: CUDA divides by a host scalar through its reciprocal, which rounds differently.
    total = luminance.sum((1, 2, 3), dtype=torch.int64).to(torch.float64)
    mean = torch.floor(total / torch.full_like(total, count) + 0.5).to(torch.float32)
    choice = chosen[:, None, None, None]
    degenerate = torch.where(choice == index["color"], luminance.to(torch.float32), 0.0)
    degenerate = torch.where(choice == index["contrast"], mean[:, None, None, None], degenerate)
    return torch.where(choice == index["sharpness"], smooth(images).to(torch.float32), degenerate)


def blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's Image.blend(degenerate, image, factor) on uint8 levels: d + factor * (i - d) in float32 (the
    difference of two levels is exact in float32, as Pillow's integer one), clipped to [0, 255], truncated."""
    base = degenerate.to(torch.float32)
    value = base + factor.to(torch.float32)[:, None, None, None] * (images.to(torch.float32) - base)
    return value.clamp_(0.0, 255.0).to(torch.uint8)


def smooth(images: torch.Tensor) -> torch.Tensor:
    """Pillow's ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1 over 13): float32 weights 1/13 and 5/13,
    summed from 0.5 row y+1, row y, row y-1 (each left, centre, right), truncated; the border rows and
    columns are copied."""
    height, width = images.shape[-2:]
    if height < 3 or width < 3:
        return images
    thirteen = torch.tensor(13.0, dtype=torch.float32, device=images.device)
    side = torch.tensor(1.0, dtype=torch.float32, device=images.device) / thirteen
    centre = torch.tensor(5.0, dtype=torch.float32, device=images.device) / thirteen
    pixels = images.to(torch.float32)

    def at(dy: int, dx: int) -> torch.Tensor:
        return pixels[..., 1 + dy:height - 1 + dy, 1 + dx:width - 1 + dx]

    total = torch.full_like(at(0, 0), 0.5)
    for dy in (1, 0, -1):
        middle = centre if dy == 0 else side
        total = total + ((at(dy, -1) * side + at(dy, 0) * middle) + at(dy, 1) * side)
    out = images.clone()
    out[..., 1:height - 1, 1:width - 1] = total.clamp_(0.0, 255.0).to(torch.uint8)
    return out


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast (no cutoff), per channel: v * 255/(hi - lo) - lo * 255/(hi - lo) in float64,
    truncated and clipped; a channel of one value stays as it is."""
    flat = images.reshape(*images.shape[:2], -1).to(torch.int64)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    # A true division (Tensor.__rtruediv__ would multiply by a rounded reciprocal, off by one level at times).
    scale = torch.full_like(high, 255, dtype=torch.float64) / (high - low).clamp(min=1).to(torch.float64)
    offset = (-low).to(torch.float64) * scale
    levels = torch.arange(256, dtype=torch.float64, device=images.device)
    table = torch.trunc(levels * scale + offset).clamp_(0, 255).to(torch.int64)  # ImageOps' lookup table
    return torch.where(high > low, table.gather(2, flat), flat).to(torch.uint8).reshape(images.shape)


def equalize(images: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize, per channel: with step = (pixels - count of the top value) // 255, value i maps to
    (step // 2 + pixels below i) // step, clipped to 255; a channel of one value, or step 0, stays as it is."""
    flat = images.reshape(*images.shape[:2], -1).to(torch.int64)
    histogram = torch.zeros(*flat.shape[:2], 256, dtype=torch.int64, device=images.device)
    histogram.scatter_add_(2, flat, torch.ones_like(flat))
    top = histogram.gather(2, flat.amax(-1, keepdim=True))
    step = (flat.shape[-1] - top) // 255
    below = histogram.cumsum(2) - histogram
    table = ((step // 2 + below) // step.clamp(min=1)).clamp_(max=255)
    keep = ((histogram > 0).sum(2, keepdim=True) <= 1) | (step == 0)
    return torch.where(keep, flat, table.gather(2, flat)).to(torch.uint8).reshape(images.shape)


def _identity(batch: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64, device=device).expand(batch, 6)


def shear_matrix(strength: torch.Tensor, along_x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's inverse affine matrix (angle 0, no translation, scale 1, centre (W/2, H/2)) for the shear
    [s, 0] (along x) or [0, s], s = degrees(strength), in its float64 steps; (B, 6)."""
    radians = strength.to(torch.float64) * (180.0 / math.pi) * (math.pi / 180.0)  # math.radians(math.degrees(s))
    zero = torch.zeros_like(radians)
    shear_x, shear_y = torch.where(along_x, radians, zero), torch.where(along_x, zero, radians)
    rotation = zero
    a = torch.cos(rotation - shear_y) / torch.cos(shear_y)
    b = -torch.cos(rotation - shear_y) * torch.tan(shear_x) / torch.cos(shear_y) - torch.sin(rotation)
    c = torch.sin(rotation - shear_y) / torch.cos(shear_y)
    d = -torch.sin(rotation - shear_y) * torch.tan(shear_x) / torch.cos(shear_y) + torch.cos(rotation)
    centre_x, centre_y = width * 0.5, height * 0.5
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = (m0 * -centre_x + m1 * -centre_y) + centre_x
    m5 = (m3 * -centre_x + m4 * -centre_y) + centre_y
    return torch.stack([m0, m1, m2, m3, m4, m5], 1)


@cache
def _rotation_table(height: int, width: int, limit: int) -> tuple[tuple[float, ...], ...]:
    """Image.rotate's inverse matrices for whole degrees -limit..limit (no expansion, centre (W/2, H/2)), in
    Python's float64 as Pillow computes them: cos and sin rounded to 15 decimals."""
    rows = []
    for degrees in range(-limit, limit + 1):
        if degrees == 0:
            rows.append((1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
            continue
        angle = -math.radians(degrees % 360.0)
        a, b, d, e = (round(math.cos(angle), 15), round(math.sin(angle), 15),
                      round(-math.sin(angle), 15), round(math.cos(angle), 15))
        centre_x, centre_y = width / 2, height / 2
        c = a * -centre_x + b * -centre_y + 0.0 + centre_x
        f = d * -centre_x + e * -centre_y + 0.0 + centre_y
        rows.append((a, b, c, d, e, f))
    return tuple(rows)


def rotation_matrices(height: int, width: int, device: torch.device, limit: int = 30) -> torch.Tensor:
    """(2 * limit + 1, 6) float64: row limit + k is the rotation by k degrees."""
    return torch.tensor(_rotation_table(height, width, limit), dtype=torch.float64, device=device)


def fixed_point(matrix: torch.Tensor) -> torch.Tensor:
    """Pillow's 16.16 coefficients of an inverse affine matrix (B, 6): FIX(v) = floor(v * 65536 + 0.5), the
    offsets moved to the pixel centres first (c + a / 2 + b / 2); int64 (B, 6)."""

    def fixed(value: torch.Tensor) -> torch.Tensor:
        return torch.floor(value * 65536.0 + 0.5).to(torch.int64)

    m0, m1, m2, m3, m4, m5 = matrix.unbind(1)
    return torch.stack([fixed(m0), fixed(m1), fixed(m2 + m0 * 0.5 + m1 * 0.5),
                        fixed(m3), fixed(m4), fixed(m5 + m3 * 0.5 + m4 * 0.5)], 1)


def affine_nearest(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Pillow's nearest-neighbour affine transform of each image by its inverse matrix (B, 6), in Pillow's 16.16
    fixed point (its path for any image under 32768 pixels a side): coefficients FIX(v) = floor(v * 65536 +
    0.5), the offsets taken at the pixel centres; a source outside the image gives 0 (the official fill)."""
    _, _, height, width = images.shape
    device = images.device
    a0, a1, a2, a3, a4, a5 = fixed_point(matrix).unbind(1)
    y = torch.arange(height, device=device)[None, :, None]
    x = torch.arange(width, device=device)[None, None, :]

    def column(value: torch.Tensor) -> torch.Tensor:
        return value[:, None, None]

    source_x = (column(a2) + y * column(a1) + x * column(a0)) >> 16
    source_y = (column(a5) + y * column(a4) + x * column(a3)) >> 16
    inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
    return _gather(images, source_y, source_x, inside)


def erase_size(area: torch.Tensor, ratio: torch.Tensor, version: Version, height: int,
               width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RandomErasing's rectangle from its ten tries: (found, height, width), the first try whose rounded
    height and width are both below the image's. Each try: share u * (high - low) + low and log aspect in
    float32, the aspect exp'd in float32; h = round(sqrt(share * H * W * aspect)), w = round(sqrt(... /
    aspect)) in float64, rounded half to even (Python's round)."""
    device = area.device
    scale = torch.tensor(version.erase_scale, dtype=torch.float32, device=device)
    log_ratio = torch.log(torch.tensor(ERASE_RATIO, dtype=torch.float32, device=device))
    share = area * (scale[1] - scale[0]) + scale[0]
    aspect = torch.exp(ratio * (log_ratio[1] - log_ratio[0]) + log_ratio[0]).to(torch.float64)
    erased = (height * width) * share.to(torch.float64)
    tries_height = torch.round(torch.sqrt(erased * aspect)).to(torch.int64)
    tries_width = torch.round(torch.sqrt(erased / aspect)).to(torch.int64)
    fits = (tries_height < height) & (tries_width < width)
    first = fits.to(torch.int64).argmax(1, keepdim=True)
    found = fits.any(1)
    zero = torch.zeros_like(found, dtype=torch.int64)
    return (found, torch.where(found, tries_height.gather(1, first)[:, 0], zero),
            torch.where(found, tries_width.gather(1, first)[:, 0], zero))


def erase(images: torch.Tensor, draws: Draws, version: Version) -> torch.Tensor:
    """RandomErasing(p, scale) with value 0 (after ToTensor in the official code; 0 is 0 in uint8 too)."""
    _, _, height, width = images.shape
    device = images.device
    found, erase_height, erase_width = erase_size(draws.erase_area.to(device), draws.erase_ratio.to(device), version,
                                                  height, width)
    top, left = draws.erase_place.to(device).unbind(1)
    on = found & (draws.erase_roll.to(device) < version.erase_probability)
    rows = torch.arange(height, device=device)[None, :] - top[:, None]
    columns = torch.arange(width, device=device)[None, :] - left[:, None]
    inside = (((rows >= 0) & (rows < erase_height[:, None]))[:, :, None]
              & ((columns >= 0) & (columns < erase_width[:, None]))[:, None, :]) & on[:, None, None]
    return images.masked_fill(inside[:, None], 0)
