"""What ``lbgat compare --methods`` names: one entry per method to train, each with its own hyperparameters.

``--methods natural,pgd-at,trades:alpha=6,lbgat-trades:alpha=0`` is four entries; ``NAME:KEY=VALUE[:KEY=VALUE]``
sets ``method.KEY`` for that entry only (on top of the shared recipe and ``--set``): a plug-in is
``trades:plugins=[rpat]``, its setting ``trades:plugins=[rpat]:rpat.lam=2``. Commas and colons inside ``[...]``
belong to the value, so ``trades:plugins=[rpat,awp]`` is one entry with two plug-ins; ``trades+rpat+awp`` (the
name the report gives such a run) is the same entry. A key set twice in one entry is refused: only one value
could be trained.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError
from ..methods import list_methods
from ..methods.plugin import plugin_names

GREEK = {"alpha": "α", "beta": "β", "gamma": "γ", "lam": "λ"}
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


@dataclass(frozen=True)
class CompareEntry:
    """One method of a comparison: its name, its own settings (``method.KEY=VALUE``), and its run folder."""

    method: str
    params: tuple[tuple[str, str], ...] = ()  # (key under method., value as written)
    folder: str = ""  # default: the method and its settings, e.g. trades-alpha6

    @property
    def overrides(self) -> list[str]:
        return [f"method.{key}={value}" for key, value in self.params]

    @property
    def label(self) -> str:
        shown = ", ".join(f"{GREEK.get(key, key)}={value}" for key, value in self.params)
        return f"{self.method} ({shown})" if shown else self.method

    @property
    def run_folder(self) -> str:
        if self.folder:
            return self.folder
        # trades-alpha6, trades-plugins-rpat-awp, trades-rpat.lam2: readable, and one folder per setting
        suffix = "".join(f"-{key}{re.sub(r'[^A-Za-z0-9.+-]+', '-', value).strip('-')}" for key, value in self.params)
        return self.method + suffix


def parse_methods(text: str) -> list[CompareEntry]:
    """``"natural,trades:alpha=6"`` -> entries; unknown methods and malformed settings are one-line errors."""
    known = {method.name for method in list_methods()}
    entries: list[CompareEntry] = []
    for part in (piece.strip() for piece in _split(text, ",", text)):
        if not part:
            continue
        head, *settings = _split(part, ":", part)
        name, *plugins = head.split("+")
        if name not in known:
            raise ConfigError(f"--methods: unknown method {name!r}; known: {', '.join(sorted(known))}")
        params: list[tuple[str, str]] = [("plugins", f"[{','.join(_plugins(plugins, part))}]")] if plugins else []
        for setting in settings:
            key, equals, value = setting.partition("=")
            if not equals or not _KEY.fullmatch(key) or not value:
                raise ConfigError(f"--methods: {part!r}: write a method's own setting as NAME:KEY=VALUE "
                                  f"(e.g. trades:alpha=6), got {setting!r}")
            if any(key == earlier for earlier, _ in params):
                how = " (once as NAME+PLUGIN)" if key == "plugins" and plugins else ""
                raise ConfigError(f"--methods: {part!r} sets {key} twice{how}; give each setting once")
            params.append((key, value))
        entries.append(CompareEntry(name, tuple(params)))
    if not entries:
        raise ConfigError("--methods: no method given (e.g. --methods natural,pgd-at,trades,lbgat-trades)")
    folders = [entry.run_folder for entry in entries]
    repeated = sorted({folder for folder in folders if folders.count(folder) > 1})
    if repeated:
        raise ConfigError(f"--methods lists {repeated[0]} twice")
    return entries


def _split(text: str, separator: str, whole: str) -> list[str]:
    """``text`` split at ``separator`` outside brackets: ``[rpat,awp]`` is one value, not two methods."""
    parts: list[str] = []
    depth, start = 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                break
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth != 0:
        raise ConfigError(f"--methods: {whole!r} has an unmatched bracket; write a list of plug-ins as "
                          "NAME:plugins=[rpat,awp]")
    return [*parts, text[start:]]


def _plugins(names: list[str], part: str) -> list[str]:
    """The plug-ins of ``NAME+PLUGIN+PLUGIN``, each known, none twice."""
    known = plugin_names()
    for position, plugin in enumerate(names):
        if plugin not in known:
            raise ConfigError(f"--methods: {part!r}: unknown plug-in {plugin!r}; known: {', '.join(sorted(known))}")
        if plugin in names[:position]:
            raise ConfigError(f"--methods: {part!r} names the plug-in {plugin} twice")
    return names
