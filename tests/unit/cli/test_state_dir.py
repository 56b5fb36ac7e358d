"""A state directory nonstop cannot write (a file where a folder should be, a folder
without permission, a read-only database, a read-only file system, a full disk), as
real processes: `nonstop serve` says so once, naming the folder, the system's reason
and the fix, and serves without the request log; `nonstop claude` refuses with the same
words; `nonstop doctor` reports it as a problem. No traceback anywhere."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nonstop.store.db import Store
from tests.support import rawhttp
from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[3]
START = 60.0  # seconds a start-up may take on a busy machine

# Root writes where the permissions say no. A process of root's without the capabilities
# that let it does not; any other user needs nothing.
NO_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
               "--inh-caps", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


def _usable(prefix: list[str]) -> bool:
    try:
        return subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _read_only_bind(folder: Path) -> list[str]:
    """A prefix that runs a command with `folder` read-only (a bind mount of it over itself,
    in a mount namespace of the command's own: nothing outside it sees the mount)."""
    unshare = ["unshare", "-m", "--propagation", "private"] if os.geteuid() == 0 else ["unshare", "-rm"]
    return [*unshare, "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"',
            str(folder)]


def _full_disk(folder: Path) -> list[str]:
    """A prefix that runs a command with a full tmpfs of 64 KB on `folder` (in a mount
    namespace of its own, as above)."""
    unshare = ["unshare", "-m", "--propagation", "private"] if os.geteuid() == 0 else ["unshare", "-rm"]
    return [*unshare, "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0" && { cat /dev/zero > "$0/fill"; } 2>/dev/null; '
                                  'exec "$@"', str(folder)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "NONSTOP_", "CLAUDE_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    return env


def _config(tmp_path: Path, state: Path, port: int = 0) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'listen = "127.0.0.1:{port or free_port()}"\nstate_dir = "{state}"\n'
                      f'[cloud]\nurl = "http://127.0.0.1:{free_port()}"\n'
                      '[discovery]\nenabled = false\n[embedded]\nmode = "never"\n')
    return config


FAULTS = ["a-file-in-the-way", "no-permission", "read-only-database", "read-only-file-system", "full-disk"]


def _fault(tmp_path: Path, fault: str) -> tuple[Path, list[str], str]:
    """A state directory with `fault`; the prefix a command needs to meet it; the reason
    the system gives, as nonstop should quote it."""
    if fault == "a-file-in-the-way":
        (tmp_path / "a-file").write_text("a file where the state folder's parent should be\n")
        return tmp_path / "a-file" / "state", [], "a-file is a file, not a folder"
    if fault == "no-permission":
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        return locked / "state", NO_OVERRIDE, "Permission denied"
    if fault == "full-disk":
        (tmp_path / "disk").mkdir()
        return tmp_path / "disk" / "state", _full_disk(tmp_path / "disk"), "No space left on device"
    state = tmp_path / "state"
    store = Store(state)  # a log that was written before, e.g. by another user or another mount
    store.open()
    store.close()
    if fault == "read-only-database":
        (state / "nonstop.db").chmod(0o444)
        return state, NO_OVERRIDE, "nonstop.db: Permission denied"
    return state, _read_only_bind(state), "Read-only file system"


def _skip_unless_usable(prefix: list[str]) -> None:
    if prefix and not _usable(prefix):
        pytest.skip(f"{prefix[0]} cannot run here")


def _said_once(err: str, state: Path, reason: str, config: Path) -> str:
    """The one line that names the state folder; it gives the reason and the ways out."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if str(state) in line]
    assert len(lines) == 1, err
    line = lines[0]
    assert reason in line, line
    assert f"state_dir in {config}" in line, line
    return line


@pytest.mark.parametrize("fault", FAULTS)
def test_serve_says_once_why_and_how_to_fix_it_and_serves_without_the_log(tmp_path: Path, fault: str) -> None:
    state, prefix, reason = _fault(tmp_path, fault)
    _skip_unless_usable(prefix)
    port = free_port()
    config = _config(tmp_path, state, port)
    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err_file:
        p = subprocess.Popen([*prefix, sys.executable, "-m", "nonstop", "serve", "--config", str(config)],
                             stdout=subprocess.DEVNULL, stderr=err_file, stdin=subprocess.DEVNULL, env=_env(), cwd=ROOT)
    try:
        deadline = time.monotonic() + START
        answered = False
        while time.monotonic() < deadline and p.poll() is None and not answered:
            try:
                answered = rawhttp.request("GET", f"http://127.0.0.1:{port}/health", timeout=2)[0] == 200
            except (OSError, ValueError):
                time.sleep(0.1)
        # Past the writes a running gateway makes on its own (the cloud's deadlines, every 5 s).
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        code = p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = err_path.read_text(errors="replace")
    assert answered, f"the gateway did not serve without its request log:\n{err}"
    assert code == 0, err
    line = _said_once(err, state, reason, config)
    assert "serving without it" in line and "[log] enabled = false" in line, line
    assert ("free space on its disk" in line) == (fault == "full-disk"), line  # the fix that fits
    assert "write failed" not in err, err


@pytest.mark.parametrize("fault", FAULTS)
def test_doctor_reports_the_state_directory_as_a_problem(tmp_path: Path, fault: str) -> None:
    state, prefix, reason = _fault(tmp_path, fault)
    _skip_unless_usable(prefix)
    config = _config(tmp_path, state)
    done = subprocess.run([*prefix, sys.executable, "-m", "nonstop", "doctor", "--config", str(config)],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == "", done.stderr
    line = _said_once(done.stdout, state, reason, config)
    assert line.startswith("problem  state_dir:"), line


def test_doctor_finds_a_state_directory_it_can_make_fine(tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "not-yet" / "state")
    done = subprocess.run([sys.executable, "-m", "nonstop", "doctor", "--config", str(config)],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120)
    line = next((x for x in done.stdout.splitlines() if " state_dir:" in x), "")
    assert line.startswith("ok       state_dir:"), done.stdout
    assert not (tmp_path / "not-yet").exists(), "doctor made the folder"


def test_claude_refuses_with_the_reason_and_the_fix_not_a_traceback(tmp_path: Path) -> None:
    """`nonstop claude` starts the gateway with its output in the state directory: where it
    cannot write there, it says so and ends with 1, before starting anything."""
    state, _, reason = _fault(tmp_path, "a-file-in-the-way")
    config = _config(tmp_path, state)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "claude"
    fake.write_text("#!/bin/sh\necho claude ran\n")
    fake.chmod(0o755)
    env = _env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run([sys.executable, "-m", "nonstop", "claude", "--config", str(config), "-p", "hi"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "claude ran" not in done.stdout
    _said_once(done.stderr, state, reason, config)


def test_the_faults_are_what_they_say(tmp_path: Path) -> None:
    """The helpers above make what they name (or the tests that use them are skipped)."""
    assert shutil.which("sh")
    state, prefix, _ = _fault(tmp_path, "no-permission")
    if prefix and not _usable(prefix):
        pytest.skip("setpriv cannot run here")
    probe = subprocess.run([*prefix, "sh", "-c", f'mkdir "{state}"'], capture_output=True, text=True)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr, probe


def test_the_fix_names_what_chose_the_folder(tmp_path: Path) -> None:
    """The config's state_dir wins over NONSTOP_STATE_DIR, which wins over the default:
    the fix names the one that chose the folder."""
    from nonstop.config import Config, state_dir_fix

    config = str(tmp_path / "config.toml")
    named = tmp_path / "named"
    fix = state_dir_fix(Config(state_dir=named, source=config), {"NONSTOP_STATE_DIR": str(named)})
    assert fix.startswith("set NONSTOP_STATE_DIR") and f"state_dir in {config}" in fix, fix
    default = tmp_path / "xdg" / "nonstop"
    fix = state_dir_fix(Config(state_dir=default, source=config), {"XDG_STATE_HOME": str(tmp_path / "xdg")})
    assert fix.startswith(f"set state_dir in {config}, or NONSTOP_STATE_DIR") and "default" in fix, fix
    fix = state_dir_fix(Config(state_dir=tmp_path / "mine", source=config), {"NONSTOP_STATE_DIR": str(named)})
    assert fix == f"set state_dir in {config} to a folder nonstop can write", fix
