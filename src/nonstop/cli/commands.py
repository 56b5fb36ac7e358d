"""The `nonstop` command's argument parser and dispatch. Thin: parse arguments, call the
library; `main` is the entry point (`nonstop.cli:main`).

Only the standard library is imported at the top, and argparse only once a command
needs it, so that `nonstop statusline` starts fast; each command imports what it needs.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from nonstop.config import Config


def _load(args: argparse.Namespace):
    from nonstop.config import ConfigError, load_config

    try:
        cfg = load_config(getattr(args, "config", None))
    except ConfigError as exc:
        print("nonstop: configuration problem:", file=sys.stderr)
        for p in exc.problems:
            print(f"  - {p}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        return _listening(cfg, args)
    except ConfigError as exc:  # the address given on the command line may not be used
        for p in exc.problems:
            print(f"nonstop: {p}", file=sys.stderr)
        raise SystemExit(2) from None


def _listening(cfg: Config, args: argparse.Namespace) -> Config:
    """The config with the address given by --host / --port, where they are.

    Only the commands that listen there (serve, and claude, which may start it) hold the
    address to the exposure rules; the others only dial it.
    """
    host, port = getattr(args, "host", None), getattr(args, "port", None)
    command = getattr(args, "command", "")
    if not host and port is None:
        if command not in _DIALLING:
            return cfg
        from nonstop.cli.common import gateway_elsewhere
        from nonstop.config import split_listen

        # One started on another address (`nonstop serve --port N`) is found by its note.
        found = gateway_elsewhere(cfg.state_dir, cfg.listen, cfg.token)
        return cfg.with_listen(*split_listen(found), check=False) if found else cfg
    from nonstop.config import ConfigError

    try:
        return cfg.with_listen(host, port, check=command in ("serve", "claude"))
    except ConfigError as exc:  # worded as the options that were given, not as the config's `listen`
        given = " ".join(f"{o} {v}" for o, v in (("--host", host), ("--port", port)) if v)
        raise ConfigError([given + p.removeprefix(f"listen: {host}") if p.startswith(f"listen: {host} ") else p
                           for p in exc.problems]) from None


# The commands that look for a running gateway (claude starts one where none is found).
_DIALLING = ("status", "logs", "doctor", "explain", "eval", "models", "claude", "stop")


def _whole_number(lo: int, hi: int, what: str) -> Callable[[str], int]:
    """An argparse type: a number from `lo` to `hi` in ASCII digits, else refused as not `what`."""

    def parse(text: str) -> int:
        import argparse

        digits = text.strip()
        n = int(digits) if digits.isascii() and digits.isdigit() else 0
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; use {lo}-{hi}")
        return n

    return parse


_port = _whole_number(1, 65535, "a port number")  # --port
_rows = _whole_number(1, 10_000, "a number of rows")  # logs --limit (what the gateway answers at most)


def _host(text: str) -> str:
    """--host: a host name or an IP address (an IPv6 one with or without brackets), no port."""
    import argparse
    import ipaddress

    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.startswith("[") and "]:" in host:
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address; give the port with --port")
    if "://" in host or "/" in host:
        raise argparse.ArgumentTypeError(f"{text!r} is a URL; give only the host name or address")
    if not host or any(c.isspace() or c in "[]@" for c in host):
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address; "
                                             "give the port with --port") from None
        return host
    try:  # a name the resolver can be asked for: labels of 1-63 characters, IDNA-encodable
        host.encode("idna")
    except UnicodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address") from None
    return host


def _serve(args: argparse.Namespace) -> str:
    """The command that starts the gateway these options dial: `nonstop serve` with the
    same --host / --port (and --config)."""
    import shlex

    given = [(o, getattr(args, a, None)) for o, a in (("--config", "config"), ("--host", "host"), ("--port", "port"))]
    return shlex.join(["nonstop", "serve", *(str(x) for o, v in given if v for x in (o, v))])


def cmd_serve(args: argparse.Namespace) -> int:
    from nonstop.server.run import serve

    return serve(_load(args))


def cmd_status(args: argparse.Namespace) -> int:
    from nonstop.cli import status

    return status.cmd_status(_load(args), as_json=args.json, fleet=args.fleet, serve=_serve(args))


def cmd_logs(args: argparse.Namespace) -> int:
    from nonstop.cli import status

    return status.cmd_logs(
        _load(args), as_json=args.json, follow=args.follow, limit=args.limit,
        backend=args.backend or "", outcome=args.outcome or "", model=args.model or "", serve=_serve(args),
    )


def cmd_statusline(args: argparse.Namespace) -> int:
    from nonstop.cli import statusline

    return statusline.main(args)


def cmd_stop(args: argparse.Namespace) -> int:
    from nonstop.cli import stop

    return stop.stop(_load(args))


def cmd_config_check(args: argparse.Namespace) -> int:
    from nonstop.config import ConfigError, load_config

    path = args.file or args.config
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print("problems found:")
        for p in exc.problems:
            print(f"  - {p}")
        return 1
    print(f"{cfg.source or 'defaults (no config file)'}: OK — listen {cfg.listen}, "
          f"cloud {cfg.cloud.url}, {len(cfg.local)} local backend(s)")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from nonstop.cli import config_show
    from nonstop.config import ConfigError, load_config

    try:
        cfg = load_config(args.file or args.config)
    except ConfigError as exc:
        print("problems found (`nonstop config check` lists them too):", file=sys.stderr)
        for p in exc.problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.buffer.write(config_show.as_json(cfg) + b"\n")
    else:
        sys.stdout.write(config_show.render(cfg))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from nonstop.cli import init

    return init.cmd_init(args)


def cmd_doctor(args: argparse.Namespace) -> int:
    from nonstop.cli import doctor
    from nonstop.config import ConfigError, load_config

    try:
        cfg = _listening(load_config(args.config), args)
    except ConfigError as exc:
        # A broken config is the first thing doctor should report, not a reason to stop.
        for p in exc.problems:
            print(f"problem  config: {p} — fix: edit the file, then run `nonstop config check`")
        return 1
    return doctor.main(cfg, as_json=args.json, serve=_serve(args))


def cmd_explain(args: argparse.Namespace) -> int:
    from nonstop.cli import explain

    return explain.main(_load(args), args.request, headers=args.header or [], offline=args.offline, as_json=args.json)


def cmd_eval(args: argparse.Namespace) -> int:
    from nonstop.cli import eval as eval_cmd

    return eval_cmd.main(_load(args), backend=args.backend or "", model=args.model or "", quick=args.quick,
                         as_json=args.json, cloud=args.cloud, cloud_model=args.cloud_model or "", yes=args.yes,
                         show_history=args.history)


def cmd_models(args: argparse.Namespace) -> int:
    from nonstop.cli import models

    return models.main(_load(args), as_json=args.json)


def cmd_claude(args: argparse.Namespace, rest: list[str]) -> int:
    from nonstop.cli import claude

    return claude.run_claude(_load(args), rest, args)


def build_parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(prog="nonstop", description="Keeps AI coding sessions running when the cloud quota runs out.")
    p.add_argument("--version", action="store_true", help="print the version")
    sub = p.add_subparsers(dest="command")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="config file (default: $NONSTOP_CONFIG, else $XDG_CONFIG_HOME/nonstop/config.toml)")

    def command(name: str, help: str, func: Callable[..., int] | None) -> argparse.ArgumentParser:
        """A subcommand with the shared --config option, run by `func`."""
        sp = sub.add_parser(name, help=help)
        common(sp)
        sp.set_defaults(func=func)
        return sp

    def listen(sp: argparse.ArgumentParser, where: str) -> None:
        sp.add_argument("--host", type=_host, help=f"the host {where} (default: the config's `listen`)")
        sp.add_argument("--port", type=_port, help=f"the port {where} (default: the config's `listen`)")

    s = command("serve", "run the gateway", cmd_serve)
    listen(s, "to listen on")

    s = command("stop", "stop the gateway running on this machine, letting requests in flight finish", cmd_stop)
    listen(s, "the gateway listens on")

    s = command("status", "cloud state, quota, local backends, today's totals", cmd_status)
    listen(s, "the gateway listens on")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.add_argument("--fleet", action="store_true", help="every instance sharing state through Redis, and each account's state")

    s = command("logs", "recent requests from the request log", cmd_logs)
    listen(s, "the gateway listens on")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing requests as they come, until Ctrl-C")
    s.add_argument("-n", "--limit", type=_rows, default=20, help="how many of the newest requests (default: 20)")
    s.add_argument("--backend", help="cloud, local, or a backend name")
    s.add_argument("--outcome", help="ok, error, incomplete, client_gone")
    s.add_argument("--model", help="model name or glob")

    s = command("statusline", "one line for Claude Code's statusLine setting", cmd_statusline)
    s.add_argument("--url", help="nonstop's address (default: $ANTHROPIC_BASE_URL unless it is Anthropic's or --config is given, else the config's)")
    s.add_argument("--install", action="store_true", help="add it to Claude Code's settings (keeps a backup)")
    s.add_argument("--uninstall", action="store_true", help="remove it, restoring the previous status line")

    s = sub.add_parser("config", help="configuration tools")
    csub = s.add_subparsers(dest="config_command")
    c = csub.add_parser("check", help="validate a config file")
    c.add_argument("file", nargs="?", help="the file to check (default: the one nonstop reads, as --config says)")
    common(c)
    c.set_defaults(func=cmd_config_check)
    c = csub.add_parser("show", help="print the configuration in effect: every key, secrets hidden")
    c.add_argument("file", nargs="?", help="the file to read (default: the one nonstop reads, as --config says)")
    c.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    common(c)
    c.set_defaults(func=cmd_config_show)

    s = command("init", "write a commented config, prefilled with what is found", cmd_init)
    s.add_argument("--force", action="store_true", help="overwrite an existing file")
    s.add_argument("--no-discover", action="store_true", help="do not probe for local servers")

    s = command("doctor", "check the set-up and say what to fix", cmd_doctor)
    listen(s, "the gateway listens on")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")

    s = command("explain", "the plan for a saved request: which backends, in what order, and why", cmd_explain)
    s.add_argument("request", help="a Messages request body as JSON (a file, or - for standard input)")
    s.add_argument("-H", "--header", action="append", metavar="NAME:VALUE",
                   help="a request header the plan reads (e.g. x-claude-code-request-class: subagent)")
    s.add_argument("--offline", action="store_true", help="plan against the config and the state on disk, not the running instance")
    listen(s, "the gateway listens on")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")

    s = command("eval", "score each local model on Claude Code-shaped tasks (tools, loops, format, speed)", cmd_eval)
    s.add_argument("--backend", help="evaluate only this local backend")
    s.add_argument("--model", help="with --backend: evaluate another model the same server has")
    s.add_argument("--quick", action="store_true", help="fewer tasks, no long-context task (a minute or two)")
    s.add_argument("--cloud", action="store_true", help="also run the suite on the cloud with your own credentials "
                                                        "(spends quota; asks first)")
    s.add_argument("--cloud-model", help="the cloud model for --cloud (default: $ANTHROPIC_MODEL or claude-sonnet-4-5)")
    s.add_argument("--yes", action="store_true", help="do not ask before spending cloud quota")
    s.add_argument("--history", action="store_true", help="list the stored runs instead, newest first")
    listen(s, "the gateway listens on (its backends are the ones evaluated)")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")

    s = command("models", "each local backend's model: family, size, quantisation, contexts, tools, score", cmd_models)
    listen(s, "the gateway listens on (its backends are the ones shown)")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")

    s = command("claude", "run Claude Code through nonstop (starts nonstop if needed)", None)
    listen(s, "the gateway listens on, or is started on")
    s.add_argument("--install-statusline", action="store_true", help="add nonstop's status line to Claude Code's settings")
    return p


# nonstop's own options of `nonstop claude` that take a value (given before Claude Code's).
_VALUED = ("--config", "--host", "--port")
_VALUED_EQ = tuple(o + "=" for o in _VALUED)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["statusline"] and not ({"-h", "--help", "--install", "--uninstall"} & set(argv)):
        # Claude Code runs this on every refresh: skip argparse and everything else.
        from nonstop.cli import statusline

        return statusline.main(statusline.quick_args(argv[1:]))
    _take_ctrl_c()
    # `nonstop claude ...` passes everything after "claude" to Claude Code untouched,
    # except nonstop's own options given before it.
    if "claude" in argv:
        i = argv.index("claude")
        head, rest = argv[: i + 1], argv[i + 1 :]
        own = []
        while rest and (rest[0] in (*_VALUED, "--install-statusline") or rest[0].startswith(_VALUED_EQ)):
            own.append(rest.pop(0))
            if own[-1] in _VALUED and rest:
                own.append(rest.pop(0))
        if rest[:1] == ["--"]:
            rest = rest[1:]
        args = build_parser().parse_args(head + own)
        if args.command == "claude":
            return _run(lambda: cmd_claude(args, rest))
    args = build_parser().parse_args(argv)
    if args.version:
        from nonstop import __version__

        print(__version__)
        return 0
    if not args.command or getattr(args, "func", None) is None:
        build_parser().print_help()
        return 0 if not args.command else 2
    return _run(lambda: args.func(args))


def _take_ctrl_c() -> None:
    """Make Ctrl-C (SIGINT) raise KeyboardInterrupt, even where it arrives ignored.

    Python leaves SIGINT alone when the parent ignored it, and a shell that runs a job in
    the background without job control (a script, a CI runner) does exactly that: then
    neither Ctrl-C nor `kill -INT` would end `nonstop logs --follow`. `serve` already
    takes SIGINT through uvicorn; every command ends on it the same way.
    """
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(command: Callable[[], int | None]) -> int:
    """Run a command; Ctrl-C ends it with 130, a closed stdout (`| head`) quietly."""
    try:
        return int(command() or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
