"""Classify what the cloud said: is it a "no", which kind, and until when.

Pure functions of status, headers and body. Structured signals (status, headers,
error.type) come first; message text is read only where Anthropic gives no other signal
(credit balance and spend limit are both plain 400 invalid_request_error).
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import orjson


class FailureKind(StrEnum):
    SUBSCRIPTION_LIMIT = "subscription_limit"
    THROTTLE = "throttle"
    API_KEY_LIMIT = "api_key_limit"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    CREDIT_EXHAUSTED = "credit_exhausted"
    SPEND_LIMIT = "spend_limit"
    AUTH = "auth"
    NETWORK = "network"
    TIMEOUT = "timeout"
    BAD_RESPONSE = "bad_response"
    CLIENT_ERROR = "client_error"  # the request itself is wrong: the client must see it


# Kinds that mean "the cloud is out of quota for a while", as opposed to a blip.
QUOTA_KINDS = frozenset({
    FailureKind.SUBSCRIPTION_LIMIT,
    FailureKind.THROTTLE,
    FailureKind.API_KEY_LIMIT,
    FailureKind.CREDIT_EXHAUSTED,
    FailureKind.SPEND_LIMIT,
})
TRANSIENT_KINDS = frozenset({
    FailureKind.OVERLOADED,
    FailureKind.SERVER_ERROR,
    FailureKind.NETWORK,
    FailureKind.TIMEOUT,
    FailureKind.BAD_RESPONSE,
})


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: FailureKind
    failover: bool
    # Epoch seconds until which the cloud should not be asked again; None: no deadline given.
    until: float | None
    detail: str
    status: int = 0

    def describe(self) -> str:
        return f"{self.kind.value}: {self.detail}" if self.detail else self.kind.value


_H = "anthropic-ratelimit-"
_API_KEY_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")
_CLAIM_RESET = {"five_hour": "5h", "seven_day": "7d", "seven_day_opus": "7d", "seven_day_sonnet": "7d"}


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds (int or float) or an HTTP-date; None for anything garbled or negative."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if dt is None:
            return None
        if dt.tzinfo is None:  # the asctime form names no zone: HTTP dates are UTC
            dt = dt.replace(tzinfo=UTC)
        return max(now, dt.timestamp())  # a date already past: retry now
    if secs != secs or secs < 0 or secs > 10 * 365 * 86400:  # NaN, negative, absurd
        return None
    return now + secs


# The last second a calendar can show (9999-12-31): a reset time past it is not a time.
LAST_EPOCH = 253402300799.0


def parse_epoch(value: str | None) -> float | None:
    if not value:
        return None
    try:
        v = float(value.strip())
    except ValueError:
        return parse_rfc3339(value)
    if v != v or v <= 0:
        return None
    v = v / 1000.0 if v > 1e12 else v  # tolerate milliseconds
    return v if v <= LAST_EPOCH else None  # infinite or absurd: no reset named


def parse_rfc3339(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def parse_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    # "nan" and "inf" parse, but no utilization or count is either: the header is broken.
    return v if math.isfinite(v) else None


# The longest the cloud is believed out: its longest window (7 days) and a day. A reset
# named further ahead is a broken header (the cloud is probed again after this).
LONGEST_OUT = 8 * 86400.0


def quota_deadline(headers: Mapping[str, str], now: float, *, unified: bool = True) -> float | None:
    """The latest reset time the quota headers name; None when none is given. `now`
    itself counts (`retry-after: 0`: retry now). A time more than LONGEST_OUT ahead is a
    broken header: it counts only when nothing else is named. `unified`: the
    subscription's reset counts (a usage limit); without it, a throttle's deadline is its
    `retry-after` and the API-key resets, not the window's reset hours away."""
    candidates: list[float] = []
    if unified:
        reset = parse_epoch(headers.get(_H + "unified-reset"))
        if reset is None or reset > now + LONGEST_OUT:  # missing or broken: the claimed window's
            window = _CLAIM_RESET.get(headers.get(_H + "unified-representative-claim", ""))
            named = parse_epoch(headers.get(f"{_H}unified-{window}-reset")) if window else None
            reset = named if named is not None else reset
        if reset is not None:
            candidates.append(reset)
    ra = parse_retry_after(headers.get("retry-after"), now)
    if ra is not None:
        candidates.append(ra)
    exhausted: list[float] = []
    others: list[float] = []
    for limit in _API_KEY_LIMITS:
        reset = parse_rfc3339(headers.get(f"{_H}{limit}-reset"))
        if reset is None:
            continue
        remaining = parse_float(headers.get(f"{_H}{limit}-remaining"))
        (exhausted if remaining is not None and remaining <= 0 else others).append(reset)
    # A limit with quota left does not keep the cloud out; if none says which one ran
    # out, every named reset counts.
    candidates.extend(exhausted or others)
    sane = [c for c in candidates if now <= c <= now + LONGEST_OUT]
    if sane:
        return max(sane)
    return now + LONGEST_OUT if any(c > now for c in candidates) else None


def error_of(body: bytes) -> tuple[str, str]:
    """An error body's (type, message); ("", a prefix of it) when it is not JSON."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", body[:200].decode("utf-8", "replace").strip()
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            etype = err.get("type")
            msg = err.get("message")
            return (etype if isinstance(etype, str) else "", msg if isinstance(msg, str) else "")
    return "", ""


# The spend limit an organization or a workspace set (both wordings are documented).
_SPEND_LIMIT = re.compile(r"reached your specified (?:workspace )?api usage limits")
_REGAIN = re.compile(r"regain access on (\d{4}-\d{2}-\d{2})(?:\s+at\s+(\d{1,2}:\d{2}))?\s*(UTC)?", re.I)


def _spend_limit_until(message: str, now: float) -> float | None:
    """When the message says access returns; None when it names no time, or one already
    past (the limit is still being lifted: re-checked after the cooldown, not at once)."""
    m = _REGAIN.search(message)
    if not m:
        return None
    text = m.group(1) + "T" + (m.group(2) or "00:00") + "+00:00"
    try:
        until = datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
    return until if until > now else None


def classify_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    *,
    failover_on_auth: bool = False,
) -> Verdict | None:
    """None for a success. `headers` must have lower-case names."""
    if status < 400:
        if headers.get(_H + "unified-status") == "rejected":
            until = quota_deadline(headers, now)
            return Verdict(FailureKind.SUBSCRIPTION_LIMIT, False, until, "unified status rejected", status)
        return None
    etype, message = error_of(body)
    if status == 429:
        # The unified headers come on every subscription reply, the claim included: only
        # "rejected" (or a claim with no status at all) says the 5-hour or weekly limit
        # is hit. A 429 whose status says "allowed" is a short throttle.
        claim = headers.get(_H + "unified-representative-claim")
        unified = headers.get(_H + "unified-status")
        if unified == "rejected" or (claim and unified is None):
            detail = f"usage limit ({claim or 'unified'})"
            return Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, quota_deadline(headers, now), detail, status)
        until = quota_deadline(headers, now, unified=False)
        if any(f"{_H}{lim}-reset" in headers for lim in _API_KEY_LIMITS):
            return Verdict(FailureKind.API_KEY_LIMIT, True, until, "API rate limit", status)
        return Verdict(FailureKind.THROTTLE, True, until, message or "rate limited", status)
    if status == 529 or etype == "overloaded_error":
        return Verdict(FailureKind.OVERLOADED, True, None, "overloaded", status)
    if status in (401, 403):
        kind = FailureKind.AUTH
        detail = f"{status} {etype or 'auth error'}: {message}".strip()
        return Verdict(kind, failover_on_auth, None, detail, status)
    if status == 402 or etype == "billing_error":  # the documented form of an empty balance
        return Verdict(FailureKind.CREDIT_EXHAUSTED, True, None, "credit balance too low (billing error)", status)
    if status == 400 and etype == "invalid_request_error":
        low = message.lower()
        if low.startswith("your credit balance is too low"):
            return Verdict(FailureKind.CREDIT_EXHAUSTED, True, None, "credit balance too low", status)
        if _SPEND_LIMIT.search(low):
            return Verdict(FailureKind.SPEND_LIMIT, True, _spend_limit_until(message, now), "API usage limit reached", status)
    if status == 408 or status == 504 or etype == "timeout_error":
        # The cloud answered, slowly: a blip like other 5xx, not a network timeout.
        return Verdict(FailureKind.SERVER_ERROR, True, None, f"{status} timeout", status)
    if status >= 500:
        return Verdict(FailureKind.SERVER_ERROR, True, None, f"{status} {etype or 'server error'}".strip(), status)
    return Verdict(FailureKind.CLIENT_ERROR, False, None, f"{status} {etype}: {message}".strip(), status)


def classify_stream_error(data: str) -> Verdict:
    """An `event: error` inside a cloud stream."""
    etype, message = error_of(data.encode())
    if etype == "overloaded_error":
        return Verdict(FailureKind.OVERLOADED, True, None, "overloaded (mid-stream)")
    if etype == "rate_limit_error":
        return Verdict(FailureKind.THROTTLE, True, None, "rate limited (mid-stream)")
    return Verdict(FailureKind.SERVER_ERROR, True, None, f"stream error {etype}: {message}".strip())


def network_failure(exc: BaseException, *, timeout: bool = False) -> Verdict:
    if timeout:
        return Verdict(FailureKind.TIMEOUT, True, None, "no response before the deadline")
    text = str(exc) or type(exc).__name__
    return Verdict(FailureKind.NETWORK, True, None, text[:200])
