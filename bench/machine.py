"""Machine facts printed with every benchmark result (so figures are read against the hardware)."""

from __future__ import annotations

import os
import platform


def load_average() -> str:
    """The 1/5/15-minute load averages (other work on the machine skews every timing), or ``n/a``."""
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except (AttributeError, OSError):  # no getloadavg on this platform, or it could not be read
        return "n/a"


def machine_info() -> str:
    """One line: CPU model, cores, memory, Python and key library versions."""
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = 0.0
    versions = []
    for name in ("prefect", "lancedb", "torch"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except Exception:  # noqa: BLE001 - a missing library is reported, not fatal
            versions.append(f"{name} -")
    return (f"machine: {cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, Python {platform.python_version()}, "
            + ", ".join(versions))
