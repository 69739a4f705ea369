"""`make demo`: the restaurant ratings example, live. Starts a server on this example's plugins
folder with a data directory of its own (examples/ratings/var/, not in git), the appender (a
rating a second), and, once the server answers, the set-up (setup_demo.py); then prints the
page's address and waits. Ctrl-C stops all of it.

The environment can change the defaults (the tests shorten them):
RATINGS_DEMO_PORT (8000), RATINGS_DEMO_VAR (examples/ratings/var), RATINGS_DEMO_EVERY (10s, the
schedule), RATINGS_DEMO_APPEND_S (1, seconds between ratings), RATINGS_DEMO_BAD_EVERY (15, every
Nth rating wrong on purpose). DATAGRAPH_* variables reach the server as usual.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STOP_WAIT_S = 15
WATCH = """Watch the bars move as ratings arrive (a new version of `ratings` at each refresh that finds some).
Now and then a wrong rating fails a check: `checks` of the dataset `ratings` in GraphiQL
({{ dataset(id: "ratings") {{ version checks {{ name passed message }} }} }}). The versions, and what
changed between two:  .venv/bin/datagraph versions ratings --data-dir {data}
                      .venv/bin/datagraph diff ratings 1 2 --data-dir {data}
Ctrl-C stops it all."""


class Stop(BaseException):  # as KeyboardInterrupt: no `except Exception` on the way swallows it
    """Ctrl-C, or SIGTERM / SIGHUP: time to stop everything."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`command` in a session of its own (a Ctrl-C reaches this script only, which stops it in
    order), its output in `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own commands
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process and its children (the server's workers), then SIGKILL if need be."""
    for sig, wait in ((signal.SIGTERM, STOP_WAIT_S), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            print(f"pid {proc.pid} did not stop within {wait} s of {sig.name}", flush=True)


def wait_until_serving(base: str, server: subprocess.Popen[bytes], log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = log.read_text()[-3000:]
            raise SystemExit(f"The server stopped (exit {server.returncode}); its log, {log}, ends:\n{tail}")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"The server did not answer at {base} within {seconds:g} s; see {log}.")


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    port = int(os.environ.get("RATINGS_DEMO_PORT", "8000"))
    var = Path(os.environ.get("RATINGS_DEMO_VAR") or HERE / "var").resolve()
    every = os.environ.get("RATINGS_DEMO_EVERY", "10s")
    append_s = os.environ.get("RATINGS_DEMO_APPEND_S", "1")
    bad_every = os.environ.get("RATINGS_DEMO_BAD_EVERY", "15")
    var.mkdir(parents=True, exist_ok=True)
    lock = (var / "demo.lock").open("w")  # held while this demo runs; the system drops it when it ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"Another demo is running on {var} (stop it first, or give it RATINGS_DEMO_VAR).") from None
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server: only a listener is in the way
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise SystemExit(f"Port {port} is taken (another server?); RATINGS_DEMO_PORT picks another.") from None
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DATAGRAPH_PLUGIN_RATINGS_DIR": str(var)}
    bin_dir = Path(sys.executable).parent
    server_command = [
        str(bin_dir / "datagraph"), "serve", "--port", str(port), "--data-dir", str(var / "data"),
        "--plugins", str(HERE / "plugins"), "--sources", "",
    ]  # fmt: skip
    appender_command = [
        sys.executable, str(HERE / "append.py"), "--file", str(var / "ratings.csv"),
        "--every", append_s, "--bad-every", bad_every,
    ]  # fmt: skip
    children: list[subprocess.Popen[bytes]] = []
    try:
        appender = start(appender_command, var / "appender.log", env)
        children.append(appender)
        server = start(server_command, var / "server.log", env)
        children.append(server)
        print(f"Started the appender (pid {appender.pid}) writing {var / 'ratings.csv'}", flush=True)
        print(f"Started the server (pid {server.pid}) on {base}; its log: {var / 'server.log'}", flush=True)
        wait_until_serving(base, server, var / "server.log")
        sys.path.insert(0, str(HERE))
        from setup_demo import Refused, configure

        try:
            address = configure(base, every, say=lambda text: print(text, flush=True))
        except (Refused, httpx.HTTPError) as error:
            raise SystemExit(f"The set-up failed: {error}") from None
        print(f"\nOpen {address}\n", flush=True)
        print(WATCH.format(data=var / "data"), flush=True)
        while True:
            for child in children:
                if child.poll() is not None:
                    raise SystemExit(f"pid {child.pid} stopped (exit {child.returncode}); stopping the demo.")
            time.sleep(0.5)
    except Stop as why:
        print(f"\n{why}: stopping the demo…", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the clean-up short
        for child in reversed(children):
            stop(child)
        print("Stopped.", flush=True)


if __name__ == "__main__":
    main()
