"""How the cloud says "no" (docs/wire.md §2), one table row per case."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime

import orjson
import pytest

from nonstop.routing.classify import (
    QUOTA_KINDS,
    TRANSIENT_KINDS,
    FailureKind,
    Verdict,
    classify_response,
    classify_stream_error,
    network_failure,
    parse_epoch,
    parse_retry_after,
    parse_rfc3339,
    quota_deadline,
)

NOW = 1_750_000_000.0
H = "anthropic-ratelimit-"


def body(etype: str, message: str = "") -> bytes:
    return orjson.dumps({
        "type": "error",
        "error": {"type": etype, "message": message},
        "request_id": "req_011CTest",
    })


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


SPEND_MSG = (
    "You have reached your specified API usage limits. "
    "You will regain access on 2025-07-01 at 00:00 UTC."
)
SPEND_UNTIL = datetime(2025, 7, 1, tzinfo=UTC).timestamp()
CREDIT_MSG = (
    "Your credit balance is too low to access the Anthropic API. "
    "Please go to Plans & Billing to upgrade or purchase credits."
)


# --- classify_response: every row of docs/wire.md §2 -------------------------------------

# (id, status, headers, body, failover_on_auth, kind, failover, until)
ROWS = [
    (
        "subscription-5h",
        429,
        {
            H + "unified-status": "rejected",
            H + "unified-representative-claim": "five_hour",
            H + "unified-reset": str(int(NOW + 7200)),
            "retry-after": "7200",
        },
        body("rate_limit_error", "This request would exceed your account's rate limit."),
        False,
        FailureKind.SUBSCRIPTION_LIMIT,
        True,
        NOW + 7200,
    ),
    (
        "subscription-weekly",
        429,
        {
            H + "unified-status": "rejected",
            H + "unified-representative-claim": "seven_day",
            H + "unified-reset": str(int(NOW + 4 * 86400)),
            "retry-after": "345600",
        },
        body("rate_limit_error", "rate limited"),
        False,
        FailureKind.SUBSCRIPTION_LIMIT,
        True,
        NOW + 4 * 86400,
    ),
    (
        "subscription-weekly-opus-window-reset-only",
        429,
        {
            H + "unified-status": "rejected",
            H + "unified-representative-claim": "seven_day_opus",
            H + "unified-7d-reset": str(int(NOW + 86400)),
            H + "unified-5h-reset": str(int(NOW + 600)),
        },
        body("rate_limit_error", "rate limited"),
        False,
        FailureKind.SUBSCRIPTION_LIMIT,
        True,
        NOW + 86400,
    ),
    (
        "subscription-claim-without-status",
        429,
        {
            H + "unified-representative-claim": "five_hour",
            H + "unified-reset": str(int(NOW + 3600)),
        },
        body("rate_limit_error", "rate limited"),
        False,
        FailureKind.SUBSCRIPTION_LIMIT,
        True,
        NOW + 3600,
    ),
    (
        "short-throttle",
        429,
        {"retry-after": "5"},
        body("rate_limit_error", "Number of requests has exceeded your rate limit"),
        False,
        FailureKind.THROTTLE,
        True,
        NOW + 5,
    ),
    (
        "throttle-without-retry-after",
        429,
        {},
        body("rate_limit_error", "slow down"),
        False,
        FailureKind.THROTTLE,
        True,
        None,
    ),
    (
        "api-key-token-limit",
        429,
        {
            H + "tokens-limit": "80000",
            H + "tokens-remaining": "0",
            H + "tokens-reset": rfc3339(NOW + 45),
            H + "requests-limit": "50",
            H + "requests-remaining": "49",
            H + "requests-reset": rfc3339(NOW + 2),
            "retry-after": "45",
        },
        body("rate_limit_error", "tokens per minute exceeded"),
        False,
        FailureKind.API_KEY_LIMIT,
        True,
        NOW + 45,
    ),
    (
        "api-key-request-limit",
        429,
        {
            H + "requests-limit": "50",
            H + "requests-remaining": "0",
            H + "requests-reset": rfc3339(NOW + 30),
        },
        body("rate_limit_error", "requests per minute exceeded"),
        False,
        FailureKind.API_KEY_LIMIT,
        True,
        NOW + 30,
    ),
    (
        "api-key-output-token-limit",
        429,
        {
            H + "output-tokens-remaining": "0",
            H + "output-tokens-reset": rfc3339(NOW + 20),
            H + "input-tokens-remaining": "1000",
            H + "input-tokens-reset": rfc3339(NOW + 50),
        },
        body("rate_limit_error", "output tokens per minute exceeded"),
        False,
        FailureKind.API_KEY_LIMIT,
        True,
        NOW + 20,
    ),
    ("overloaded-529", 529, {}, body("overloaded_error", "Overloaded"), False, FailureKind.OVERLOADED, True, None),
    ("overloaded-type-only", 503, {}, body("overloaded_error", "Overloaded"), False, FailureKind.OVERLOADED, True, None),
    ("server-500", 500, {}, body("api_error", "Internal server error"), False, FailureKind.SERVER_ERROR, True, None),
    ("server-502", 502, {}, body("api_error", "Bad gateway"), False, FailureKind.SERVER_ERROR, True, None),
    ("server-503", 503, {}, body("api_error", "Service unavailable"), False, FailureKind.SERVER_ERROR, True, None),
    ("server-504", 504, {}, body("timeout_error", "Request timed out"), False, FailureKind.SERVER_ERROR, True, None),
    ("credit-exhausted", 400, {}, body("invalid_request_error", CREDIT_MSG), False, FailureKind.CREDIT_EXHAUSTED, True, None),
    ("spend-limit", 400, {}, body("invalid_request_error", SPEND_MSG), False, FailureKind.SPEND_LIMIT, True, SPEND_UNTIL),
    ("auth-401", 401, {}, body("authentication_error", "invalid x-api-key"), False, FailureKind.AUTH, False, None),
    ("auth-403", 403, {}, body("permission_error", "OAuth token revoked"), False, FailureKind.AUTH, False, None),
    ("auth-401-failover", 401, {}, body("authentication_error", "invalid x-api-key"), True, FailureKind.AUTH, True, None),
    ("auth-403-failover", 403, {}, body("permission_error", "OAuth token revoked"), True, FailureKind.AUTH, True, None),
    (
        "invalid-request",
        400,
        {},
        body("invalid_request_error", "messages.0.content: Field required"),
        False,
        FailureKind.CLIENT_ERROR,
        False,
        None,
    ),
    (
        "prompt-too-long",
        400,
        {},
        body("invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"),
        False,
        FailureKind.CLIENT_ERROR,
        False,
        None,
    ),
    ("not-found", 404, {}, body("not_found_error", "model: claude-nope"), False, FailureKind.CLIENT_ERROR, False, None),
    (
        "200-unified-rejected",
        200,
        {
            H + "unified-status": "rejected",
            H + "unified-reset": str(int(NOW + 3600)),
        },
        b'{"type":"message"}',
        False,
        FailureKind.SUBSCRIPTION_LIMIT,
        False,
        NOW + 3600,
    ),
]


@pytest.mark.parametrize(
    ("status", "headers", "raw", "on_auth", "kind", "failover", "until"),
    [pytest.param(*row[1:], id=row[0]) for row in ROWS],
)
def test_classify_response_table(status, headers, raw, on_auth, kind, failover, until) -> None:
    v = classify_response(status, headers, raw, NOW, failover_on_auth=on_auth)
    assert v is not None
    assert v.kind is kind
    assert v.failover is failover
    assert v.status == status
    if until is None:
        assert v.until is None
    else:
        assert v.until == pytest.approx(until)
    assert v.describe().startswith(kind.value)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {H + "unified-status": "allowed", H + "unified-5h-utilization": "0.4"},
        {H + "unified-status": "allowed_warning", H + "unified-5h-utilization": "0.95"},
    ],
    ids=["plain", "allowed", "allowed-warning"],
)
@pytest.mark.parametrize("status", [200, 201, 204, 304])
def test_success_is_not_a_failure(status: int, headers: dict[str, str]) -> None:
    assert classify_response(status, headers, b"{}", NOW) is None


def test_auth_detail_names_status_and_type() -> None:
    v = classify_response(401, {}, body("authentication_error", "invalid x-api-key"), NOW)
    assert v is not None
    assert "401" in v.detail
    assert "authentication_error" in v.detail
    assert "invalid x-api-key" in v.detail


def test_client_error_detail_keeps_message() -> None:
    v = classify_response(400, {}, body("invalid_request_error", "prompt is too long: 9 tokens > 5 maximum"), NOW)
    assert v is not None
    assert "prompt is too long" in v.detail


def test_credit_text_inside_other_error_type_is_not_credit() -> None:
    # The text alone is not enough: it must be a 400 invalid_request_error.
    v = classify_response(500, {}, body("api_error", CREDIT_MSG), NOW)
    assert v is not None
    assert v.kind is FailureKind.SERVER_ERROR


def test_spend_limit_without_date_has_no_deadline() -> None:
    msg = "You have reached your specified API usage limits."
    v = classify_response(400, {}, body("invalid_request_error", msg), NOW)
    assert v is not None
    assert v.kind is FailureKind.SPEND_LIMIT
    assert v.until is None


def test_spend_limit_date_only() -> None:
    msg = "You have reached your specified API usage limits. You will regain access on 2025-08-15."
    v = classify_response(400, {}, body("invalid_request_error", msg), NOW)
    assert v is not None
    assert v.until == datetime(2025, 8, 15, tzinfo=UTC).timestamp()


def test_spend_limit_with_time() -> None:
    msg = "You have reached your specified API usage limits. You will regain access on 2025-08-15 at 13:30 UTC."
    v = classify_response(400, {}, body("invalid_request_error", msg), NOW)
    assert v is not None
    assert v.until == datetime(2025, 8, 15, 13, 30, tzinfo=UTC).timestamp()


def test_kind_sets_are_disjoint() -> None:
    assert not QUOTA_KINDS & TRANSIENT_KINDS
    assert FailureKind.AUTH not in QUOTA_KINDS | TRANSIENT_KINDS
    assert FailureKind.CLIENT_ERROR not in QUOTA_KINDS | TRANSIENT_KINDS


# --- bodies that are not the Anthropic error shape ----------------------------------------

HTML = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


@pytest.mark.parametrize(
    ("status", "raw", "kind", "failover"),
    [
        (502, HTML, FailureKind.SERVER_ERROR, True),
        (503, b"upstream connect error or disconnect/reset before headers", FailureKind.SERVER_ERROR, True),
        (500, b"", FailureKind.SERVER_ERROR, True),
        (529, b"Overloaded", FailureKind.OVERLOADED, True),
        (504, HTML, FailureKind.SERVER_ERROR, True),
        (429, HTML, FailureKind.THROTTLE, True),
        (400, HTML, FailureKind.CLIENT_ERROR, False),
        (400, b"[1, 2, 3]", FailureKind.CLIENT_ERROR, False),
        (400, b'{"error": "a string, not an object"}', FailureKind.CLIENT_ERROR, False),
        (400, b'{"error": {"type": 7, "message": null}}', FailureKind.CLIENT_ERROR, False),
        (500, b"\xff\xfe not utf-8", FailureKind.SERVER_ERROR, True),
    ],
    ids=[
        "html-502", "text-503", "empty-500", "text-529", "html-504", "html-429",
        "html-400", "json-list", "error-string", "error-wrong-types", "bad-utf8",
    ],
)
def test_non_json_bodies(status: int, raw: bytes, kind: FailureKind, failover: bool) -> None:
    v = classify_response(status, {}, raw, NOW)
    assert v is not None
    assert v.kind is kind
    assert v.failover is failover


def test_html_body_text_is_kept_short_in_throttle_detail() -> None:
    v = classify_response(429, {}, HTML * 10, NOW)
    assert v is not None
    assert len(v.detail) <= 200
    assert v.detail.startswith("<html>")


# --- parse_retry_after --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", NOW + 30),
        (" 30 ", NOW + 30),
        ("0", NOW),
        ("1.5", NOW + 1.5),
        ("7200", NOW + 7200),
        (http_date(NOW + 120), NOW + 120),
        (http_date(NOW - 120), NOW),  # a date already past: no wait, never a past deadline
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("Wed, 99 Foo 2025", None),
        ("-5", None),
        ("-0.1", None),
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("1e400", None),
        (str(11 * 365 * 86400), None),
    ],
    ids=[
        "int", "padded", "zero", "float", "large", "http-date", "http-date-past", "none",
        "empty", "blank", "garbled", "garbled-date", "negative", "negative-float", "nan",
        "NaN", "inf", "overflow", "absurd",
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    got = parse_retry_after(value, NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


# --- parse_epoch / parse_rfc3339 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1750003600", 1750003600.0),
        ("1750003600000", 1750003600.0),  # milliseconds
        ("1750003600.5", 1750003600.5),
        ("2025-06-15T16:26:40Z", datetime(2025, 6, 15, 16, 26, 40, tzinfo=UTC).timestamp()),
        ("0", None),
        ("-1", None),
        ("nan", None),
        ("", None),
        (None, None),
        ("tomorrow", None),
        # Past any calendar (9999-12-31): no reset named, rather than a time nothing can show.
        ("inf", None),
        ("1e400", None),
        ("300000000000", None),
        ("253402300799", 253402300799.0),
    ],
)
def test_parse_epoch(value: str | None, expected: float | None) -> None:
    got = parse_epoch(value)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-06-15T16:26:40Z", datetime(2025, 6, 15, 16, 26, 40, tzinfo=UTC).timestamp()),
        ("2025-06-15T16:26:40+00:00", datetime(2025, 6, 15, 16, 26, 40, tzinfo=UTC).timestamp()),
        ("2025-06-15T18:26:40+02:00", datetime(2025, 6, 15, 16, 26, 40, tzinfo=UTC).timestamp()),
        ("2025-06-15T16:26:40.250Z", datetime(2025, 6, 15, 16, 26, 40, 250000, tzinfo=UTC).timestamp()),
        ("not a date", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_rfc3339(value: str | None, expected: float | None) -> None:
    got = parse_rfc3339(value)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


# --- quota_deadline -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "60"}, NOW + 60),
        ({H + "unified-reset": str(int(NOW + 3600))}, NOW + 3600),
        ({H + "unified-reset": str(int((NOW + 3600) * 1000))}, NOW + 3600),  # ms epoch
        # latest wins between retry-after and the unified reset, either way round
        ({H + "unified-reset": str(int(NOW + 3600)), "retry-after": "60"}, NOW + 3600),
        ({H + "unified-reset": str(int(NOW + 60)), "retry-after": "3600"}, NOW + 3600),
        # claim picks the window's own reset when unified-reset is absent
        (
            {
                H + "unified-representative-claim": "five_hour",
                H + "unified-5h-reset": str(int(NOW + 900)),
                H + "unified-7d-reset": str(int(NOW + 86400)),
            },
            NOW + 900,
        ),
        (
            {
                H + "unified-representative-claim": "seven_day",
                H + "unified-5h-reset": str(int(NOW + 900)),
                H + "unified-7d-reset": str(int(NOW + 86400)),
            },
            NOW + 86400,
        ),
        (
            {
                H + "unified-representative-claim": "seven_day_sonnet",
                H + "unified-7d-reset": str(int((NOW + 86400) * 1000)),
            },
            NOW + 86400,
        ),
        # an exhausted API-key limit's reset wins; a limit with quota left is ignored
        (
            {
                H + "tokens-remaining": "0",
                H + "tokens-reset": rfc3339(NOW + 30),
                H + "requests-remaining": "10",
                H + "requests-reset": rfc3339(NOW + 600),
            },
            NOW + 30,
        ),
        # two exhausted limits: the later one
        (
            {
                H + "tokens-remaining": "0",
                H + "tokens-reset": rfc3339(NOW + 30),
                H + "input-tokens-remaining": "0",
                H + "input-tokens-reset": rfc3339(NOW + 90),
            },
            NOW + 90,
        ),
        # nothing says which ran out: every named reset counts
        (
            {
                H + "tokens-reset": rfc3339(NOW + 30),
                H + "requests-reset": rfc3339(NOW + 600),
            },
            NOW + 600,
        ),
        (
            {
                H + "tokens-remaining": "5",
                H + "tokens-reset": rfc3339(NOW + 30),
                H + "requests-remaining": "7",
                H + "requests-reset": rfc3339(NOW + 600),
            },
            NOW + 600,
        ),
        # past resets are no deadline
        ({H + "unified-reset": str(int(NOW - 10))}, None),
        ({H + "tokens-remaining": "0", H + "tokens-reset": rfc3339(NOW - 10)}, None),
        # garbage is ignored
        ({H + "unified-reset": "soon", "retry-after": "later"}, None),
        ({H + "tokens-remaining": "zero", H + "tokens-reset": rfc3339(NOW + 30)}, NOW + 30),
    ],
    ids=[
        "none", "retry-after", "unified", "unified-ms", "unified-beats-retry-after",
        "retry-after-beats-unified", "claim-5h", "claim-7d", "claim-7d-sonnet-ms",
        "exhausted-beats-remaining", "two-exhausted", "no-remaining-info", "none-exhausted",
        "unified-past", "api-key-past", "garbage", "garbled-remaining",
    ],
)
def test_quota_deadline(headers: dict[str, str], expected: float | None) -> None:
    got = quota_deadline(headers, NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


# --- classify_stream_error ----------------------------------------------------------------


def _stream_error(etype: str, message: str = "x") -> str:
    return orjson.dumps({"type": "error", "error": {"type": etype, "message": message}}).decode()


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (_stream_error("overloaded_error", "Overloaded"), FailureKind.OVERLOADED),
        (_stream_error("rate_limit_error"), FailureKind.THROTTLE),
        (_stream_error("api_error", "Internal server error"), FailureKind.SERVER_ERROR),
        (_stream_error("something_new"), FailureKind.SERVER_ERROR),
        ("not json at all", FailureKind.SERVER_ERROR),
        ("", FailureKind.SERVER_ERROR),
    ],
    ids=["overloaded", "rate-limit", "api-error", "unknown-type", "garbled", "empty"],
)
def test_classify_stream_error(data: str, kind: FailureKind) -> None:
    v = classify_stream_error(data)
    assert isinstance(v, Verdict)
    assert v.kind is kind
    assert v.failover is True
    assert v.until is None


def test_stream_error_detail_names_the_type() -> None:
    v = classify_stream_error(_stream_error("api_error", "Internal server error"))
    assert "api_error" in v.detail
    assert "Internal server error" in v.detail


# --- network_failure ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        OSError("Temporary failure in name resolution"),
        ConnectionResetError(),
    ],
    ids=["refused", "dns", "reset-no-text"],
)
def test_network_failure(exc: BaseException) -> None:
    v = network_failure(exc)
    assert v.kind is FailureKind.NETWORK
    assert v.failover is True
    assert v.until is None
    assert v.detail  # never empty: falls back to the exception's type name


def test_network_failure_without_text_uses_type_name() -> None:
    assert network_failure(ConnectionResetError()).detail == "ConnectionResetError"


def test_network_failure_detail_is_capped() -> None:
    assert len(network_failure(OSError("x" * 1000)).detail) == 200


def test_network_timeout() -> None:
    v = network_failure(TimeoutError(), timeout=True)
    assert v.kind is FailureKind.TIMEOUT
    assert v.failover is True


def test_verdict_describe_without_detail() -> None:
    assert Verdict(FailureKind.NETWORK, True, None, "").describe() == "network"


def test_a_workspace_spend_limit_fails_over():
    """A workspace's spend limit is worded "reached your specified workspace API usage
    limits" (Anthropic's error docs): a spend limit like the organization's, local until
    the date it names."""
    body = orjson.dumps({"type": "error", "error": {"type": "invalid_request_error", "message":
                         "You have reached your specified workspace API usage limits. You will regain access on "
                         "2027-02-01 at 00:00 UTC."}})
    v = classify_response(400, {}, body, NOW)
    assert v is not None and v.kind == FailureKind.SPEND_LIMIT and v.failover, v


def test_a_402_billing_error_fails_over():
    """A 402 billing_error (documented: out of credits, no payment method) is an account
    that cannot pay: local until the user acts, as the 400 "credit balance is too low"."""
    body = orjson.dumps({"type": "error", "error": {"type": "billing_error",
                         "message": "Your credit balance is too low to access the Anthropic API."}})
    v = classify_response(402, {}, body, NOW)
    assert v is not None and v.failover and v.kind == FailureKind.CREDIT_EXHAUSTED, v
