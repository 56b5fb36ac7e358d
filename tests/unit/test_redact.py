"""redact: secrets out, ordinary text untouched."""

from __future__ import annotations

import pytest

from nonstop.redact import _PATTERNS, redact

API_KEY = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-AbCdEfGhIjKlMnOpQrStUvWxYz-XyZ12AA"
OAUTH = "sk-ant-oat01-ZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210_-ZyXwVuTsRqPoNmLkJiHgFeDcBa-AbC98AA"
OPENAI = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (API_KEY, API_KEY),
        (f"key={API_KEY}", API_KEY),
        (f"using {OAUTH} for auth", OAUTH),
        (f"Authorization: Bearer {OAUTH}", OAUTH),
        ("authorization: bearer abcdefghijklmnop", "abcdefghijklmnop"),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-nature_x", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-nature_x"),
        ("x-api-key: plainsecretvalue123", "plainsecretvalue123"),
        ("X-Api-Key: plainsecretvalue123", "plainsecretvalue123"),
        ('{"x-api-key": "plainsecretvalue123"}', "plainsecretvalue123"),
        ("{'x-api-key': 'plainsecretvalue123'}", "plainsecretvalue123"),
        ('{"api_key": "plainsecretvalue123", "model": "m"}', "plainsecretvalue123"),
        ("api-key=plainsecretvalue123&x=1", "plainsecretvalue123"),
        ("x-nonstop-token: localgatewaytoken", "localgatewaytoken"),
        ('token = "localgatewaytoken"', "localgatewaytoken"),
        (f"openai key {OPENAI}", OPENAI),
        (f"headers={{'x-api-key': '{API_KEY}', 'anthropic-version': '2023-06-01'}}", API_KEY),
    ],
    ids=[
        "bare-api-key", "assigned-api-key", "oauth-in-text", "bearer-oauth", "bearer-lower",
        "bearer-jwt", "x-api-key-header", "x-api-key-mixed-case", "x-api-key-json",
        "x-api-key-python-repr", "api_key-json", "api-key-query", "nonstop-token", "token-toml",
        "openai-key", "headers-dict",
    ],
)
def test_secrets_removed(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert "[redacted]" in out


def test_no_fragment_of_a_key_survives() -> None:
    out = redact(f"Authorization: Bearer {OAUTH}\nx-api-key: {API_KEY}")
    for chunk in (OAUTH[14:30], API_KEY[14:30], OAUTH[-10:], API_KEY[-10:]):
        assert chunk not in out


def test_context_around_a_secret_is_kept() -> None:
    assert redact(f"request failed, x-api-key: {API_KEY} status 401") == (
        "request failed, x-api-key: [redacted] status 401"
    )
    assert redact(f"before {OAUTH} after") == "before [redacted] after"
    assert redact("Authorization: Bearer abcdefghijklmnop").startswith("Authorization: ")


def test_closing_bracket_after_a_secret_is_kept() -> None:
    assert redact(f"request failed (x-api-key: {API_KEY}) status 401") == (
        "request failed (x-api-key: [redacted]) status 401"
    )


def test_redact_is_idempotent() -> None:
    once = redact(f"Bearer {OAUTH} x-api-key: {API_KEY}")
    assert redact(once) == once


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello, world. Please read src/main.py and fix the failing test.",
        "prompt is too long: 250000 tokens > 200000 maximum",
        '{"usage": {"input_tokens": 1234567, "output_tokens": 89}}',
        "max_tokens: 128000",
        "model=claude-sonnet-4-5-20250929",
        "anthropic-version: 2023-06-01",
        "anthropic-beta: oauth-2025-04-20,interleaved-thinking-2025-05-14",
        "X-Claude-Code-Session-Id: 6f1c2a7e-1b2c-4d5e-8f90-a1b2c3d4e5f6",
        "request_id req_011CTeStAbCdEf",
        "a bearer of bad news",
        "the token was short: abc",
        "skip the sk- prefix",
        "POST /v1/messages?beta=true 200 OK in 1.2 s",
        "Der Schlüssel liegt unter der Fußmatte — 鍵はマットの下",
    ],
    ids=[
        "empty", "prose", "too-long", "usage-json", "max-tokens", "model", "version", "beta",
        "session-id", "request-id", "bearer-word", "short-token", "sk-dash", "log-line", "unicode",
    ],
)
def test_normal_text_untouched(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "task-management-system-design",
        "assess the risk-assessment-framework first",
        "see desk-lamp-controller-module",
    ],
)
def test_words_containing_sk_dash_untouched(text: str) -> None:
    assert redact(text) == text


def _every_pattern(text: str) -> str:
    """redact without its first look: every pattern, searched."""
    for pat in _PATTERNS:
        text = pat.sub((lambda m: m.group(1) + "[redacted]") if pat.groups else "[redacted]", text)
    return text


# Letters the regex engine's ignore-case takes for another (ı and İ for i, ſ for s, the
# Kelvin sign for k), and plain upper case.
_LOOKALIKES = [("i", "ı"), ("i", "İ"), ("s", "ſ"), ("k", "\u212a"), ("e", "E"), ("t", "T"), ("b", "B"), ("a", "A")]


def _texts() -> list[str]:
    base = [
        f"Authorization: Bearer {OAUTH}", "authorization: basic dXNlcjpwYXNzd29yZA==", "x-api-key: plainsecretvalue123",
        '{"api_key": "plainsecretvalue123"}', 'token = "localgatewaytoken"', "x-nonstop-token: localgatewaytoken",
        f"key={API_KEY}", f"openai key {OPENAI}", "a bearer of bad news", "switched to local: cloud out until 12:00",
        "Der Schlüssel liegt unter der Fußmatte — 鍵はマットの下",
    ]
    out = list(base)
    for text in base:
        for plain, other in _LOOKALIKES:
            out.append(text.replace(plain, other))
    return out


@pytest.mark.parametrize("text", _texts())
def test_the_first_look_lets_through_only_text_no_pattern_would_change(text: str) -> None:
    assert redact(text) == _every_pattern(text)


def test_a_key_spelled_with_lookalike_letters_is_still_redacted() -> None:
    for text in ("authorızatıon: basic dXNlcjpwYXNzd29yZA==", "x-nonſtop-token: localgatewaytoken", "to\u212aen: localgatewaytoken",
                 "AUTHORİZATİON: basic dXNlcjpwYXNzd29yZA=="):
        assert "[redacted]" in redact(text), text
