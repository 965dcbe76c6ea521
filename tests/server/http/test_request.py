"""HTTP/1.1 request heads parsed strictly (every refusal with its status), and the responses fanwire writes."""

from __future__ import annotations

import email.utils

import pytest

from server.errors import HttpError
from server.http import response as http_response
from server.http.request import MAX_HEAD, MAX_HEADERS, MAX_LINE, HttpRequest, find_head_end, parse_head

UPGRADE = (b"GET /chat?room=lobby HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
           b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


def head(request_line: bytes = b"GET / HTTP/1.1", *headers: bytes) -> bytes:
    return b"\r\n".join((request_line, *headers)) + b"\r\n\r\n"


def refused(data: bytes, max_body: int = 0) -> HttpError:
    with pytest.raises(HttpError) as info:
        parse_head(data, max_body)
    return info.value


# --- find_head_end -------------------------------------------------------------------------------------------


def test_find_head_end_is_just_past_the_blank_line() -> None:
    assert find_head_end(UPGRADE) == len(UPGRADE)
    assert find_head_end(UPGRADE + b"\x81\x85frame") == len(UPGRADE)
    assert find_head_end(bytearray(b"GET / HTTP/1.1\r\n\r\nrest")) == 18


@pytest.mark.parametrize("partial", [b"", b"GET / HTTP/1.1", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r",
                                     b"GET / HTTP/1.1\n\n"])
def test_find_head_end_is_minus_one_until_the_blank_line_arrives(partial: bytes) -> None:
    assert find_head_end(partial) == -1


# --- what is accepted ----------------------------------------------------------------------------------------


def test_a_websocket_upgrade_head() -> None:
    req = parse_head(UPGRADE)
    assert req.method == "GET" and req.target == "/chat?room=lobby" and req.content_length == 0
    assert req.path == "/chat" and req.query == {"room": "lobby"}
    assert req.headers[0] == ("host", "example.com")
    assert [name for name, _ in req.headers] == ["host", "upgrade", "connection", "sec-websocket-key",
                                                 "sec-websocket-version"]
    assert req.is_upgrade


def test_a_head_without_its_blank_line_parses_the_same() -> None:
    assert parse_head(UPGRADE[:-4]) == parse_head(UPGRADE)


def test_header_names_are_lowercased_and_values_trimmed_of_spaces_and_tabs() -> None:
    req = parse_head(head(b"GET / HTTP/1.1", b"X-Thing:  \t value with  inner\tspace \t ", b"EMPTY:"))
    assert req.headers == (("x-thing", "value with  inner\tspace"), ("empty", ""))


def test_header_values_are_decoded_as_latin1() -> None:
    assert parse_head(head(b"GET / HTTP/1.1", b"X-Name: caf\xe9")).header("x-name") == "café"


def test_header_returns_the_first_value_header_all_every_value() -> None:
    req = parse_head(head(b"GET / HTTP/1.1", b"Origin: https://a", b"Cookie: a=1", b"origin: https://b"))
    assert req.header("origin") == "https://a"
    assert req.header_all("origin") == ["https://a", "https://b"]
    assert req.header("authorization") is None and req.header_all("authorization") == []
    assert req.header("Origin") is None  # names are looked up lowercase


def test_has_token_reads_comma_separated_lists_across_headers_case_insensitively() -> None:
    req = parse_head(head(b"GET / HTTP/1.1", b"Connection: keep-alive , UPGRADE", b"Accept: a, b",
                          b"accept: C"))
    assert req.has_token("connection", "upgrade") and req.has_token("connection", "Keep-Alive")
    assert req.has_token("accept", "c") and req.has_token("accept", "b")
    assert not req.has_token("connection", "close")
    assert not req.has_token("connection", "keep")  # whole tokens only
    assert not req.has_token("upgrade", "websocket")  # absent header


@pytest.mark.parametrize(("upgrade", "expected"), [
    (b"Upgrade: websocket", True),
    (b"Upgrade: WebSocket", True),
    (b"Upgrade: h2c, websocket", True),
    (b"Upgrade: websockets", False),
    (b"Upgrade: h2c", False),
    (b"X-Upgrade: websocket", False),
])
def test_is_upgrade(upgrade: bytes, expected: bool) -> None:
    assert parse_head(head(b"GET / HTTP/1.1", upgrade)).is_upgrade is expected


@pytest.mark.parametrize(("target", "path", "query"), [
    ("/", "/", {}),
    ("/chat", "/chat", {}),
    ("/chat?", "/chat", {}),
    ("/a/b?x=1&y=two", "/a/b", {"x": "1", "y": "two"}),
    ("/?x=1&x=2", "/", {"x": "1"}),  # the first value of each name
    ("/?flag&empty=", "/", {"flag": "", "empty": ""}),  # blank values kept
    ("/?t=a%20b+c&%41=%2F", "/", {"t": "a b c", "A": "/"}),  # percent- and plus-decoding
    ("/p?q=1?2", "/p", {"q": "1?2"}),
])
def test_path_and_query(target: str, path: str, query: dict[str, str]) -> None:
    req = parse_head(head(b"GET " + target.encode() + b" HTTP/1.1"))
    assert (req.target, req.path, req.query) == (target, path, query)


@pytest.mark.parametrize("method", [b"GET", b"POST", b"DELETE", b"OPTIONS", b"PURGE", b"M" * 16])
def test_any_uppercase_method_up_to_16_letters(method: bytes) -> None:
    assert parse_head(head(method + b" / HTTP/1.1")).method == method.decode()


def test_an_http_request_is_a_frozen_value() -> None:
    req = HttpRequest("GET", "/", (), 0)
    with pytest.raises(AttributeError):
        req.method = "POST"  # type: ignore[misc]
    assert req == HttpRequest("GET", "/", (), 0)


# --- refusals: 400 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    b"",
    b"GET /",
    b"GET  / HTTP/1.1",  # two spaces
    b"GET / HTTP/1.1 ",
    b" GET / HTTP/1.1",
    b"GET\t/ HTTP/1.1",
    b"GET / HTTP/1.1 extra",
    b"GET / http/1.1",
    b"GET / HTTP/1",
    b"GET / HTTP/1.1x",
    b"GET / HTTPS/1.1",
])
def test_a_malformed_request_line_is_400(line: bytes) -> None:
    assert refused(head(line)).status == 400


@pytest.mark.parametrize("method", [b"get", b"Get", b"G3T", b"GE-T", b"M" * 17, b"\xc3\x89T"])
def test_a_lowercase_or_unknown_shaped_method_is_400(method: bytes) -> None:
    exc = refused(head(method + b" / HTTP/1.1"))
    assert (exc.status, exc.detail) == (400, "malformed method")


@pytest.mark.parametrize("target", [b"http://example.com/", b"example.com:443", b"*", b"chat", b"/caf\xc3\xa9",
                                    b"/a\x7fb", b"/a\x00b"])
def test_a_target_that_is_not_an_origin_form_path_is_400(target: bytes) -> None:
    exc = refused(head(b"GET " + target + b" HTTP/1.1"))
    assert (exc.status, exc.detail) == (400, "the target must be a path starting with /")


@pytest.mark.parametrize("header", [
    b"NoColon",
    b": no name",
    b"Bad Name: x",
    b"Host : x",  # whitespace before the colon (RFC 9112 5.1)
    b"X(y): z",
    b"Caf\xe9: x",
])
def test_a_malformed_header_is_400(header: bytes) -> None:
    exc = refused(head(b"GET / HTTP/1.1", header))
    assert (exc.status, exc.detail) == (400, "malformed header")


@pytest.mark.parametrize("fold", [b" folded", b"\tfolded"])
def test_obsolete_line_folding_is_400(fold: bytes) -> None:
    exc = refused(head(b"GET / HTTP/1.1", b"X-Long: first", fold))
    assert (exc.status, exc.detail) == (400, "obsolete header line folding")


@pytest.mark.parametrize("value", [b"a\x00b", b"a\x01", b"\x1fx", b"a\x7f", b"a\rb", b"a\nInjected: 1"])
def test_a_control_character_in_a_header_value_is_400(value: bytes) -> None:
    exc = refused(head(b"GET / HTTP/1.1", b"X-Value: " + value))
    assert (exc.status, exc.detail) == (400, "control character in a header value")


def test_an_empty_header_line_inside_the_head_is_400() -> None:
    exc = refused(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nX: y\r\n\r\n")
    assert (exc.status, exc.detail) == (400, "empty header line")


@pytest.mark.parametrize("te", [b"Transfer-Encoding: chunked", b"transfer-encoding: identity",
                                b"Transfer-Encoding: gzip, chunked"])
def test_transfer_encoding_is_400(te: bytes) -> None:
    exc = refused(head(b"POST /api HTTP/1.1", te, b"Content-Length: 3"), max_body=100)
    assert exc.status == 400 and "Transfer-Encoding" in exc.detail


@pytest.mark.parametrize("lengths", [
    (b"Content-Length: 5", b"Content-Length: 6"),
    (b"Content-Length: 5", b"Content-Length: 05"),
    (b"Content-Length: 5, 5",),
    (b"Content-Length: -1",),
    (b"Content-Length: +5",),
    (b"Content-Length: 0x10",),
    (b"Content-Length: 1e3",),
    (b"Content-Length: ",),
    (b"Content-Length: 5 5",),
    (b"Content-Length: 1000000000000",),  # 13 digits
])
def test_a_malformed_or_conflicting_content_length_is_400(lengths: tuple[bytes, ...]) -> None:
    exc = refused(head(b"POST /api HTTP/1.1", *lengths), max_body=1 << 40)
    assert (exc.status, exc.detail) == (400, "malformed Content-Length")


@pytest.mark.parametrize("digit", [b"\xb2", b"\xb3", b"\xb9", b"1\xb2"])
def test_a_content_length_of_superscript_digits_is_400(digit: bytes) -> None:
    """str.isdigit() says yes to the latin-1 superscripts; int() does not: still a 400, never a ValueError."""
    exc = refused(head(b"POST /api HTTP/1.1", b"Content-Length: " + digit), max_body=100)
    assert (exc.status, exc.detail) == (400, "malformed Content-Length")


def test_a_repeated_identical_content_length_is_one_length() -> None:
    req = parse_head(head(b"POST /api HTTP/1.1", b"Content-Length: 7", b"content-length: 7"), max_body=10)
    assert req.content_length == 7


@pytest.mark.parametrize("max_body", [0, 100])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_a_body_on_a_get_is_400(method: bytes, max_body: int) -> None:
    exc = refused(head(method + b" / HTTP/1.1", b"Content-Length: 1"), max_body)
    assert (exc.status, exc.reason) == (400, "bad_request")


def test_a_get_with_a_zero_content_length_has_no_body() -> None:
    assert parse_head(head(b"GET / HTTP/1.1", b"Content-Length: 0")).content_length == 0


# --- refusals: 413, 414, 431, 505 ----------------------------------------------------------------------------


def test_a_body_within_max_body_is_accepted() -> None:
    assert parse_head(head(b"POST /api HTTP/1.1", b"Content-Length: 100"), max_body=100).content_length == 100
    assert parse_head(head(b"POST /api HTTP/1.1", b"Content-Length: 0")).content_length == 0


@pytest.mark.parametrize(("length", "max_body"), [(101, 100), (1, 0), (999_999_999_999, 1 << 20)])
def test_a_body_over_max_body_is_413(length: int, max_body: int) -> None:
    exc = refused(head(b"POST /api HTTP/1.1", b"Content-Length: %d" % length), max_body=max_body)
    assert (exc.status, exc.reason) == (413, "too_large")


def test_a_request_line_of_max_line_bytes_is_accepted_one_more_is_414() -> None:
    fixed = len(b"GET / HTTP/1.1")
    ok = b"GET /" + b"a" * (MAX_LINE - fixed) + b" HTTP/1.1"
    assert len(ok) == MAX_LINE
    assert len(parse_head(head(ok)).target) == MAX_LINE - len(b"GET  HTTP/1.1")
    exc = refused(head(b"GET /" + b"a" * (MAX_LINE - fixed + 1) + b" HTTP/1.1"))
    assert (exc.status, exc.reason) == (414, "too_large")


def test_max_headers_are_accepted_one_more_is_431() -> None:
    many = [b"X-H%d: v" % i for i in range(MAX_HEADERS)]
    assert len(parse_head(head(b"GET / HTTP/1.1", *many)).headers) == MAX_HEADERS
    exc = refused(head(b"GET / HTTP/1.1", *many, b"X-Last: v"))
    assert (exc.status, exc.reason) == (431, "too_large")


def test_a_header_line_over_max_line_bytes_is_431() -> None:
    ok = b"X-Big: " + b"v" * (MAX_LINE - 7)
    assert parse_head(head(b"GET / HTTP/1.1", ok)).header("x-big") == "v" * (MAX_LINE - 7)
    exc = refused(head(b"GET / HTTP/1.1", ok + b"v"))
    assert (exc.status, exc.reason) == (431, "too_large")


def test_a_head_of_max_head_bytes_is_accepted_one_more_is_431() -> None:
    a, b = b"X-A: " + b"a" * 5000, b"X-B: " + b"b" * 5000
    pad = b"X-Pad: " + b"p" * (MAX_HEAD - len(head(b"GET / HTTP/1.1", b"X-Pad: ", a, b)))
    exact = head(b"GET / HTTP/1.1", pad, a, b)
    assert len(exact) == MAX_HEAD and all(len(line) <= MAX_LINE for line in exact.split(b"\r\n"))
    assert len(parse_head(exact).headers) == 3
    exc = refused(head(b"GET / HTTP/1.1", pad + b"p", a, b))
    assert (exc.status, exc.detail, exc.reason) == (431, "request head too large", "too_large")


@pytest.mark.parametrize("version", [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/3.0"])
def test_any_version_but_http_1_1_is_505(version: bytes) -> None:
    exc = refused(head(b"GET / " + version))
    assert exc.status == 505


# --- responses ----------------------------------------------------------------------------------------------


def split_response(data: bytes) -> tuple[str, dict[str, str], bytes]:
    head_bytes, sep, body = data.partition(b"\r\n\r\n")
    assert sep
    status, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(": ")
        assert name not in headers
        headers[name] = value
    return status, headers, body


def test_a_response_has_a_status_line_date_connection_close_and_its_length() -> None:
    status, headers, body = split_response(http_response.response(200, b'{"ok":true}', http_response.JSON))
    assert status == "HTTP/1.1 200 OK"
    assert headers["Connection"] == "close"
    assert headers["Content-Length"] == "11" and body == b'{"ok":true}'
    assert headers["Content-Type"] == "application/json"
    assert email.utils.parsedate_to_datetime(headers["Date"]).tzname() == "UTC"
    assert list(headers) == ["Date", "Connection", "Content-Length", "Content-Type"]


@pytest.mark.parametrize(("status", "line"), [(101, "HTTP/1.1 101 Switching Protocols"),
                                              (404, "HTTP/1.1 404 Not Found"),
                                              (426, "HTTP/1.1 426 Upgrade Required"),
                                              (431, "HTTP/1.1 431 Request Header Fields Too Large"),
                                              (503, "HTTP/1.1 503 Service Unavailable")])
def test_the_status_line_carries_the_standard_phrase(status: int, line: str) -> None:
    assert split_response(http_response.response(status))[0] == line


def test_an_empty_plain_text_response_has_no_content_type() -> None:
    _, headers, body = split_response(http_response.response(200))
    assert headers["Content-Length"] == "0" and body == b"" and "Content-Type" not in headers
    _, headers, body = split_response(http_response.response(204))  # no length at all (RFC 9110 8.6)
    assert "Content-Length" not in headers and body == b"" and "Content-Type" not in headers
    _, headers, _ = split_response(http_response.response(200, b"", "text/html"))
    assert headers["Content-Type"] == "text/html"


def test_extra_headers_come_after_the_standard_ones() -> None:
    data = http_response.response(405, b"no\n", headers=[("Allow", "GET"), ("X-Why", "because")])
    _, headers, body = split_response(data)
    assert list(headers)[-2:] == ["Allow", "X-Why"] and headers["Allow"] == "GET" and body == b"no\n"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"


def test_head_only_keeps_the_length_of_the_body_it_leaves_out() -> None:
    only = http_response.response(200, b"x" * 42, content_type=http_response.JSON, head_only=True)
    full = http_response.response(200, b"x" * 42, content_type=http_response.JSON)
    assert only.endswith(b"\r\n\r\n")
    status, headers, body = split_response(only)
    assert status == "HTTP/1.1 200 OK" and headers["Content-Length"] == "42" and body == b""
    full_status, full_headers, full_body = split_response(full)
    assert full_body == b"x" * 42
    del headers["Date"], full_headers["Date"]  # (the two may straddle a second)
    assert (status, headers) == (full_status, full_headers)


def test_an_error_is_one_plain_text_line() -> None:
    status, headers, body = split_response(
        http_response.error(426, "this is a WebSocket server\n\n", [("Upgrade", "websocket")]))
    assert status == "HTTP/1.1 426 Upgrade Required"
    assert body == b"this is a WebSocket server\n" and headers["Content-Length"] == str(len(body))
    assert headers["Upgrade"] == "websocket" and headers["Connection"] == "close"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
