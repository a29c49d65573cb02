"""What the kernel offers the sandbox, and the isolation set up in the child between fork and exec (Linux).

* The probe: :class:`_Kernel` holds the libc entry points (``unshare``, ``mount``, ``umount2``, ``prctl``, the
  ``pivot_root`` syscall) and the prebuilt seccomp program, loaded once at import as ``_KERNEL`` (tests replace it
  to run without namespaces or seccomp).
* The seccomp filter (classic BPF, x86-64 and aarch64): which syscalls fail with EPERM/ENOSYS.
* Resource limits: :func:`_rlimits` computes the child's (soft, hard) pairs in the parent.
* The preexec function (:func:`_make_preexec`), run in the forked child: namespaces, uid/gid maps, the
  file-system view (the private root of :mod:`rlhf.sandbox.rootfs`, built by :func:`_build_private_root`; or, in
  the "host_readonly" view, the host's mounts remounted read-only, a private /dev/shm and a hidden /proc), the
  rlimits (after the view: the scripts it writes may exceed RLIMIT_FSIZE), the capability drop, ``no_new_privs``
  and seccomp, each where the kernel allows it, except the private root: when it is asked for and cannot be
  built, the preexec raises and the program never starts. It makes only syscalls (no imports, no locks): the
  parent may be multi-threaded. Everything it needs is computed in the parent (:class:`_ChildPlan`).
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import platform
import resource
import struct
import sys
from dataclasses import dataclass
from typing import Callable

from rlhf.sandbox.records import SandboxLimits

_BOOTSTRAP_PROCESSES = 2  # the outer process and the init process of the bootstrap


# --------------------------------------------------------------------------- kernel interfaces (Linux)

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_CLONE_NAMESPACE_FLAGS = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND = 0x20, 0x400, 0x800, 0x1000
_MS_REC, _MS_PRIVATE, _MS_RELATIME, _MS_STRICTATIME = 0x4000, 0x40000, 0x200000, 0x1000000
_MNT_DETACH = 2
_MOUNT_OPTION_FLAGS = {  # per-mount options that must be kept when remounting inside a user namespace
    b"nosuid": _MS_NOSUID,
    b"nodev": _MS_NODEV,
    b"noexec": _MS_NOEXEC,
    b"noatime": _MS_NOATIME,
    b"nodiratime": _MS_NODIRATIME,
    b"relatime": _MS_RELATIME,
    b"strictatime": _MS_STRICTATIME,
}

_PR_CAPBSET_READ, _PR_CAPBSET_DROP, _PR_SET_SECUREBITS = 23, 24, 28
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, _PR_SET_NO_NEW_PRIVS = 22, 2, 38
_SECBITS_NOROOT_LOCKED = 0x0F  # NOROOT | NOROOT_LOCKED | NO_SETUID_FIXUP | NO_SETUID_FIXUP_LOCKED

_SECCOMP_RET_KILL_PROCESS, _SECCOMP_RET_ERRNO, _SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_JSET_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06

# Syscall numbers from the kernel headers (asm/unistd_64.h for x86-64, asm-generic/unistd.h for aarch64).
_SYSCALLS: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,  # AUDIT_ARCH_X86_64
        {
            "socket": 41, "clone": 56, "kill": 62, "ptrace": 101, "setpgid": 109, "setsid": 112,
            "pivot_root": 155, "mount": 165, "umount2": 166, "add_key": 248, "request_key": 249, "keyctl": 250,
            "unshare": 272, "perf_event_open": 298, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
            "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
            "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442,
        },
    ),
    "aarch64": (
        0xC00000B7,  # AUDIT_ARCH_AARCH64
        {
            "socket": 198, "clone": 220, "kill": 129, "ptrace": 117, "setpgid": 154, "setsid": 157,
            "pivot_root": 41, "mount": 40, "umount2": 39, "add_key": 217, "request_key": 218, "keyctl": 219,
            "unshare": 97, "perf_event_open": 241, "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271,
            "bpf": 280, "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
            "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442,
        },
    ),
}
_DENIED_SYSCALLS = (
    "socket", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "perf_event_open", "bpf",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "unshare", "setns", "mount", "umount2",
    "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "add_key",
    "request_key", "keyctl", "setsid", "setpgid",
)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _seccomp_filter(machine: str) -> bytes | None:
    """The classic-BPF seccomp program for ``machine`` (see the package docstring), or None if unsupported."""
    if machine not in _SYSCALLS:
        return None
    audit_arch, nr = _SYSCALLS[machine]
    eperm, enosys = _SECCOMP_RET_ERRNO | errno.EPERM, _SECCOMP_RET_ERRNO | errno.ENOSYS
    prog: list[tuple[int, int, int, int]] = [  # (code, jump-if-true, jump-if-false, k)
        (_BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_BPF_JEQ_K, 1, 0, audit_arch),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS),  # another ABI (e.g. 32-bit int 0x80 calls)
        (_BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":  # x32 syscalls share the arch value and set bit 30 of nr
        prog += [(_BPF_JGE_K, 0, 1, 0x40000000), (_BPF_RET_K, 0, 0, eperm)]
    for name in _DENIED_SYSCALLS:
        prog += [(_BPF_JEQ_K, 0, 1, nr[name]), (_BPF_RET_K, 0, 0, eperm)]
    prog += [(_BPF_JEQ_K, 0, 1, nr["clone3"]), (_BPF_RET_K, 0, 0, enosys)]
    # kill(-1, sig): every process the caller may signal. args[0] low 32 bits (little-endian) at offset 16.
    prog += [
        (_BPF_JEQ_K, 0, 4, nr["kill"]),
        (_BPF_LD_W_ABS, 0, 0, 16),
        (_BPF_JEQ_K, 0, 1, 0xFFFFFFFF),
        (_BPF_RET_K, 0, 0, eperm),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    # clone(flags, ...) with namespace flags
    prog += [
        (_BPF_JEQ_K, 0, 4, nr["clone"]),
        (_BPF_LD_W_ABS, 0, 0, 16),
        (_BPF_JSET_K, 0, 1, _CLONE_NAMESPACE_FLAGS),
        (_BPF_RET_K, 0, 0, eperm),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    prog.append((_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


@dataclass(frozen=True)
class _Kernel:
    """libc entry points and the prebuilt seccomp program (None where unavailable)."""

    unshare: Callable[..., int] | None
    mount: Callable[..., int] | None
    prctl: Callable[..., int] | None
    seccomp_prog: _SockFprog | None
    seccomp_buffer: ctypes.Array | None  # keeps the program's memory alive
    cap_last: int
    umount2: Callable[..., int] | None = None
    pivot_root: Callable[[bytes, bytes], int] | None = None  # the raw syscall (glibc has no wrapper)


def _load_kernel() -> _Kernel:
    if not sys.platform.startswith("linux"):
        return _Kernel(None, None, None, None, None, -1)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        unshare, mount, prctl = libc.unshare, libc.mount, libc.prctl
    except (OSError, AttributeError):
        return _Kernel(None, None, None, None, None, -1)
    unshare.argtypes, unshare.restype = [ctypes.c_int], ctypes.c_int
    mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    mount.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    umount2 = pivot_root = None
    try:
        umount2 = libc.umount2
        umount2.argtypes, umount2.restype = [ctypes.c_char_p, ctypes.c_int], ctypes.c_int
        syscall = libc.syscall
        syscall.argtypes, syscall.restype = [ctypes.c_long, ctypes.c_char_p, ctypes.c_char_p], ctypes.c_long
        number = _SYSCALLS.get(platform.machine(), (0, {}))[1].get("pivot_root")
        if number is not None:
            pivot_root = _pivot_root_call(syscall, number)
    except AttributeError:
        pass
    program = _seccomp_filter(platform.machine())
    buffer = prog = None
    if program is not None:
        buffer = ctypes.create_string_buffer(program, len(program))
        prog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            cap_last = int(f.read())
    except (OSError, ValueError):
        cap_last = 40
    return _Kernel(unshare, mount, prctl, prog, buffer, cap_last, umount2, pivot_root)


def _pivot_root_call(syscall: Callable[..., int], number: int) -> Callable[[bytes, bytes], int]:
    def pivot_root(new_root: bytes, put_old: bytes) -> int:
        return syscall(number, new_root, put_old)

    return pivot_root


_KERNEL = _load_kernel()


# --------------------------------------------------------------------------- what runs between fork and exec


# The operations that build the private root (see rlhf.sandbox.rootfs): (op, path, argument, number).
_OP_MKDIR, _OP_SYMLINK, _OP_TOUCH, _OP_TMPFS, _OP_BIND, _OP_READONLY, _OP_WRITE = range(7)
_OP_NAMES = (b"mkdir", b"symlink", b"create", b"mount tmpfs on", b"bind-mount", b"remount read-only", b"write")


@dataclass(frozen=True)
class _RootPlan:
    """The private root: built on ``staging`` (a host directory) by ``ops`` in order, then pivoted into."""

    staging: bytes
    workdir: bytes  # where the program starts, inside the new root
    ops: tuple[tuple[int, bytes, bytes, int], ...]
    # _OP_MKDIR (path), _OP_SYMLINK (path, target), _OP_TOUCH (path: an empty file), _OP_TMPFS (path, options,
    # flags), _OP_BIND (target, source, recursive), _OP_READONLY (path, flags to keep), _OP_WRITE (path, content)


@dataclass(frozen=True)
class _ChildPlan:
    """Everything the preexec function needs, computed in the parent (the child only makes syscalls)."""

    rlimits: tuple[tuple[int, tuple[int, int]], ...]
    workdir: bytes
    remounts: tuple[tuple[bytes, int, bool], ...]  # (mount point, flags to keep, already read-only)
    report_fd: int
    uid: int  # the parent's effective uid and gid, mapped to nobody (65534) inside the user namespace
    gid: int
    root: _RootPlan | None = None  # the private root to build; None: the host_readonly view


class _RootRefused(Exception):
    """Raised by the preexec when the private root was asked for and could not be built (the run is refused)."""


def _mount_table() -> tuple[tuple[bytes, int, bool], ...]:
    """(mount point, option flags, is read-only) for every mount of this process, from /proc/self/mountinfo."""
    table: list[tuple[bytes, int, bool]] = []
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        point = _unescape_mount_path(fields[4])
        options = fields[5].split(b",")
        flags = 0
        for option in options:
            flags |= _MOUNT_OPTION_FLAGS.get(option, 0)
        table.append((point, flags, b"ro" in options))
    return tuple(table)


def _unescape_mount_path(raw: bytes) -> bytes:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040 ...)."""
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and len(raw) >= i + 4 and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def _make_preexec(plan: _ChildPlan, kernel: _Kernel) -> Callable[[], None]:
    """The preexec_fn: namespaces, the file-system view, rlimits (mandatory), capabilities and seccomp.

    It runs in the forked child of a possibly multi-threaded parent, so it makes only syscalls (no imports, no
    locks). It writes the names of the layers that took effect to ``plan.report_fd``.
    """

    def refuse(layers: list[str], reason: bytes) -> None:
        os.write(plan.report_fd, ",".join(layers).encode() + b"!" + reason)
        raise _RootRefused()

    def preexec() -> None:
        layers = ["rlimits"]  # set below, once the file-system view is built (RLIMIT_FSIZE would cap the scripts)
        namespaces = _enter_namespaces(kernel)
        layers += namespaces
        mapped = "user_ns" in namespaces and _map_ids(plan)
        if plan.root is not None:
            if "mount_ns" not in namespaces:
                refuse(layers, b"the kernel refused a mount namespace (unshare)")
            if "user_ns" in namespaces and not mapped:
                refuse(layers, b"the kernel refused the uid/gid map of the user namespace")
            reason = _build_private_root(kernel, plan.root)
            if reason:
                refuse(layers, reason)
            layers += ["private_root", "readonly_fs", "private_shm", "proc_hidden"]
        elif "mount_ns" in namespaces:
            layers += _lock_down_mounts(kernel, plan)
        for which, value in plan.rlimits:
            resource.setrlimit(which, value)
        if kernel.prctl is not None:
            layers += _drop_privileges(kernel)
        if plan.root is not None and "user_ns" not in layers and "caps_dropped" not in layers:
            refuse(layers, b"the program would keep root's capabilities (no user namespace, no capability drop)")
        os.write(plan.report_fd, ",".join(layers).encode())

    return preexec


def _enter_namespaces(kernel: _Kernel) -> list[str]:
    if kernel.unshare is None:
        return []
    common = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC
    for flags in (_CLONE_NEWUSER | common, common, _CLONE_NEWUSER | _CLONE_NEWNET, _CLONE_NEWNET):
        if kernel.unshare(flags) == 0:
            names = []
            for bit, name in ((_CLONE_NEWUSER, "user_ns"), (_CLONE_NEWNET, "net_ns"), (_CLONE_NEWPID, "pid_ns"),
                              (_CLONE_NEWIPC, "ipc_ns"), (_CLONE_NEWNS, "mount_ns")):
                if flags & bit:
                    names.append(name)
            return names
    return []


def _map_ids(plan: _ChildPlan) -> bool:
    """Map the parent's uid/gid to 65534 inside the new user namespace (not 0: exec then grants no capabilities).

    Without a mapping nothing can create files on file systems mounted inside the namespace (the private root,
    /dev/shm: EOVERFLOW). Returns whether both maps were written; the host_readonly view runs unmapped if not.
    """
    mapped = True
    for path, text in ((b"/proc/self/setgroups", b"deny"), (b"/proc/self/uid_map", b"65534 %d 1" % plan.uid),
                       (b"/proc/self/gid_map", b"65534 %d 1" % plan.gid)):
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, text)
            finally:
                os.close(fd)
        except OSError:
            if path != b"/proc/self/setgroups":  # absent on kernels before 3.19
                mapped = False
    return mapped


def _build_private_root(kernel: _Kernel, root: _RootPlan) -> bytes:
    """Build the private root (see :mod:`rlhf.sandbox.rootfs`) and pivot into it; b"" on success, else the reason.

    Runs in the forked child, in its own mount namespace: syscalls only. A failure leaves a half-built tree in a
    namespace that dies with the child.
    """
    mount, umount2, pivot_root = kernel.mount, kernel.umount2, kernel.pivot_root
    if mount is None or umount2 is None or pivot_root is None:
        return b"mount, umount2 or pivot_root is not available"
    if mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return b"making the mounts private (MS_REC|MS_PRIVATE on /): errno %d" % ctypes.get_errno()
    for op, path, argument, number in root.ops:
        status = 0
        try:
            if op == _OP_MKDIR:
                os.mkdir(path, 0o755)
            elif op == _OP_SYMLINK:
                os.symlink(argument, path)
            elif op == _OP_TOUCH:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            elif op == _OP_WRITE:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    view = memoryview(argument)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            elif op == _OP_TMPFS:
                status = mount(b"tmpfs", path, b"tmpfs", number, argument)
            elif op == _OP_BIND:
                status = mount(argument, path, None, _MS_BIND | (_MS_REC if number else 0), None)
            elif op == _OP_READONLY:
                status = mount(None, path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | number, None)
        except OSError as exc:
            return _OP_NAMES[op] + b" " + path + b": errno %d" % (exc.errno or 0)
        if status != 0:
            return _OP_NAMES[op] + b" " + path + b": errno %d" % ctypes.get_errno()
    try:
        os.chdir(root.staging)
        if pivot_root(b".", b".") != 0:
            return b"pivot_root: errno %d" % ctypes.get_errno()
        if umount2(b".", _MNT_DETACH) != 0:
            return b"detaching the old root: errno %d" % ctypes.get_errno()
        os.chdir(b"/")
        os.chdir(root.workdir)
    except OSError as exc:
        return b"entering the new root: errno %d" % (exc.errno or 0)
    return b""


def _lock_down_mounts(kernel: _Kernel, plan: _ChildPlan) -> list[str]:
    """In the new mount namespace: everything read-only except the working directory; private /dev/shm; no /proc."""
    assert kernel.mount is not None
    mount = kernel.mount
    if mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return []  # without private propagation, mounting anything could leak to the parent's namespace
    layers = []
    if mount(plan.workdir, plan.workdir, None, _MS_BIND | _MS_REC, None) == 0:
        readonly = True
        for point, keep, already_ro in plan.remounts:
            if mount(None, point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | keep, None) != 0 and not already_ro:
                readonly = False
        if readonly:
            layers.append("readonly_fs")
    if mount(b"tmpfs", b"/dev/shm", b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=16m,mode=1777") == 0:
        layers.append("private_shm")
    if mount(b"tmpfs", b"/proc", b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_RDONLY, b"size=4k,mode=555") == 0:
        layers.append("proc_hidden")
    os.chdir(plan.workdir)  # the cwd must be the bind mount (writable), not the directory under it
    return layers


def _drop_privileges(kernel: _Kernel) -> list[str]:
    assert kernel.prctl is not None
    prctl = kernel.prctl
    layers = []
    prctl(_PR_SET_SECUREBITS, _SECBITS_NOROOT_LOCKED, 0, 0, 0)
    for cap in range(kernel.cap_last + 1):
        prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    if all(prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) == 0 for cap in range(kernel.cap_last + 1)):
        layers.append("caps_dropped")
    if prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        layers.append("no_new_privs")
        if kernel.seccomp_prog is not None:
            address = ctypes.addressof(kernel.seccomp_prog)
            if prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, address, 0, 0) == 0:
                layers.append("seccomp")
    return layers


# --------------------------------------------------------------------------- resource limits


def _tasks_of_uid(uid: int) -> int:
    """Tasks (threads) whose real uid is ``uid``: what RLIMIT_NPROC counts."""
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                text = f.read()
        except OSError:
            continue
        real_uid = threads = None
        for line in text.splitlines():
            if line.startswith(b"Uid:"):
                real_uid = int(line.split()[1])
            elif line.startswith(b"Threads:"):
                threads = int(line.split()[1])
        if real_uid == uid:
            total += threads or 1
    return total


def _rlimits(limits: SandboxLimits) -> tuple[tuple[int, tuple[int, int]], ...]:
    """(resource, (soft, hard)) pairs for the child, never above the parent's own hard limits."""
    cpu = max(1, math.ceil(limits.cpu_seconds))
    memory = limits.memory_mb * 1024 * 1024
    nproc = limits.max_processes + _BOOTSTRAP_PROCESSES
    if os.getuid() != 0:  # RLIMIT_NPROC counts every task of the real uid (and is not enforced for uid 0)
        nproc += _tasks_of_uid(os.getuid())
    wanted = (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NPROC, (nproc, nproc)),
        (resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files)),
    )
    clamped = []
    for which, (soft, hard) in wanted:
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
        clamped.append((which, (min(soft, hard), hard)))
    return tuple(clamped)

