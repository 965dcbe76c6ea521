"""fanwire's benchmark harness: ``python -m bench run [--quick]``, ``python -m bench charts``.

See docs/bench.md. The harness sees the server only as a process it starts (``python -m server``);
the baseline it compares against lives in :mod:`bench.baseline_server`.
"""

from __future__ import annotations
