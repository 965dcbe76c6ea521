"""pytest-benchmark settings for ``make bench-micro``.

``--benchmark-json`` writes every timing sample by default (``stats.data``: ~200,000 floats per benchmark,
138 MB for this suite). ``results/micro.json`` keeps pytest-benchmark's statistics only (min, max, mean,
stddev, median, quartiles, rounds, ops), and the machine block without the CPU's flag list: well under 1 MB.
"""

from __future__ import annotations

from typing import Any


def pytest_benchmark_update_json(config: Any, benchmarks: Any, output_json: dict[str, Any]) -> None:
    for bench in output_json.get("benchmarks", []):
        stats = bench.get("stats")
        if isinstance(stats, dict):
            stats.pop("data", None)
    cpu = output_json.get("machine_info", {}).get("cpu")
    if isinstance(cpu, dict):
        cpu.pop("flags", None)


_LOAD_AT_START: list[float] = []


def pytest_sessionstart(session: Any) -> None:
    import os

    _LOAD_AT_START[:] = [round(x, 2) for x in os.getloadavg()]


def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    """Record how busy the machine was when the run started (micro-benchmarks on a busy machine read
    slow): the load average, and ``busy`` when it was above half the core count."""
    import os

    machine_info["loadavg_at_start"] = list(_LOAD_AT_START)
    machine_info["busy"] = bool(_LOAD_AT_START) and _LOAD_AT_START[0] > 0.5 * (os.cpu_count() or 1)
