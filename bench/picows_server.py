"""picows' echo server, the fastest Python WebSocket library we know of, as a peer for the echo scenarios.

Optional: picows is in the ``bench`` and ``dev`` extras; where it is not installed, the scenarios skip it
and say so. Written as picows' own examples write it: a ``WSListener`` that sends every data frame back
(frame by frame, so a fragmented message is echoed fragment by fragment), on uvloop, with picows' automatic
answers to pings.

Run: ``python -m bench.picows_server --port 8768``; prints ``picows: ready ...``; stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from .stopsignal import stop_on_signals


async def main(host: str, port: int) -> None:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

    class Echo(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
                transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)

    def factory(request: WSUpgradeRequest) -> WSListener:
        return Echo()

    stop = stop_on_signals()
    server = await ws_create_server(factory, host, port, backlog=4096)
    print(f"picows: ready on ws://{host}:{port} (pid {os.getpid()})", flush=True)
    await stop
    server.close()


def cli(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.picows_server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8768)
    ns = p.parse_args(argv)
    import uvloop

    uvloop.run(main(ns.host, ns.port))


if __name__ == "__main__":
    cli()
