"""The private root of a sandboxed run (``SandboxLimits.filesystem="private"``): what it holds, and the ordered
operations that build it, computed in the parent (the child only makes syscalls: :func:`kernel._build_private_root`).

What the program sees
---------------------
* ``/sandbox``: its working directory, a tmpfs of ``scratch_mb`` holding copies of its scripts (writable);
* ``/tmp``: a private tmpfs of ``scratch_mb`` (writable, mode 1777); ``/dev/shm``: a private 16 MiB tmpfs;
* ``/dev/null``, ``/dev/zero``, ``/dev/random``, ``/dev/urandom``: bind mounts of the host's device nodes;
* read-only, each at its host path: the interpreter binary (``realpath(sys.executable)``), the standard library
  directory (and ``lib-dynload`` when it lies elsewhere), the shared libraries the interpreter and the standard
  library's extension modules load (``ldd`` once per process; the loader itself, ``libgcc_s`` for thread exit;
  when ``ldd`` finds nothing, the host's /lib, /lib64, /usr/lib, /usr/lib64 whole), the C.UTF-8 locale data
  (``/usr/lib/locale/C.utf8``, for ``setlocale``), the time-zone database (``/usr/share/zoneinfo``), and the
  caller's ``readonly_paths``/``python_paths``; the symlinks on the way to each (``/lib -> usr/lib``,
  ``libz.so.1 -> libz.so.1.2.13``) are recreated as symlinks, and only the directories leading to them exist;
* nothing else: no /etc, no /proc, no /sys, no home directories, no /root beyond the path to the runtime when it
  lives there; the root directory itself is a read-only tmpfs.

How it is built (in the child, after ``unshare`` and the uid/gid maps; any failure refuses the run)
----------------------------------------------------------------------------------------------------
1. make every mount private (``MS_REC|MS_PRIVATE`` on /), so nothing below propagates to the host;
2. mount a small tmpfs over the (host) working directory: the staging point of the new root;
3. create the skeleton: /sandbox, /tmp, /dev, /dev/shm; mount their tmpfs;
4. create the directories, symlinks and empty files that the bind mounts need as mount points;
5. bind each exposed host path (directories recursively), then remount each bind and every mount below it
   read-only (``MS_BIND|MS_REMOUNT|MS_RDONLY``, keeping the source mount's nosuid/nodev/noexec and atime flags,
   which the kernel locks in a user namespace); the device nodes likewise;
6. write the scripts into /sandbox;
7. remount the root tmpfs read-only;
8. ``chdir`` into it, ``pivot_root(".", ".")``, detach the old root (``umount2(".", MNT_DETACH)``), ``chdir`` to
   /sandbox. The seccomp filter installed next forbids mount, umount2 and pivot_root to the program.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

from rlhf.sandbox import kernel
from rlhf.sandbox.records import WORKDIR, SandboxLimits

DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
_FALLBACK_LIBRARY_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64")
_ROOT_OPTIONS = b"size=1m,nr_inodes=4096,mode=755"
_SHM_OPTIONS = b"size=16m,nr_inodes=1024,mode=1777"
_TMPFS_FLAGS = kernel._MS_NOSUID | kernel._MS_NODEV


@dataclass(frozen=True)
class Exposure:
    """Host paths made visible (read-only) in the private root, with what leads to them."""

    dirs: tuple[str, ...]  # real directories on the way (created empty in the root), parents first
    links: tuple[tuple[str, str], ...]  # (symlink path, its target as written)
    binds: tuple[tuple[str, bool], ...]  # (real path, is a directory), bound at the same path


def interpreter() -> str:
    """The interpreter a sandboxed run executes: the real file behind ``sys.executable`` (not a venv's symlink,
    whose directory the private root does not show)."""
    return _interpreter()


@lru_cache(maxsize=1)
def _interpreter() -> str:
    return os.path.realpath(sys.executable)


@lru_cache(maxsize=1)
def runtime_paths() -> tuple[str, ...]:
    """Host paths the interpreter needs to start and import the standard library (computed once per process)."""
    exe = _interpreter()
    stdlib = os.path.dirname(os.__file__)
    paths = [exe, stdlib]
    dynload = [p for p in sys.path if p.endswith("lib-dynload") and os.path.isdir(p)]
    paths += [p for p in dynload if not _inside(os.path.realpath(p), os.path.realpath(stdlib))]
    modules = [os.path.join(d, name) for d in dynload for name in sorted(os.listdir(d)) if ".so" in name]
    libraries = _shared_libraries([exe, *modules])
    if libraries:
        paths += libraries
    else:  # no ldd (or it found nothing): the usual library directories, whole
        paths += [d for d in _FALLBACK_LIBRARY_DIRS if os.path.isdir(d)]
    # the C.UTF-8 locale the environment names (LANG/LC_ALL): glibc reads it from here for setlocale()
    locales = [p for p in _LOCALES if os.path.exists(p)]
    paths += locales[:1]
    paths += [p for p in _DATA if os.path.isdir(p)]
    return tuple(dict.fromkeys(paths))


_LOCALES = ("/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8", "/usr/lib/locale/locale-archive")
_DATA = ("/usr/share/zoneinfo",)  # public data the standard library reads (zoneinfo)


_LDD_PATH = re.compile(r"(?:=>\s*|^\s*)(/[^\s()]+)")


def _shared_libraries(files: Sequence[str]) -> list[str]:
    """The shared objects ``files`` load, as the loader names them (``ldd``), plus ``libgcc_s`` next to libc
    (glibc loads it when a thread exits through pthread_exit, e.g. daemon threads at interpreter shutdown)."""
    try:
        out = subprocess.run(["ldd", *files], capture_output=True, text=True, timeout=120, check=False,
                             env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found: list[str] = []
    for line in out.splitlines():
        if line.rstrip().endswith(":"):  # "file:" headers when several files are listed
            continue
        match = _LDD_PATH.search(line)
        if match and os.path.exists(match.group(1)):
            found.append(match.group(1))
    for library in list(found):
        if os.path.basename(library).startswith("libc.so"):
            gcc = os.path.join(os.path.dirname(library), "libgcc_s.so.1")
            if os.path.exists(gcc):
                found.append(gcc)
    return list(dict.fromkeys(found))


@lru_cache(maxsize=64)
def exposure(paths: tuple[str, ...]) -> Exposure:
    """Resolve ``paths`` into directories, symlinks and binds; raises OSError for a path that does not exist."""
    dirs: set[str] = set()
    links: dict[str, str] = {}
    binds: dict[str, bool] = {}
    for path in paths:
        _walk(os.path.normpath(path), dirs, links, binds, 0)
    bound_dirs = sorted(p for p, is_dir in binds.items() if is_dir)

    def covered(path: str) -> bool:  # strictly inside a bound directory: the bind shows it already
        return any(_inside(path, d) and path != d for d in bound_dirs)

    keep_binds = {p: d for p, d in binds.items() if not covered(p)}
    keep_links = {p: t for p, t in links.items() if not covered(p)}
    keep_dirs = {d for d in dirs if not covered(d) and d not in keep_binds}
    return Exposure(
        dirs=tuple(sorted(keep_dirs, key=_depth_first)),
        links=tuple(sorted(keep_links.items(), key=lambda item: _depth_first(item[0]))),
        binds=tuple(sorted(keep_binds.items(), key=lambda item: _depth_first(item[0]))),
    )


def _walk(path: str, dirs: set[str], links: dict[str, str], binds: dict[str, bool], depth: int) -> None:
    if depth > 40:
        raise OSError(f"too many levels of symbolic links resolving {path}")
    parts = [part for part in path.split("/") if part]
    current = "/"
    for i, part in enumerate(parts):
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            target = os.readlink(candidate)
            links[candidate] = target
            resolved = os.path.normpath(os.path.join(current, target))
            _walk(os.path.join(resolved, *parts[i + 1 :]), dirs, links, binds, depth + 1)
            return
        if i < len(parts) - 1:
            dirs.add(candidate)
        current = candidate
    if not os.path.exists(current):
        raise FileNotFoundError(f"{path} does not exist")
    binds[current] = os.path.isdir(current)


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _depth_first(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


# --------------------------------------------------------------------------- the operations


def plan_root(staging: str, limits: SandboxLimits, scripts: Iterable[tuple[str, str]]) -> kernel._RootPlan:
    """The ordered operations that build the private root on ``staging`` (an empty host directory), for the child.

    Raises OSError when a path to expose does not exist.
    """
    paths = runtime_paths() + limits.readonly_paths + limits.python_paths
    template = _template(paths, kernel._mount_table(), limits.scratch_mb)
    base = os.fsencode(staging)
    ops = [(op, base + path, argument, number) for op, path, argument, number in template[:-1]]
    for name, source in scripts:
        ops.append((kernel._OP_WRITE, base + os.fsencode(os.path.join(WORKDIR, name)), source.encode("utf-8"), 0))
    op, path, argument, number = template[-1]  # the root, read-only: last
    ops.append((op, base + path, argument, number))
    return kernel._RootPlan(staging=base, workdir=os.fsencode(WORKDIR), ops=tuple(ops))


@lru_cache(maxsize=64)
def _template(paths: tuple[str, ...], table: tuple[tuple[bytes, int, bool], ...], scratch_mb: int
              ) -> tuple[tuple[int, bytes, bytes, int], ...]:
    """The operations with paths inside the new root (b"" is its root); :func:`plan_root` prefixes the staging
    point and inserts the scripts before the last operation (the root's read-only remount)."""
    exposed = exposure(paths)

    def at(path: str) -> bytes:
        return os.fsencode(path)

    ops: list[tuple[int, bytes, bytes, int]] = [(kernel._OP_TMPFS, b"", _ROOT_OPTIONS, _TMPFS_FLAGS)]
    made = {"/"}
    for point in (WORKDIR, "/tmp", "/dev", "/dev/shm"):
        ops.append((kernel._OP_MKDIR, at(point), b"", 0))
        made.add(point)
    scratch = b"size=%dk,nr_inodes=%d" % (scratch_mb * 1024, 4096)
    ops.append((kernel._OP_TMPFS, at(WORKDIR), scratch + b",mode=755", _TMPFS_FLAGS))
    ops.append((kernel._OP_TMPFS, at("/tmp"), scratch + b",mode=1777", _TMPFS_FLAGS))
    ops.append((kernel._OP_TMPFS, at("/dev/shm"), _SHM_OPTIONS, _TMPFS_FLAGS))
    for directory in exposed.dirs:
        if directory not in made:
            ops.append((kernel._OP_MKDIR, at(directory), b"", 0))
            made.add(directory)
    for link, target in exposed.links:
        ops.append((kernel._OP_SYMLINK, at(link), os.fsencode(target), 0))
    binds = [(path, is_dir, True) for path, is_dir in exposed.binds]
    binds += [(device, False, False) for device in DEVICES]
    for path, is_dir, recursive in binds:
        if is_dir:
            if path not in made:
                ops.append((kernel._OP_MKDIR, at(path), b"", 0))
                made.add(path)
        else:
            ops.append((kernel._OP_TOUCH, at(path), b"", 0))
        ops.append((kernel._OP_BIND, at(path), os.fsencode(path), int(recursive and is_dir)))
        ops.append((kernel._OP_READONLY, at(path), b"", _flags_of(path, table)))
        if recursive and is_dir:
            for point, flags, _ in table:
                text = os.fsdecode(point)
                if text != path and _inside(text, path):
                    ops.append((kernel._OP_READONLY, at(text), b"", flags))
    ops.append((kernel._OP_READONLY, b"", b"", _TMPFS_FLAGS))
    return tuple(ops)


def _flags_of(path: str, table: Sequence[tuple[bytes, int, bool]]) -> int:
    """The option flags of the mount that holds ``path`` (the longest mount point above it; the last one mounted
    there wins, as in /proc/self/mountinfo's order)."""
    best, flags = -1, 0
    for point, point_flags, _ in table:
        text = os.fsdecode(point)
        if _inside(path, text) and len(text) >= best:
            best, flags = len(text), point_flags
    return flags
