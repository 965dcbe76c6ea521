"""fanwire's benchmark harness: ``python -m bench run [--quick]``, ``python -m bench charts``.

See docs/bench.md. The harness sees the server only as a process it starts (``python -m server``) and
its ``/metrics`` route (read by :mod:`bench.promtext`); the servers it compares against live next to it
(:mod:`bench.baseline_server`, :mod:`bench.picows_server`, :mod:`bench.floor_server`), the scenarios in
:mod:`bench.scenarios`, the load in :mod:`bench.loadgen` (the recovery scenario's v1.1 subscribers in
:mod:`bench.recoveryload`, its verdict from offsets in :mod:`bench.completeness`), what a figure may claim
in :mod:`bench.stats`, where it comes from in :mod:`bench.provenance`.
"""

from __future__ import annotations
