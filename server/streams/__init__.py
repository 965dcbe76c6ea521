"""Streams: per-room (and broadcast) offsets and epochs, history, recovery and deduplication. Pure.

- :mod:`.stamp`: a sequenced message carries its position at the front of its JSON payload
  (``{"offset":N,"epoch":"E",...``), written once by the sequencer and read back cheaply anywhere.
- :mod:`.table`: the sequencer's state for the streams it owns: epochs, offsets, history rings bounded in
  count, age and total bytes, and the dedup window of acknowledged publications.
- :mod:`.stitch`: joining a stream with ``since`` when history and live messages arrive on different
  paths (the Redis bus): replay, then the live messages past it, each exactly once, in order.
- :mod:`.owner`: which worker of a node sequences a stream (the pipe bus).

Who sequences: on the pipe bus, the stream's owner worker (:mod:`server.bus.pipebus`); on the Redis bus,
one Lua script in Redis (:mod:`server.bus.redisbus`). Both give every receiver the same order.
"""

BROADCAST = "$broadcast"  # the stream of broadcasts
