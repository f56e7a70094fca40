"""``lbgat compare --seeds 0,1,2``: each method trained once per seed, into ``OUT/<method folder>/seed<N>``.

The seed folders sit inside the method's folder (``trades-alpha6/seed0``) rather than beside it
(``trades-alpha6-seed0``): ``ls OUT`` still lists one entry per method, ``lbgat report OUT/trades-alpha6/*``
reports one method's seeds, and the report's run labels read ``trades (α=6) [seed0]``. Without ``--seeds``
the layout is that of a single run per method, ``OUT/<method folder>``, as before; the two layouts never
share an ``--out`` (see :func:`check_layout`).
"""

from __future__ import annotations

from pathlib import Path

from ..config import SEED_LIMIT
from ..errors import ConfigError
from ..train.run_dir import LAST

SEED_FOLDER = "seed{}"


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); anything else is one line naming what is wrong."""
    seeds: list[int] = []
    for part in (piece.strip() for piece in text.split(",")):
        if not part.isdigit() or not part.isascii():
            raise ConfigError(f"--seeds: {part!r} is not a seed; give integers >= 0 separated by commas, "
                              "e.g. --seeds 0,1,2")
        seed = int(part)
        if seed >= SEED_LIMIT:
            raise ConfigError(f"--seeds: {seed} is too large (seeds must be in [0, 2**63))")
        if seed in seeds:
            raise ConfigError(f"--seeds lists {seed} twice")
        seeds.append(seed)
    return tuple(seeds)


def seed_folder(method_folder: str, seed: int | None) -> str:
    """The run folder under OUT: ``trades-alpha6`` without seeds, ``trades-alpha6/seed0`` with them."""
    return method_folder if seed is None else f"{method_folder}/{SEED_FOLDER.format(seed)}"


def _holds_a_run(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() or (folder / LAST).is_file()


def check_layout(out: Path, method_folders: list[str], seeded: bool) -> None:
    """Refuse to mix the two layouts in one --out: a method folder that holds a run of a comparison without
    --seeds cannot also hold seed folders, and the other way round (the trainer would refuse it later, after
    other methods had trained)."""
    for name in method_folders:
        folder = out / name
        if not folder.is_dir():
            continue
        if seeded and _holds_a_run(folder):
            raise ConfigError(f"{folder} holds a run of a comparison without --seeds; run that command again, or "
                              "choose another --out for --seeds")
        if not seeded and any(_holds_a_run(child) for child in folder.glob("seed*") if child.is_dir()):
            raise ConfigError(f"{folder} holds the seed folders of a comparison with --seeds; add the same --seeds, "
                              "or choose another --out")
