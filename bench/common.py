"""What every benchmark shares: waiting for the device, describing the machine, writing figures.

Each bench script prints its figures and writes them as one JSON file (`--out`). Beside the
figures stands the machine they were taken on, with the same keys everywhere: on a CPU shared
with other work, the load average before and after says how much a figure can be trusted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work, so that a wall clock read next times it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (empty where the system has none)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_name()} ({torch.get_num_threads()} threads)"


def machine(device: torch.device) -> dict:
    """The machine a run is measured on; take it before the run (its load average is the one before)."""
    return {"device": device_name(device), "torch": torch.__version__, "cpus": os.cpu_count(),
            "load_average_before": load_average()}


def parse_variant(text: str, defaults) -> tuple[str, dict]:
    """"name:field=value,field=value" → (name, {field: value}), each value typed as the field of
    the dataclass instance `defaults` is; an unknown field ends the bench with its name."""
    name, _, settings = text.partition(":")
    values = {}
    for item in filter(None, settings.split(",")):
        field, _, value = item.partition("=")
        if not hasattr(defaults, field):
            raise SystemExit(f"--variant {name}: unknown {type(defaults).__name__} field {field!r}")
        kind = type(getattr(defaults, field))
        if kind is type(None):  # a field that defaults to None (image_size: the preset's): a number or a word
            kind = int if value.lstrip("-").isdigit() else str
        values[field] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return name, values


def stage_key(config, fields: tuple[str, ...]) -> str:
    """A short name for the values of `fields` of a dataclass config: runs whose stage (a tokenizer,
    shards) was built from the same values share it under this name."""
    values = json.dumps({name: getattr(config, name) for name in fields}, sort_keys=True)
    return hashlib.sha256(values.encode()).hexdigest()[:12]


def add_out_option(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--out", default=f"bench/out/{name}.json", help="JSON file to write (default: %(default)s)")


def write_result(result: dict, out: str | os.PathLike) -> None:
    """Adds the load average after the run, then writes the figures as JSON."""
    if isinstance(result.get("machine"), dict):
        result["machine"]["load_average_after"] = load_average()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
