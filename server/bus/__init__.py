"""The buses between workers and nodes: one interface (:mod:`.base`), two implementations, one registry.

- :mod:`.base`: ``Bus``, ``BusHandler``, ``Publication``: what every bus offers and pushes into.
- :mod:`.pipebus` with :mod:`.pipeframe`: the workers of one machine (the default, ``--bus pipe``).
- :mod:`.redisbus` with :mod:`.redisframe`, composed with the pipe bus by :mod:`.nodebus`: several nodes
  (``--bus redis``); :mod:`.cluster` turns the nodes' snapshots into cluster figures.
- :mod:`.registry`: the short names, resolved lazily.
"""

from .base import Bus, BusHandler, Publication

__all__ = ["Bus", "BusHandler", "Publication"]
