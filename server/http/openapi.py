"""The HTTP API's OpenAPI 3.1 document (served at ``/api/openapi.json``). Pure: a function of the limits.

It is the contract the tests check the real responses against (schemathesis), so every status an endpoint
can answer is listed here, with its body's schema.
"""

from __future__ import annotations

from typing import Any, Final

from ..protocol import MAX_ID_LEN, MAX_ROOM_LEN

VERSION: Final = "1.0"
INT64: Final = {"type": "integer", "minimum": -(1 << 63), "maximum": (1 << 63) - 1}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _errors(*statuses: int) -> dict[str, Any]:
    text = {400: "malformed request (the error's code says what)", 401: "missing, wrong or expired credentials",
            403: "a token that is not an admin's", 404: "no such thing", 405: "method not allowed",
            413: "body too large", 415: "the body must be application/json",
            429: "over the API's rate limit (see Retry-After)", 503: "the stream's sequencer is unavailable: retry"}
    return {str(s): _error(text[s]) for s in statuses}


AUTH_ERRORS: Final = (401, 403, 429)


def document(max_body: int) -> dict[str, Any]:
    """The OpenAPI document for a server accepting bodies of at most ``max_body`` bytes."""
    room = {"type": "string", "minLength": 1, "maxLength": MAX_ROOM_LEN, "pattern": r"^[^$]",
            "description": "a room; names starting with '$' are the server's own"}
    msg_id = {"oneOf": [{"type": "string", "maxLength": MAX_ID_LEN}, INT64, {"type": "null"}],
              "description": "idempotency key: a resend within the dedup window is acknowledged again "
                             "(duplicate: true) and not published twice; null or absent: none"}
    published = {"type": "object", "required": ["room", "offset", "epoch"], "properties": {
        "room": {"type": "string"}, "offset": {"type": "integer", "minimum": 1},
        "epoch": {"type": "string"}, "duplicate": {"type": "boolean"}}}

    def body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
        return {"required": required, "content": {"application/json": {"schema": schema}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": "fanwire HTTP API", "version": VERSION,
                 "description": "For back ends: publish to rooms, broadcast, list rooms and presence, "
                                f"disconnect clients, read stats. Bodies of at most {max_body} bytes."},
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "the server's --api-key, or an admin token"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "detail"],
                    "properties": {"code": {"type": "string"}, "detail": {"type": "string"}}}}},
                "Published": published,
                "Member": {"type": "object", "required": ["client_id", "user", "node"], "properties": {
                    "client_id": {"type": "string"}, "user": {"type": ["string", "null"]},
                    "node": {"type": "string"}}},
            },
        },
        "paths": {
            "/api/publish": {"post": {
                "summary": "Publish data to a room's members, on every worker and node",
                "requestBody": body({"type": "object", "required": ["room", "data"], "properties": {
                    "room": room, "data": {"description": "any JSON value"}, "id": msg_id}}),
                "responses": {"200": _json(_ref("Published"), "sequenced: its position in the room's stream"),
                              **_errors(400, *AUTH_ERRORS, 413, 415, 503)}}},
            "/api/broadcast": {"post": {
                "summary": "Send data to every client (the $broadcast stream)",
                "requestBody": body({"type": "object", "required": ["data"], "properties": {
                    "data": {"description": "any JSON value"}, "id": msg_id}}),
                "responses": {"200": _json(_ref("Published"), "sequenced in the $broadcast stream"),
                              **_errors(400, *AUTH_ERRORS, 413, 415, 503)}}},
            "/api/rooms": {"get": {
                "summary": "Rooms and their members (the largest 1000)",
                "responses": {"200": _json({"type": "object", "required": ["rooms", "truncated"],
                                            "properties": {
                                                "rooms": {"type": "object",
                                                          "additionalProperties": {"type": "integer"}},
                                                "truncated": {"type": "boolean"}}},
                                           "members per room, all workers and nodes together"),
                              **_errors(*AUTH_ERRORS)}}},
            "/api/rooms/{room}/presence": {"get": {
                "summary": "The clients tracked in a room (joined with presence: true), on every worker and node",
                "parameters": [{"name": "room", "in": "path", "required": True, "schema": room}],
                "responses": {"200": _json({"type": "object", "required": ["room", "count", "members", "truncated"],
                                            "properties": {
                                                "room": {"type": "string"}, "count": {"type": "integer"},
                                                "members": {"type": "array", "items": _ref("Member")},
                                                "truncated": {"type": "boolean"}}}, "the presence list"),
                              **_errors(400, *AUTH_ERRORS)}}},
            "/api/clients/{client_id}/disconnect": {"post": {
                "summary": "Close a client's connection (close code 4000-4999, default 4000)",
                "parameters": [{"name": "client_id", "in": "path", "required": True,
                                "schema": {"type": "string", "minLength": 1, "maxLength": 64}}],
                "requestBody": body({"type": "object", "properties": {
                    "code": {"type": "integer", "minimum": 4000, "maximum": 4999},
                    "reason": {"type": "string", "maxLength": 120}}}, required=False),
                "responses": {"200": _json({"type": "object", "required": ["client_id", "disconnected",
                                                                           "other_nodes"], "properties": {
                    "client_id": {"type": "string"}, "disconnected": {"type": "integer"},
                    "other_nodes": {"type": "integer"}}},
                    "closed on this node, and asked of the other nodes (they answer nothing back)"),
                              **_errors(400, *AUTH_ERRORS, 404, 413, 415)}}},
            "/api/stats": {"get": {
                "summary": "What an admin's get_stats answers: clients, workers, rooms, the cluster",
                "responses": {"200": _json({"type": "object", "required": ["clients", "workers", "rooms"]},
                                           "stats"),
                              **_errors(*AUTH_ERRORS)}}},
            "/api/openapi.json": {"get": {
                "summary": "This document", "security": [],
                "responses": {"200": _json({"type": "object"}, "the OpenAPI document")}}},
        },
    }
