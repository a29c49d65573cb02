"""The hostile-program corpus: what a model-written program may try against the sandbox, and what "contained" means
for each attempt. Run in CI by ``tests/unit/test_sandbox_corpus.py`` and measured by ``bench/sandbox_corpus.py``.

Modules: ``attempts.py`` (the :class:`Attempt` record, the attempt tables, the documented limits),
``files.py`` (reading and writing host files), ``processes.py`` (network, process escape, resource exhaustion,
exit tricks), ``host.py`` (the host-side fixtures), ``judge.py`` (running an attempt and judging it).

Each :class:`Attempt` is a program (and, for ``run_tests`` attempts, tests it tries to pass) with ``$name``
placeholders that :class:`Host` fills with the host-side facts: a secret written outside the work directory before
the run (a hidden-tests file, a dataset of answers, a file in the home directory, an environment variable of this
process), TCP/UDP/Unix listeners, a decoy process of the same user, and paths to write to. :func:`judge` lists why
a run was *not* contained (empty: contained). Every attempt must:

* have run (status other than "error": a refused or broken sandbox contains nothing by being absent),
* leak none of the host's sentinels into stdout/stderr: the secret, the first lines of /etc/passwd and
  /etc/shadow, and the names of entries of the host's /, home directory, repository and the secret's directory
  (as Python prints them in a list: ``'name'``),
* leave no live process in its process group, and end within its wall-clock limit plus a margin,

and pass its own checks (:data:`CHECKS`). Probe programs print a line starting ``BLOCKED`` when the attempt failed
and ``ESCAPED`` when it worked; the ``blocked`` check wants the first and not the second, so a probe that crashed
before probing is not counted as contained.

:data:`DOCUMENTED_LIMITS` lists what the sandbox does not contain (not run as attempts).
"""

from rlhf.sandbox.corpus.attempts import CORPUS_LIMITS, DOCUMENTED_LIMITS, Attempt
from rlhf.sandbox.corpus.files import FILE_ATTEMPTS
from rlhf.sandbox.corpus.host import Host, processes_with
from rlhf.sandbox.corpus.judge import CHECKS, Outcome, attempt_limits, judge, run_attempt
from rlhf.sandbox.corpus.processes import PROCESS_ATTEMPTS

ATTEMPTS: tuple[Attempt, ...] = FILE_ATTEMPTS + PROCESS_ATTEMPTS

__all__ = ["ATTEMPTS", "CHECKS", "CORPUS_LIMITS", "DOCUMENTED_LIMITS", "Attempt", "Host", "Outcome", "attempt_limits",
           "judge", "processes_with", "run_attempt"]
