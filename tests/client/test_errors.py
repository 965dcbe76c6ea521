"""One exception root, distinct documented types, one retry policy."""

from __future__ import annotations

import pytest

import client
from client import errors

pytestmark = pytest.mark.timeout(30)

ALL = [
    errors.ConnectError, errors.ConnectionRefused, errors.HandshakeRejected, errors.ConnectTimeout,
    errors.ClientTimeout, errors.RequestTimeout, errors.ServerError, errors.ConnectionLost,
    errors.FatalClose, errors.NotConnected, errors.SendQueueFull, errors.TLSError, errors.RateLimited,
    errors.Forbidden, errors.Unavailable, errors.PublishFailed, errors.AckTimeout, errors.OutboxFull,
]


def test_everything_derives_from_one_root_and_is_exported() -> None:
    for cls in ALL:
        assert issubclass(cls, errors.ClientError)
        assert getattr(client, cls.__name__) is cls
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} missing from the tree in the docstring"


def test_the_four_required_kinds_are_distinct() -> None:
    refused, rejected, server, timeout = (
        errors.ConnectionRefused, errors.HandshakeRejected, errors.ServerError, errors.ClientTimeout
    )
    kinds = [refused, rejected, server, timeout]
    for a in kinds:
        for b in kinds:
            assert (a is b) == issubclass(a, b), (a, b)


def test_timeouts_are_builtin_timeouts_too() -> None:
    assert issubclass(errors.ConnectTimeout, TimeoutError)
    assert issubclass(errors.RequestTimeout, TimeoutError)
    assert issubclass(errors.ConnectTimeout, errors.ConnectError)


def test_server_error_carries_code_detail_and_reply() -> None:
    reply = {"type": "error", "code": "bad_room", "detail": "too long", "id": 3}
    exc = errors.ServerError("bad_room", "too long", reply)
    assert (exc.code, exc.detail, exc.reply) == ("bad_room", "too long", reply)
    assert str(exc) == "bad_room: too long"


@pytest.mark.parametrize("code", [1002, 1007, 1008, 1009])
def test_do_not_retry_close_codes(code: int) -> None:
    assert not errors.close_is_retryable(code)
    assert not errors.is_retryable(errors.ConnectionLost(code))


@pytest.mark.parametrize("code", [None, 1000, 1001, 1006, 1011, 1012, 1013, 4000])
def test_retry_close_codes(code: int | None) -> None:
    assert errors.close_is_retryable(code)
    if code is not None:
        assert errors.is_retryable(errors.ConnectionLost(code))


@pytest.mark.parametrize(("status", "retry"), [(401, False), (403, False), (400, False), (404, False),
                                                (429, True), (500, True), (503, True), (None, False)])
def test_handshake_statuses(status: int | None, retry: bool) -> None:
    assert errors.is_retryable(errors.HandshakeRejected("x", status)) is retry


def test_other_classifications() -> None:
    assert errors.is_retryable(errors.ConnectionRefused("x"))
    assert errors.is_retryable(errors.ConnectTimeout("x"))
    assert not errors.is_retryable(errors.FatalClose(1000))  # FatalClose is fatal whatever its code
    assert not errors.is_retryable(errors.ServerError("bad_message"))
    assert errors.is_retryable(ConnectionResetError())


def test_rate_limited_and_forbidden_are_server_errors_with_the_request_id() -> None:
    assert issubclass(errors.RateLimited, errors.ServerError) and issubclass(errors.Forbidden, errors.ServerError)
    assert not issubclass(errors.RateLimited, errors.Forbidden) and not issubclass(errors.Forbidden, errors.RateLimited)
    limited = errors.server_error({"type": "error", "code": "rate_limited", "detail": "slow down", "id": 7})
    assert type(limited) is errors.RateLimited and (limited.code, limited.detail, limited.id) == ("rate_limited", "slow down", 7)
    forbidden = errors.server_error({"type": "error", "code": "forbidden", "id": "c1"})
    assert type(forbidden) is errors.Forbidden and forbidden.id == "c1" and str(forbidden) == "forbidden"
    other = errors.server_error({"type": "error", "code": "bad_room", "detail": "x"})
    assert type(other) is errors.ServerError and other.id is None
    assert errors.server_error({"type": "error", "id": True}).id is None  # not a valid id
    for exc in (limited, forbidden, other):
        assert not errors.is_retryable(exc)


def test_tls_errors_and_failing_token_sources_are_not_retried() -> None:
    assert issubclass(errors.TLSError, errors.ConnectError)
    assert not errors.is_retryable(errors.TLSError("certificate verify failed"))
    assert not errors.is_retryable(errors.ConnectError("the token callable failed"))


def test_handshake_rejected_carries_retry_after() -> None:
    exc = errors.HandshakeRejected("busy", 503, 1.0)
    assert (exc.status, exc.retry_after) == (503, 1.0) and errors.is_retryable(exc)
    assert errors.HandshakeRejected("x", 401).retry_after is None


def test_token_expired_is_retried_only_with_a_fresh_token() -> None:
    expired = errors.ConnectionLost(1008, errors.TOKEN_EXPIRED_REASON)
    assert not errors.is_retryable(expired)
    assert errors.is_retryable(expired, fresh_token=True)
    assert errors.close_is_retryable(1008, "token expired", fresh_token=True)
    assert not errors.close_is_retryable(1008, "rate limit exceeded", fresh_token=True)
    assert not errors.close_is_retryable(1002, "token expired", fresh_token=True)
    assert not errors.is_retryable(errors.FatalClose(1008, "token expired"), fresh_token=True)


def test_acknowledged_sends_have_one_retry_policy() -> None:
    def refused(code: str) -> errors.PublishFailed:
        cause = errors.server_error({"type": "error", "code": code, "detail": "x", "id": 7})
        return errors.PublishFailed("refused", id=7, error=cause)

    assert isinstance(errors.server_error({"code": "unavailable"}), errors.Unavailable)
    assert refused("unavailable").retryable and refused("rate_limited").retryable
    for code in ("forbidden", "bad_room", "no_room", "bad_message"):
        exc = refused(code)
        assert not exc.retryable and exc.code == code and exc.id == 7
    assert errors.AckTimeout("t", id=1).retryable and errors.OutboxFull("f").retryable
    lost = errors.PublishFailed("lost", error=errors.ConnectionLost(1006))
    assert lost.retryable and lost.code is None
    assert not errors.PublishFailed("closed", error=errors.NotConnected("bye")).retryable
    assert not errors.PublishFailed("fatal", error=errors.FatalClose(1008)).retryable
    assert not errors.PublishFailed("why?").retryable


def test_ack_timeout_is_a_timeout_and_a_publish_failure() -> None:
    exc = errors.AckTimeout("no ack", id="c1", message={"type": "chat"})
    assert isinstance(exc, TimeoutError) and isinstance(exc, errors.ClientTimeout)
    assert isinstance(exc, errors.PublishFailed) and str(exc) == "no ack" and exc.message == {"type": "chat"}
