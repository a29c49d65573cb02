"""The hostile-program corpus (rlhf/sandbox/corpus/) against the default sandbox: every attempt is contained.

The corpus holds what a model-written program may try (read host files, write outside its directory, reach the
network, escape its process group, exhaust resources, exit before the tests finish), each with what "contained"
means. The secret it tries to read is written by this test outside the sandbox's work directory before the run.
Two more tests keep the corpus honest: its programs are well-formed and name no sentinel themselves, and the same
checks flag the leaks in the weaker host_readonly view (so a contained verdict is not vacuous).

Runs in ~15-20 s on 2 cores (most attempts take ~60 ms; a handful hit their 1.5-3 s wall limits).
Run: pytest tests/unit/test_sandbox_corpus.py -q
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rlhf.sandbox import corpus, isolation_layers, run_python

pytestmark = pytest.mark.skipif("private_root" not in isolation_layers(),
                                reason="the kernel refuses the private file-system view on this machine")

GROUPS = {"read", "write", "network", "escape", "exhaustion", "exit"}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    with corpus.Host(str(tmp_path_factory.mktemp("corpus"))) as h:
        yield h


def test_corpus_is_well_formed(host):
    names = [a.name for a in corpus.ATTEMPTS]
    assert len(names) == len(set(names))
    assert {a.group for a in corpus.ATTEMPTS} == GROUPS
    for attempt in corpus.ATTEMPTS:
        assert set(attempt.checks) <= set(corpus.CHECKS), attempt.name
        assert attempt.checks or attempt.group == "read", f"{attempt.name}: only the default checks"
        limits = corpus.attempt_limits(attempt)
        texts = [host.fill(attempt.program, limits)] + ([host.fill(attempt.tests, limits)] if attempt.tests else [])
        for text in texts:
            compile(text, attempt.name, "exec")
            # a sentinel in the program itself could reach the output through a traceback: a false leak
            assert not [s for s in host.sentinels if s in text], attempt.name
    # the secret really is there, outside the work directory, readable by this process (and by the same uid)
    assert Path(host.secret_path).read_text().strip() == host.token
    assert len(host.sentinels) > 5


@pytest.mark.parametrize("attempt", corpus.ATTEMPTS, ids=lambda a: a.name)
def test_attempt_is_contained(attempt, host):
    outcome = corpus.run_attempt(attempt, host)
    r = outcome.result
    assert outcome.contained, (f"{attempt.name} was not contained: {outcome.failures}\n"
                               f"status {r.status}\nstdout: {r.stdout[-1500:]}\nstderr: {r.stderr[-1500:]}")


@pytest.mark.parametrize("name", ["read_secret_open", "read_etc_passwd", "list_root_home", "read_repository",
                                  "read_secret_to_pass_tests", "disk_many_files"])
def test_the_checks_catch_what_the_weaker_view_lets_through(name, host):
    """In the host_readonly view these attempts succeed, and the corpus's checks say so."""
    attempt = next(a for a in corpus.ATTEMPTS if a.name == name)
    outcome = corpus.run_attempt(attempt, host, dataclasses.replace(corpus.CORPUS_LIMITS, filesystem="host_readonly"))
    assert not outcome.contained, outcome


def test_the_machine_still_works_after_the_corpus(host):
    assert host.decoy_state() == "alive"
    assert corpus.processes_with(host.marker) == []
    result = run_python("print('still fine')", limits=corpus.CORPUS_LIMITS)
    assert result.status == "ok" and result.stdout == "still fine\n"
