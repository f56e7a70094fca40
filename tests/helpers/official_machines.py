"""Which stored official outputs belong to this machine.

The official training steps (tests/fixtures/official_steps*.json, tests/fixtures/official_plugins*.pt.xz) were
recorded with float32 CPU kernels, one thread. The same torch version and CPU capability do not make the
same bits: an Intel Xeon and an AMD EPYC, both AVX512, round some kernels differently (an attack's sign steps
then turn that into another adversarial example). So the outputs are stored per machine, and
tests/fixtures/official_machines.json lists, for each, what it was produced on and its files. A test uses the
entry that matches this machine (torch version, CPU capability, architecture, CPU vendor and, where
recorded, CPU model name) and is skipped, naming the machines stored, where none does.

tools/official_compare (docs/reproduction.md) produces the files for a new machine and adds its entry.
"""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path
from typing import Any

import torch

from helpers.paths import FIXTURES

DATA = FIXTURES
MANIFEST = DATA / "official_machines.json"
MATCHED = ("torch", "cpu_capability", "machine", "cpu_vendor", "cpu_model")  # None in an entry: not recorded


def _cpuinfo() -> dict[str, str]:
    """The first value of each field of /proc/cpuinfo (empty where there is none, as off Linux)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields.setdefault(name.strip().lower(), " ".join(value.split()))
    return fields


def this_machine() -> dict[str, str]:
    """What the stored outputs are keyed by, for this machine: torch version, CPU capability (the kernel
    set torch dispatches to), architecture, CPU vendor (/proc/cpuinfo ``vendor_id``, ``CPU implementer`` on
    ARM) and model name (``model name``), with platform.processor() where /proc/cpuinfo has none."""
    info = _cpuinfo()
    processor = " ".join(platform.processor().split())
    return {
        "torch": str(torch.__version__),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "cpu_vendor": info.get("vendor_id") or info.get("cpu implementer") or processor or "unknown",
        "cpu_model": info.get("model name") or info.get("hardware") or processor or "unknown",
    }


def machine_key(machine: dict[str, Any]) -> str:
    """A file-name-safe name for a machine entry, e.g. ``torch2.13.0-AVX512-AuthenticAMD-AMD-EPYC``."""
    torch_version = str(machine["torch"]).split("+")[0]
    parts = [f"torch{torch_version}", machine["cpu_capability"], machine["cpu_vendor"], machine["cpu_model"] or "any"]
    return re.sub(r"[^A-Za-z0-9.]+", "-", "-".join(str(part) for part in parts)).strip("-")


def describe(machine: dict[str, Any]) -> str:
    model = machine.get("cpu_model") or "any model"
    return (f"{machine['cpu_vendor']} {model} ({machine['machine']}, {machine['cpu_capability']}), "
            f"torch {machine['torch']}")


def load_manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text())


def matches(entry: dict[str, Any], machine: dict[str, str]) -> bool:
    return all(entry[field] is None or entry[field] == machine[field] for field in MATCHED)


def stored_for_this_machine(kind: str) -> tuple[Path | None, str]:
    """The stored file of ``kind`` ("steps" or "plugins") produced on a machine like this one (the entry
    matching it with the fewest fields not recorded), or None and why not (this machine and the machines
    stored)."""
    here = this_machine()
    entries = load_manifest()["machines"]
    matching = [entry for entry in entries if matches(entry, here)]
    if matching:  # the most specific: an entry with the exact model name before one that matches any model
        entry = min(matching, key=lambda entry: sum(entry[field] is None for field in MATCHED))
        return DATA / entry["files"][kind], describe(entry)
    stored = "; ".join(describe(entry) for entry in entries)
    return None, (f"no official outputs stored for this machine ({describe(here)}): other CPU kernels round "
                  f"differently. Stored: {stored}. Rerun tools/official_compare (docs/reproduction.md) here "
                  "to add it")


def register(kind: str, path: Path, machine: dict[str, str]) -> None:
    """Record in the manifest that ``path`` holds the ``kind`` outputs of ``machine`` (an existing entry for
    exactly this machine is updated; another machine's is left as it is)."""
    manifest = load_manifest()
    for entry in manifest["machines"]:
        if all(entry[field] == machine[field] for field in MATCHED):
            break
    else:
        entry = {**{field: machine[field] for field in MATCHED}, "files": {}}
        manifest["machines"].append(entry)
    entry["files"][kind] = path.name
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
