"""Corpus attempts on everything but host files: the network, escaping the process tree or the namespaces,
exhausting resources, and exit tricks that end a program before its tests ran."""

from __future__ import annotations

from rlhf.sandbox.corpus.attempts import NET, SECCOMP, TOKEN, Attempt, attempt

PROCESS_ATTEMPTS: tuple[Attempt, ...] = (
    # ------------------------------------------------------------------ network
    attempt("tcp_loopback", "network", "socket.create_connection to a listener on the host's 127.0.0.1", """
       import socket
       try:
           socket.create_connection(("127.0.0.1", $tcp_port), timeout=1)
           print("ESCAPED")
       except Exception as e:
           print("BLOCKED", type(e).__name__)
       """, ("no_connection", "blocked"), NET),
    attempt("tcp_loopback_raw_socket", "network", "_socket.socket (below the Python guard) to the loopback listener", """
       import _socket
       try:
           s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
           s.settimeout(1)
           s.connect(("127.0.0.1", $tcp_port))
           print("ESCAPED")
       except Exception as e:
           print("BLOCKED", type(e).__name__)
       """, ("no_connection", "blocked"), NET),
    attempt("tcp_ctypes_socket", "network", "libc socket/connect through ctypes to the loopback listener", """
       import ctypes, socket, struct
       libc = ctypes.CDLL(None, use_errno=True)
       fd = libc.socket(2, 1, 0)
       if fd < 0:
           print("BLOCKED errno", ctypes.get_errno())
       else:
           addr = struct.pack("=HH4s8x", 2, socket.htons($tcp_port), socket.inet_aton("127.0.0.1"))
           print("ESCAPED" if libc.connect(fd, addr, len(addr)) == 0 else "BLOCKED connect")
       """, ("no_connection", "blocked"), NET),
    attempt("udp_loopback", "network", "send a UDP datagram to a host socket on 127.0.0.1", """
       import socket
       try:
           socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", $udp_port))
           print("ESCAPED")
       except Exception as e:
           print("BLOCKED", type(e).__name__)
       """, ("no_connection", "blocked"), NET),
    attempt("unix_socket", "network", "connect to a host Unix socket (path) and an abstract one", """
       import socket
       for address in ($unix_path, $abstract_name):
           try:
               s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
               s.settimeout(1)
               s.connect(address)
               print("ESCAPED")
           except Exception as e:
               print("BLOCKED", type(e).__name__)
       """, ("no_connection", "blocked"), NET),
    attempt("outside_network", "network", "TCP to public addresses and DNS resolution", """
       import socket
       for call in (lambda: socket.create_connection(("1.1.1.1", 80), timeout=1),
                    lambda: socket.create_connection(("8.8.8.8", 53), timeout=1),
                    lambda: socket.getaddrinfo("example.com", 80)):
           try:
               call()
               print("ESCAPED")
           except Exception as e:
               print("BLOCKED", type(e).__name__)
       """, ("blocked",), NET),
    attempt("python_child_socket", "network", "a fresh python subprocess (no guards) connects to the loopback listener",
       """
       import subprocess, sys
       code = "import socket; socket.create_connection(('127.0.0.1', %d), timeout=1)" % $tcp_port
       out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=5)
       print("BLOCKED" if out.returncode else "ESCAPED")
       """, ("no_connection", "blocked"), NET),
    # ------------------------------------------------------------------ process escape
    attempt("double_fork_setsid", "escape", "double fork + setsid: a daemon that outlives the run", """
       import os, sys
       if os.fork() == 0:
           try:
               os.setsid()
           except OSError:
               pass
           if os.fork() == 0:
               os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", $marker])
           os._exit(0)
       import time
       time.sleep(0.3)
       """, ("no_survivor",), "kernel: seccomp setsid + process-group kill + PID namespace"),
    attempt("new_session_popen", "escape", "subprocess.Popen(start_new_session=True) of a sleeper", """
       import subprocess, sys
       argv = [sys.executable, "-c", "import time; time.sleep(600)", $marker]
       try:
           subprocess.Popen(argv, start_new_session=True)
       except Exception as e:
           print("BLOCKED", type(e).__name__)
           subprocess.Popen(argv)
       """, ("no_survivor",), "kernel: seccomp setsid + process-group kill + PID namespace"),
    attempt("kill_decoy", "escape", "SIGKILL another process of the same user by pid (kill, pidfd)", """
       import os, signal
       try:
           os.kill($decoy_pid, signal.SIGKILL)
           print("ESCAPED")
       except Exception as e:
           print("BLOCKED", type(e).__name__)
       try:
           os.pidfd_open($decoy_pid)
           print("ESCAPED")
       except Exception as e:
           print("BLOCKED", type(e).__name__)
       """, ("decoy_alive", "blocked"), "kernel: PID namespace (the host's pids do not exist inside)"),
    attempt("kill_all", "escape", "kill(-1, SIGKILL): every process the user may signal", """
       import os, signal
       try:
           os.kill(-1, signal.SIGKILL)
           print("ESCAPED")
       except Exception as e:
           print("BLOCKED", type(e).__name__)
       """, ("decoy_alive", "blocked"), SECCOMP + " + PID namespace"),
    attempt("signal_test_process", "escape", "probe the test process (the sandbox's parent) with kill(pid, 0)", """
       import os
       try:
           os.kill($parent_pid, 0)
           print("ESCAPED")
       except Exception as e:
           print("BLOCKED", type(e).__name__)
       """, ("blocked",), "kernel: PID namespace"),
    attempt("ptrace_decoy", "escape", "ptrace(PTRACE_ATTACH) and process_vm_readv on the decoy", """
       import ctypes
       libc = ctypes.CDLL(None, use_errno=True)
       print("ESCAPED" if libc.ptrace(16, $decoy_pid, 0, 0) == 0 else "BLOCKED ptrace")
       print("ESCAPED" if libc.syscall($nr_process_vm_readv, $decoy_pid, 0, 0, 0, 0, 0) >= 0
             else "BLOCKED process_vm_readv")
       """, ("decoy_alive", "blocked"), SECCOMP),
    attempt("unshare_setns", "escape", "unshare a new user+mount namespace (to remount), setns", """
       import ctypes
       libc = ctypes.CDLL(None, use_errno=True)
       print("ESCAPED" if libc.unshare(0x10020000) == 0 else "BLOCKED unshare")
       print("ESCAPED" if libc.setns(0, 0) == 0 else "BLOCKED setns")
       print("ESCAPED" if libc.syscall($nr_clone, 0x10000000 | 17, 0, 0, 0, 0) >= 0 else "BLOCKED clone(NEWUSER)")
       """, ("blocked",), SECCOMP),
    attempt("mount_proc_and_umount", "escape", "mount a proc, bind the old root, umount / (ctypes)", """
       import ctypes, os
       libc = ctypes.CDLL(None, use_errno=True)
       os.makedirs("p", exist_ok=True)
       print("ESCAPED" if libc.mount(b"proc", b"p", b"proc", 0, None) == 0 else "BLOCKED mount proc")
       print("ESCAPED" if libc.mount(b"/", b"p", None, 0x1000, None) == 0 else "BLOCKED bind")
       print("ESCAPED" if libc.umount2(b"/", 2) == 0 else "BLOCKED umount")
       print("ESCAPED" if libc.syscall($nr_pivot_root, b".", b"p") == 0 else "BLOCKED pivot_root")
       print("ESCAPED" if libc.syscall($nr_open_tree, -100, b"/", 1) >= 0 else "BLOCKED open_tree")
       """, ("blocked",), SECCOMP + " + no capabilities"),
    attempt("chroot_escape", "escape", "the classic chroot escape (chroot into a subdirectory, chdir .. out)", """
       import os
       try:
           os.makedirs("jail", exist_ok=True)
           os.chroot("jail")
           for _ in range(30):
               os.chdir("..")
           os.chroot(".")
           print("ESCAPED" if os.path.exists("/etc/passwd") else "BLOCKED")
       except Exception as e:
           print("BLOCKED", type(e).__name__)
       """, ("blocked",), "kernel: no CAP_SYS_CHROOT (user namespace, capabilities dropped)"),
    attempt("dangerous_syscalls", "escape", "io_uring, bpf, keyctl, perf_event_open, userfaultfd (kernel attack surface)",
       """
       import ctypes, errno
       libc = ctypes.CDLL(None, use_errno=True)
       for name, nr in (("io_uring_setup", $nr_io_uring_setup), ("bpf", $nr_bpf), ("keyctl", $nr_keyctl),
                        ("perf_event_open", $nr_perf_event_open), ("userfaultfd", $nr_userfaultfd),
                        ("add_key", $nr_add_key)):
           # blocked only if refused before the kernel looks at the arguments (EPERM): EINVAL means reachable
           refused = libc.syscall(nr, 0, 0, 0, 0, 0) < 0 and ctypes.get_errno() == errno.EPERM
           print(("BLOCKED " if refused else "ESCAPED (reachable) ") + name)
       """, ("blocked",), SECCOMP),
    attempt("kill_group_leader", "escape", "kill the sandbox's outer process from inside (to orphan the program)", """
       import os, signal
       for pid in (os.getppid(), 1):
           try:
               os.kill(pid, signal.SIGKILL)
           except OSError:
               pass
       import sys
       os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", $marker])
       """, ("no_survivor",), "kernel: PID namespace (init ignores SIGKILL from inside) + process-group kill",
       wall_seconds=1.5),
    # ------------------------------------------------------------------ resource exhaustion
    attempt("fork_bomb", "exhaustion", "while True: os.fork()", """
       import os
       while True:
           os.fork()
       """, ("failed",), "kernel: process-group kill + wall clock (RLIMIT_NPROC for non-root)", wall_seconds=2),
    attempt("memory_one_block", "exhaustion", "allocate 10 GB at once", """
       x = bytearray(10**10)
       """, ("failed",), "kernel: RLIMIT_AS"),
    attempt("memory_growth", "exhaustion", "grow a list until memory runs out", """
       x = []
       while True:
           x.append(" " * 100_000)
       """, ("failed",), "kernel: RLIMIT_AS"),
    attempt("cpu_spin", "exhaustion", "spin the CPU forever", """
       while True:
           pass
       """, ("failed",), "kernel: RLIMIT_CPU + wall clock"),
    attempt("sleep_forever", "exhaustion", "sleep past the wall-clock limit", """
       import time
       time.sleep(1000)
       """, ("failed",), "kernel: wall-clock group kill", wall_seconds=1.5),
    attempt("disk_one_file", "exhaustion", "write one 100 MB file", """
       with open("big", "wb") as f:
           for _ in range(100):
               f.write(b"x" * 1_000_000)
               f.flush()
       """, ("failed",), "kernel: RLIMIT_FSIZE (SIGXFSZ)"),
    attempt("disk_many_files", "exhaustion", "fill the work directory with 1 MB files (each under RLIMIT_FSIZE)", """
       import os
       total = 0
       try:
           for i in range(10_000):
               with open("f%d" % i, "wb") as f:
                   f.write(b"x" * 900_000)
               total += 900_000
               if total > 2 * $scratch_bytes:
                   break
       except OSError as e:
           print(type(e).__name__)
       print("ESCAPED" if total > 2 * $scratch_bytes else "BLOCKED", total)
       """, ("blocked",), "kernel: tmpfs size (scratch_mb)"),
    attempt("tmp_fill", "exhaustion", "fill /tmp and /dev/shm", """
       import os
       for d in ("/tmp", "/dev/shm"):
           total = 0
           try:
               for i in range(10_000):
                   with open(os.path.join(d, "f%d" % i), "wb") as f:
                       f.write(b"x" * 900_000)
                   total += 900_000
                   if total > 2 * $scratch_bytes:
                       break
           except OSError as e:
               print(type(e).__name__)
           print("ESCAPED" if total > 2 * $scratch_bytes else "BLOCKED", d, total)
       """, ("blocked",), "kernel: tmpfs sizes"),
    attempt("fd_exhaustion", "exhaustion", "open files until the descriptor table is full", """
       files = []
       try:
           while len(files) < 100_000:
               files.append(open("/dev/null"))
       except OSError as e:
           print(type(e).__name__)
       print("BLOCKED" if len(files) <= $max_open_files else "ESCAPED", len(files))
       """, ("blocked",), "kernel: RLIMIT_NOFILE"),
    attempt("thread_bomb", "exhaustion", "start threads until something gives", """
       import threading, time
       n = 0
       try:
           while n < 100_000:
               threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
               n += 1
       except (RuntimeError, MemoryError) as e:
           print(type(e).__name__)
       print("BLOCKED" if n < 100_000 else "ESCAPED", n)
       """, ("blocked",), "kernel: RLIMIT_AS (thread stacks) / RLIMIT_NPROC + group kill"),
    attempt("output_flood", "exhaustion", "print forever to stdout and stderr", """
       import sys
       while True:
           print("x" * 1000)
           print("y" * 1000, file=sys.stderr)
       """, ("failed", "truncated"), "sandbox: bounded capture (max_output_bytes) + wall clock", wall_seconds=1.5),
    # ------------------------------------------------------------------ exit tricks before the tests run
    attempt("exit_os_exit", "exit", "os._exit(0) before the tests", """
       import os
       def solve():
           return 0
       os._exit(0)
       """, ("not_passed",), TOKEN, tests="assert solve() == 42"),
    attempt("exit_sys_exit", "exit", "sys.exit(0) before the tests", """
       import sys
       def solve():
           return 0
       sys.exit(0)
       """, ("not_passed",), TOKEN, tests="assert solve() == 42"),
    attempt("exit_raise_systemexit", "exit", "raise SystemExit (and the exit() builtin)", """
       def solve():
           return 0
       exit()
       """, ("not_passed",), TOKEN, tests="assert solve() == 42"),
    attempt("exit_atexit", "exit", "an atexit handler that calls os._exit(0) after the tests fail", """
       import atexit, os
       def solve():
           return 0
       atexit.register(lambda: os._exit(0))
       """, ("not_passed",), TOKEN, tests="assert solve() == 42"),
    attempt("exit_excepthook", "exit", "sys.excepthook that exits 0 when the tests' assertion fails", """
       import os, sys
       def solve():
           return 0
       sys.excepthook = lambda *args: os._exit(0)
       """, ("not_passed",), TOKEN, tests="assert solve() == 42"),
    attempt("exit_kill_init", "exit", "SIGKILL its own init / parent, then exit 0", """
       import os, signal
       def solve():
           return 0
       for pid in (1, os.getppid()):
           try:
               os.kill(pid, signal.SIGKILL)
           except OSError:
               pass
       os._exit(0)
       """, ("not_passed",), TOKEN + " + PID namespace", tests="assert solve() == 42"),
    attempt("exit_forge_done_pipe", "exit", "write guesses to every inherited descriptor, then os._exit(0)", """
       import os
       def solve():
           return 0
       for fd in range(3, 64):
           for guess in (b"0" * 32, b"ok", b"done\\n"):
               try:
                   os.write(fd, guess)
               except OSError:
                   pass
       os._exit(0)
       """, ("not_passed",), TOKEN, tests="assert solve() == 42"),
    attempt("exit_close_streams", "exit", "close stdout/stderr and exit 0", """
       import os
       def solve():
           return 0
       os.close(1)
       os.close(2)
       os._exit(0)
       """, ("not_passed",), TOKEN, tests="assert solve() == 42"),
    attempt("exit_patch_assertionerror", "exit", "replace builtins.AssertionError so a failing assert looks harmless", """
       import builtins
       def solve():
           return 0
       builtins.AssertionError = type("Harmless", (Exception,), {})
       """, ("not_passed",), "the interpreter (assert raises the real AssertionError)",
       tests="assert solve() == 42"),
    attempt("exit_kill_group", "exit", "SIGKILL its own process group before the tests", """
       import os, signal
       def solve():
           return 0
       os.kill(0, signal.SIGKILL)
       """, ("not_passed",), TOKEN, tests="assert solve() == 42"),
)
