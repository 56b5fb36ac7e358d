"""parse_config / load_config: defaults, a full example, and every error naming its key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from nonstop.config import (
    DEFAULT_CLOUD_URL,
    DEFAULT_LISTEN,
    CloudConfig,
    Config,
    ConfigError,
    LocalBackendConfig,
    load_config,
    parse_config,
)

EXAMPLE = """\
listen = "127.0.0.1:8787"

[cloud]
url = "https://api.anthropic.com"

[[local]]
name = "llama"
url = "http://127.0.0.1:8080"
api = "anthropic"
model = "qwen3-coder"
context_window = 32768
max_output_tokens = 4096

[routes]
"claude-*haiku*" = "llama"
"""


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def one_problem_about(data: dict[str, Any], key: str) -> str:
    problems = problems_of(data)
    hits = [p for p in problems if p.startswith(key + ":")]
    assert hits, f"no problem names {key!r}: {problems}"
    return hits[0]


def local(**kw: Any) -> dict[str, Any]:
    return {"name": "llama", "url": "http://127.0.0.1:8080", **kw}


# --- defaults ---------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = parse_config({})
    assert cfg.listen == DEFAULT_LISTEN
    assert cfg.host == "127.0.0.1"
    assert cfg.port == 8787
    assert cfg.token == ""
    assert cfg.cloud == CloudConfig()
    assert cfg.cloud.url == DEFAULT_CLOUD_URL
    assert cfg.cloud.failover_on_auth is False
    assert cfg.local == ()
    assert cfg.routes == ()
    assert cfg.embedded.mode == "auto"
    assert cfg.log.enabled is True
    assert cfg.routing.classes == ()


def test_state_dir_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_config({"state_dir": "~/ns"}).state_dir == tmp_path / "ns"


# --- the full example -------------------------------------------------------------------


def test_full_example() -> None:
    cfg = parse_config(tomllib.loads(EXAMPLE), source="example.toml")
    assert cfg.source == "example.toml"
    assert cfg.listen == "127.0.0.1:8787"
    assert cfg.cloud.url == "https://api.anthropic.com"
    assert cfg.local == (
        LocalBackendConfig(
            name="llama",
            url="http://127.0.0.1:8080",
            api="anthropic",
            model="qwen3-coder",
            context_window=32768,
            max_output_tokens=4096,
        ),
    )
    assert len(cfg.routes) == 1
    assert cfg.routes[0].match == "claude-*haiku*"
    assert cfg.routes[0].backends == ("llama",)


def test_load_full_example_from_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(EXAMPLE)
    cfg = load_config(path)
    assert cfg.source == str(path)
    assert [b.name for b in cfg.local] == ["llama"]


def test_types_are_coerced() -> None:
    cfg = parse_config({"cloud": {"error_cooldown": 3, "failover_on_auth": True}, "discovery": {"ports": [1, 2]}})
    assert cfg.cloud.error_cooldown == 3.0
    assert isinstance(cfg.cloud.error_cooldown, float)
    assert cfg.cloud.failover_on_auth is True
    assert cfg.discovery.ports == (1, 2)


def test_unnamed_backends_get_names() -> None:
    cfg = parse_config({"local": [{"url": "http://127.0.0.1:1"}, {"url": "http://127.0.0.1:2"}]})
    assert [b.name for b in cfg.local] == ["local1", "local2"]


# --- unknown keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"lisen": "127.0.0.1:1"}, "lisen"),
        ({"source": "x"}, "source"),
        ({"cloud": {"uri": "https://x"}}, "cloud.uri"),
        ({"cloud": {"failover_on_auht": True}}, "cloud.failover_on_auht"),
        ({"log": {"retention": 3}}, "log.retention"),
        ({"embedded": {"model": "x"}}, "embedded.model"),
        ({"local": [local(modle="x")]}, "local[0].modle"),
        ({"local": [local(), local(name="b", ctx=5)]}, "local[1].ctx"),
    ],
)
def test_unknown_key_is_named(data: dict[str, Any], key: str) -> None:
    msg = one_problem_about(data, key)
    assert "unknown key" in msg


def test_unknown_top_level_key_lists_the_known_ones() -> None:
    msg = one_problem_about({"lisen": "x"}, "lisen")
    assert "listen" in msg
    assert "source" not in msg.split("are:")[1]


def test_unknown_section_key_lists_the_section_keys() -> None:
    msg = one_problem_about({"cloud": {"uri": "x"}}, "cloud.uri")
    assert "url" in msg and "error_cooldown" in msg


def test_all_problems_reported_together() -> None:
    problems = problems_of({"lisen": 1, "cloud": {"uri": 1}, "local": [local(modle=1)]})
    assert len(problems) == 3


# --- wrong types ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        ({"token": 5}, "token", "string"),
        ({"max_body_bytes": "big"}, "max_body_bytes", "whole number"),
        ({"max_body_bytes": 1.5}, "max_body_bytes", "whole number"),
        ({"max_body_bytes": True}, "max_body_bytes", "whole number"),
        ({"ping_interval": "10s"}, "ping_interval", "number"),
        ({"ping_interval": -1}, "ping_interval", "negative"),
        ({"cloud": {"error_cooldown": "15"}}, "cloud.error_cooldown", "number"),
        ({"cloud": {"error_cooldown": True}}, "cloud.error_cooldown", "number"),
        ({"cloud": {"failover_on_auth": "yes"}}, "cloud.failover_on_auth", "true or false"),
        ({"cloud": {"failover_on_auth": 1}}, "cloud.failover_on_auth", "true or false"),
        ({"discovery": {"ports": 8080}}, "discovery.ports", "list"),
        ({"local": [local(context_window="32k")]}, "local[0].context_window", "whole number"),
        ({"local": [local(model=3)]}, "local[0].model", "string"),
        ({"local": [local(api="grpc")]}, "local[0].api", "anthropic"),
        ({"local": [local(count_tokens="maybe")]}, "local[0].count_tokens", "estimate"),
        ({"state_dir": 5}, "state_dir", "path"),
        ({"cloud": "https://x"}, "cloud", "table"),
        ({"local": {"url": "http://x"}}, "local", "array"),
        ({"local": ["x"]}, "local[0]", "table"),
        ({"routes": ["a"]}, "routes", "table"),
        ({"local": [local()], "routes": {"a*": 5}}, "routes.'a*'", "backend name"),
        ({"local": [local()], "routes": {"a*": []}}, "routes.'a*'", "backend name"),
    ],
)
def test_wrong_type_names_the_key(data: dict[str, Any], key: str, words: str) -> None:
    msg = one_problem_about(data, key)
    assert words in msg


@pytest.mark.parametrize(
    "data",
    [
        {"listen": 8787},
        {"cloud": {"url": 5}},
        {"local": [{"name": "llama", "url": 8080}]},
    ],
    ids=["listen-int", "cloud-url-int", "local-url-int"],
)
def test_non_string_listen_or_url_is_a_config_error(data: dict[str, Any]) -> None:
    problems_of(data)


def test_non_string_backend_name_is_a_config_error() -> None:
    one_problem_about({"local": [{"name": 5, "url": "http://127.0.0.1:8080"}]}, "local[0].name")


def test_unknown_embedded_mode_is_a_config_error() -> None:
    one_problem_about({"embedded": {"mode": "sometimes"}}, "embedded.mode")


def test_non_integer_discovery_port_is_a_config_error() -> None:
    one_problem_about({"discovery": {"ports": ["8080"]}}, "discovery.ports")


# --- local backend checks ---------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1/", "https://h/x/v1"])
def test_url_ending_in_v1_rejected(url: str) -> None:
    msg = one_problem_about({"local": [local(url=url)]}, "local[0].url")
    assert "/v1" in msg


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://host", "http://", "localhost"])
def test_url_must_be_http(url: str) -> None:
    msg = one_problem_about({"local": [local(url=url)]}, "local[0].url")
    assert "http" in msg


def test_cloud_url_must_be_http() -> None:
    one_problem_about({"cloud": {"url": "api.anthropic.com"}}, "cloud.url")


def test_missing_url() -> None:
    msg = one_problem_about({"local": [{"name": "x"}]}, "local[0].url")
    assert "missing" in msg


def test_duplicate_backend_names() -> None:
    msg = one_problem_about({"local": [local(), local(url="http://127.0.0.1:9090")]}, "local[1].name")
    assert "'llama'" in msg and "twice" in msg


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"context_window": 100}, "local[0].context_window"),
        ({"max_output_tokens": 0}, "local[0].max_output_tokens"),
        ({"context_window": 4096, "max_output_tokens": 4096}, "local[0].max_output_tokens"),
    ],
)
def test_window_limits(kw: dict[str, Any], key: str) -> None:
    one_problem_about({"local": [local(**kw)]}, key)


# --- routes -----------------------------------------------------------------------------


def test_route_to_unknown_backend() -> None:
    msg = one_problem_about({"local": [local()], "routes": {"claude-*": "lama"}}, "routes.'claude-*'")
    assert "'lama'" in msg and "llama" in msg


def test_route_with_no_backends_at_all() -> None:
    msg = one_problem_about({"routes": {"claude-*": "llama"}}, "routes.'claude-*'")
    assert "none" in msg


def test_route_list_with_one_unknown() -> None:
    one_problem_about({"local": [local()], "routes": {"*": ["llama", "ghost"]}}, "routes.'*'")


def test_routes_keep_their_order_and_targets() -> None:
    cfg = parse_config({
        "local": [
            local(name="big", url="http://127.0.0.1:8080"),
            local(name="small", url="http://127.0.0.1:8081"),
            local(name="spare", url="http://127.0.0.1:8082"),
        ],
        "routes": {
            "claude-*haiku*": "small",
            "claude-opus-*": ["big", "spare"],
        },
    })
    assert [(r.match, r.backends) for r in cfg.routes] == [
        ("claude-*haiku*", ("small",)),
        ("claude-opus-*", ("big", "spare")),
    ]


# --- [routing] ---------------------------------------------------------------------------


def test_routing_defaults() -> None:
    r = parse_config({}).routing
    assert (r.high_water, r.conserve, r.finish_local_tool_loops, r.classes) == (0.9, ("background", "subagent"), True, ())


def test_routing_classes() -> None:
    cfg = parse_config({
        "local": [local(name="big", url="http://127.0.0.1:8080"), local(name="small", url="http://127.0.0.1:8081")],
        "routing": {"conserve": ["background"], "background": {"cloud": "fallback", "backends": ["small"], "prefer": "fastest"},
                    "main": {"backends": ["big", "small"]}},
    })
    rules = dict(cfg.routing.classes)
    assert rules["background"].cloud == "fallback" and rules["background"].backends == ("small",)
    assert rules["main"].cloud == "first" and rules["main"].prefer == ""
    assert cfg.routing.conserve == ("background",)


@pytest.mark.parametrize(("routing", "key"), [
    ({"nope": 1}, "routing.nope"),
    ({"high_water": 9}, "routing.high_water"),
    ({"conserve": ["bg"]}, "routing.conserve"),
    ({"main": 3}, "routing.main"),
    ({"main": {"cloud": "sometimes"}}, "routing.main.cloud"),
    ({"main": {"prefer": "cheapest"}}, "routing.main.prefer"),
    ({"main": {"backends": ["ghost"]}}, "routing.main.backends"),
    ({"main": {"colour": "red"}}, "routing.main.colour"),
])
def test_routing_problems_name_the_key(routing: dict, key: str) -> None:
    one_problem_about({"local": [local()], "routing": routing}, key)


def test_unknown_routing_key_lists_the_class_tables() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"routing": {"backgrund": {}}})
    assert "[routing.background]" in exc.value.problems[0]


# --- listen and exposure ----------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:8787", "[::]:8787", "192.168.1.5:8787"])
def test_exposed_listen_without_token_raises(listen: str) -> None:
    msg = one_problem_about({"listen": listen}, "listen")
    assert "token" in msg


@pytest.mark.parametrize("listen", ["0.0.0.0:8787", "[::]:8787"])
def test_exposed_listen_with_token(listen: str) -> None:
    cfg = parse_config({"listen": listen, "token": "s3cret-token"})
    assert cfg.token == "s3cret-token"
    assert cfg.port == 8787


def test_exposed_listen_with_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NONSTOP_TOKEN", "from-env-a-long-one")
    cfg = parse_config({"listen": "0.0.0.0:8787"})
    assert cfg.token == "from-env-a-long-one"
    assert cfg.host == "0.0.0.0"


def test_an_exposed_gateway_takes_no_short_token_and_no_token_takes_other_than_ascii() -> None:
    with pytest.raises(ConfigError, match="at least 12 characters"):
        parse_config({"listen": "0.0.0.0:8787", "token": "short"})
    assert parse_config({"token": "short"}).token == "short"  # on loopback, the choice is the user's
    with pytest.raises(ConfigError, match="ASCII"):
        parse_config({"token": "pässwörd-long-enough"})
    with pytest.raises(ConfigError, match="ASCII"):
        parse_config({"users": [{"name": "ann", "token": "ännä-token-long-enough"}]})


@pytest.mark.parametrize(("data", "words"), [
    ({"ping_interval": 0.0}, "ping_interval"),
    ({"drain_timeout": float("inf")}, "finite"),
    ({"drain_timeout": float("nan")}, "finite"),
    ({"cloud": {"first_byte_timeout": float("nan")}}, "finite"),
    ({"listen": "127.0.0.1:0"}, "1-65535"),
    ({"cloud": {"url": "http://[::1:8080"}}, "not a valid URL"),
    ({"local": [{"name": "l", "url": "http://127.0.0.1:99999"}]}, "not a valid URL"),
])
def test_values_that_cannot_work_are_named_with_their_fix(data: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        parse_config(data)


def test_file_token_beats_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NONSTOP_TOKEN", "from-env")
    assert parse_config({"token": "from-file"}).token == "from-file"


@pytest.mark.parametrize("listen", ["127.0.0.1:9000", "localhost:9000", "[::1]:9000", "127.0.0.2:9000"])
def test_loopback_needs_no_token(listen: str) -> None:
    assert parse_config({"listen": listen}).port == 9000


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000"])
def test_bad_listen(listen: str) -> None:
    one_problem_about({"listen": listen}, "listen")


# --- files ------------------------------------------------------------------------------


def test_bad_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("listen = \n[cloud\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "TOML" in str(info.value)


def test_missing_explicit_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "nonstop init" in str(info.value)


def test_missing_default_file_gives_defaults() -> None:
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.source == ""
    assert cfg.listen == DEFAULT_LISTEN


def test_default_file_from_xdg(tmp_path: Path) -> None:
    path = tmp_path / "xdg-config" / "nonstop" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(EXAMPLE)
    assert load_config().source == str(path)


def test_nonstop_config_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text('listen = "127.0.0.1:1234"\n')
    monkeypatch.setenv("NONSTOP_CONFIG", str(path))
    assert load_config().port == 1234


def test_problems_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[cloud]\nuri = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}: cloud.uri:")


def test_max_output_tokens_defaults_to_a_quarter_of_a_small_window() -> None:
    cfg = parse_config({"local": [local(context_window=4096), local(name="big", url="http://127.0.0.1:8081", context_window=65536)]})
    assert [b.max_output_tokens for b in cfg.local] == [1024, 4096]
    one_problem_about({"local": [local(context_window=4096, max_output_tokens=4096)]}, "local[0].max_output_tokens")


def test_nonstop_config_naming_a_missing_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Running on the defaults would hide a typo in the variable: the user meant a file.
    monkeypatch.setenv("NONSTOP_CONFIG", str(tmp_path / "typo.toml"))
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.problems == [f"NONSTOP_CONFIG={tmp_path / 'typo.toml'}: no such file; run `nonstop init` to "
                                   "write one there, or unset NONSTOP_CONFIG to use the defaults"]


def test_nonstop_config_with_a_tilde_is_read_where_init_writes_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mine.toml").write_text('listen = "127.0.0.1:1235"\n')
    monkeypatch.setenv("NONSTOP_CONFIG", "~/mine.toml")
    assert load_config().port == 1235


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("context_window = 0", "embedded.context_window: 0 is too small; give the window in tokens (the default is 4096)"),
        ("context_window = 100", "embedded.context_window: 100 is too small; give the window in tokens (the default is 4096)"),
        ("max_output_tokens = 0", "embedded.max_output_tokens: must be at least 1 and below context_window (4096)"),
        ("context_window = 1024\nmax_output_tokens = 1024",
         "embedded.max_output_tokens: must be at least 1 and below context_window (1024)"),
        ("threads = 0", "embedded.threads: must be at least 1; the default is 1"),
        ("parallel = 0", "embedded.parallel: must be at least 1; the default is 2"),
        ("ready_timeout = 0", "embedded.ready_timeout: must be more than 0 seconds; the default is 300"),
        ("threads = -1", "embedded.threads: must not be negative, got -1"),
    ],
)
def test_embedded_values_it_cannot_start_with_are_refused(section: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads("[embedded]\n" + section + "\n"))
    assert info.value.problems == [problem]


def test_embedded_values_in_range_are_taken() -> None:
    cfg = parse_config(tomllib.loads("[embedded]\ncontext_window = 8192\nmax_output_tokens = 256\nthreads = 2\nparallel = 1\n"))
    assert (cfg.embedded.context_window, cfg.embedded.max_output_tokens, cfg.embedded.threads, cfg.embedded.parallel) == (8192, 256, 2, 1)


@pytest.mark.parametrize(("url", "said"), [
    ("redis.internal:6379", "is not a Redis URL"),
    ("http://redis.internal:6379", "is not a Redis URL"),
    ("redis://redis.internal:port/0", "is not a valid URL"),
    ("redis://:pw-secret@redis.internal:99999/0", "is not a valid URL"),
])
def test_a_redis_url_redis_would_refuse_is_a_config_problem(url: str, said: str) -> None:
    """Such a URL passed `config check` and then stopped `serve` at start-up with a
    traceback; its password is not repeated in the message."""
    with pytest.raises(ConfigError) as info:
        parse_config({"shared": {"redis_url": url}})
    assert "shared.redis_url" in str(info.value) and said in str(info.value)
    assert "pw-secret" not in str(info.value)


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://:pw@h/1", "unix:///run/redis.sock",
                                 "redis://h/0?password=x"])
def test_the_redis_urls_redis_takes_are_taken(url: str) -> None:
    assert parse_config({"shared": {"redis_url": url}}).shared.redis_url == url
