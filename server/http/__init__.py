"""HTTP/1.1 on the WebSocket port: the request head parser, responses, and the routes served next to it."""
