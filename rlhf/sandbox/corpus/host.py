"""The host side of the corpus: fixtures a program may go after (a secret written outside the work directory,
listeners, a decoy process, paths to write to) and the sentinels whose appearance in output is a leak."""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from rlhf.sandbox import rootfs
from rlhf.sandbox.kernel import _SYSCALLS
from rlhf.sandbox.records import SandboxLimits


class Host:
    """Host-side fixtures for the corpus (a context manager): the secret written outside the work directory, the
    listeners, the decoy process, the paths to write to, and the sentinels whose appearance in output is a leak."""

    def __init__(self, base_dir: str, repo_dir: str | None = None) -> None:
        self.base_dir = base_dir
        default_repo = Path(__file__).resolve().parents[2]
        self.repo_dir = repo_dir or (str(default_repo) if (default_repo / "pyproject.toml").exists() else base_dir)
        self.tag = secrets.token_hex(6)
        self.token = "RLHF-CORPUS-SECRET-" + secrets.token_hex(16)
        self.marker = f"rlhf-corpus-escapee-{self.tag}"
        self._cleanup: list[Callable[[], None]] = []
        self._listeners: list[socket.socket] = []
        self._udp: socket.socket | None = None
        self.decoy: subprocess.Popen | None = None

    # -- set-up and tear-down

    def __enter__(self) -> Host:
        try:
            self._set_up()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _set_up(self) -> None:
        self.secret_dir = tempfile.mkdtemp(prefix="rlhf-corpus-", dir=self.base_dir)
        self._cleanup.append(lambda: shutil.rmtree(self.secret_dir, ignore_errors=True))
        self.secret_path = os.path.join(self.secret_dir, "hidden_tests.py")
        Path(self.secret_path).write_text(self.token + "\n")
        os.makedirs(os.path.join(self.secret_dir, "data"))
        self.answers_path = os.path.join(self.secret_dir, "data", "answers.jsonl")
        Path(self.answers_path).write_text('{"id": 0, "answer": "%s"}\n' % self.token)
        Path(self.secret_dir, f"listed-only-{self.tag}").write_text(self.token)
        self.home = str(Path.home())
        self.home_secret = os.path.join(self.home, f".rlhf-corpus-{self.tag}")
        try:
            Path(self.home_secret).write_text(self.token + "\n")
            self._cleanup.append(lambda: Path(self.home_secret).unlink(missing_ok=True))
        except OSError:  # a read-only home: the attempts still try it
            pass
        self._secret_state = self._state()
        self.targets = {
            "w_tmp": f"/tmp/rlhf-corpus-{self.tag}-tmp",
            "w_home": os.path.join(self.home, f"rlhf-corpus-{self.tag}-home"),
            "w_dir": os.path.join(self.secret_dir, f"written-{self.tag}"),
            "w_repo": os.path.join(self.repo_dir, f"rlhf-corpus-{self.tag}-repo"),
            "w_etc": f"/etc/rlhf-corpus-{self.tag}",
        }
        self._cleanup.append(self._remove_targets)
        old = os.environ.get("RLHF_CORPUS_SECRET")
        os.environ["RLHF_CORPUS_SECRET"] = self.token
        self._cleanup.append(lambda: os.environ.pop("RLHF_CORPUS_SECRET", None) if old is None
                             else os.environ.__setitem__("RLHF_CORPUS_SECRET", old))
        tcp = self._listen(socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("127.0.0.1", 0))
        self.tcp_port = tcp.getsockname()[1]
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", 0))
        self._udp.setblocking(False)
        self.udp_port = self._udp.getsockname()[1]
        self.unix_path = os.path.join(self.secret_dir, "sock")
        self._listen(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), self.unix_path)
        self.abstract_name = f"\0rlhf-corpus-{self.tag}"
        self._listen(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), self.abstract_name)
        self.decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)",
                                       f"rlhf-corpus-decoy-{self.tag}"], stdin=subprocess.DEVNULL)
        self.sentinels = self._sentinels()

    def _listen(self, sock: socket.socket, address: Any) -> socket.socket:
        sock.bind(address)
        sock.listen(16)
        sock.setblocking(False)
        self._listeners.append(sock)
        return sock

    def __exit__(self, *exc: object) -> None:
        if self.decoy is not None:
            self.decoy.kill()
            self.decoy.wait()
        for sock in [*self._listeners, *([self._udp] if self._udp else [])]:
            sock.close()
        for pid in processes_with(self.marker):
            os.kill(pid, signal.SIGKILL)
        for step in reversed(self._cleanup):
            step()

    def _remove_targets(self) -> None:
        for path in self.targets.values():
            Path(path).unlink(missing_ok=True)

    # -- what attempts see

    def fill(self, text: str, limits: SandboxLimits) -> str:
        """Substitute the ``$placeholders`` of an attempt's program or tests with Python literals."""
        values: dict[str, Any] = {
            "secret_path": self.secret_path, "secret_dir": self.secret_dir, "answers_path": self.answers_path,
            "base_dir": self.base_dir, "home": self.home, "home_secret": self.home_secret, "repo": self.repo_dir,
            "secret_sha": hashlib.sha256(self.token.encode()).hexdigest(), "tcp_port": self.tcp_port,
            "udp_port": self.udp_port, "unix_path": self.unix_path, "abstract_name": self.abstract_name,
            "decoy_pid": self.decoy.pid if self.decoy else -1, "parent_pid": os.getpid(), "marker": self.marker,
            "scratch_bytes": limits.scratch_mb * 2**20, "max_open_files": limits.max_open_files, **self.targets,
            **{f"nr_{name}": number for name, number in _SYSCALLS.get(platform.machine(), (0, {}))[1].items()},
        }
        return string.Template(text).substitute({k: repr(v) for k, v in values.items()})

    def _sentinels(self) -> tuple[str, ...]:
        found = {self.token}
        for path in ("/etc/passwd", "/etc/shadow"):
            try:
                first = Path(path).read_text().splitlines()[0]
                if len(first) >= 8:
                    found.add(first)
            except (OSError, IndexError, UnicodeDecodeError):
                pass
        visible = {"sandbox", "tmp", "dev"}  # the private view's own top-level names, and the runtime's path
        names: set[str] = set()
        exposed = rootfs.exposure(rootfs.runtime_paths())
        for path in [*exposed.dirs, *(link for link, _ in exposed.links), *(bind for bind, _ in exposed.binds)]:
            visible.update(Path(path).parts[1:])
        for directory in ("/", self.home, self.repo_dir, os.path.join(self.repo_dir, "data"), self.secret_dir,
                          self.base_dir):
            try:
                names.update(os.listdir(directory))
            except OSError:
                pass
        found.update(repr(name) for name in names - visible if len(name) >= 3)
        return tuple(sorted(found))

    # -- what the checks look at after a run

    def _state(self) -> tuple[bytes | None, int | None]:
        try:
            return Path(self.secret_path).read_bytes(), os.stat(self.secret_path).st_mode
        except OSError:
            return None, None

    def changes(self) -> list[str]:
        """Host paths an attempt created or changed (each is undone, so the next attempt starts clean)."""
        changed = [path for path in self.targets.values() if os.path.lexists(path)]
        self._remove_targets()
        if self._state() != self._secret_state:
            changed.append(self.secret_path)
            Path(self.secret_path).write_text(self.token + "\n")
            os.chmod(self.secret_path, self._secret_state[1] or 0o644)
        return changed

    def connections(self) -> int:
        """Connections and datagrams that reached the listeners since the last call (each is drained)."""
        count = 0
        for sock in self._listeners:
            while True:
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, OSError):
                    break
                conn.close()
                count += 1
        while self._udp is not None:
            try:
                self._udp.recv(65536)
            except (BlockingIOError, OSError):
                break
            count += 1
        return count

    def decoy_state(self) -> str:
        """"alive", or why not: "dead", "stopped" (a tracer attached), "traced"."""
        if self.decoy is None or self.decoy.poll() is not None:
            return "dead"
        try:
            status = Path(f"/proc/{self.decoy.pid}/status").read_text()
        except OSError:
            return "dead"
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip()[:1] in ("T", "t"):
            return "stopped"
        if fields.get("TracerPid", "0").strip() != "0":
            return "traced"
        return "alive"


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
                if state not in (b"Z", b"X"):
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids
