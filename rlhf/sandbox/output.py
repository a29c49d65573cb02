"""What leaves the sandbox: a bounded capture of each output stream, and the text contract of the result
(``SandboxResult.stdout`` / ``stderr``): UTF-8 with undecodable bytes replaced, terminal escapes and control
characters dropped, the host work directory and the completion token replaced, a truncation line when capped."""

from __future__ import annotations

import re
from collections import deque


class Capture:
    """Keeps the first ``limit`` bytes of a stream (and, optionally, its last ``tail`` bytes); drops the rest."""

    def __init__(self, limit: int, tail: int = 0) -> None:
        self.head = bytearray()
        self.limit = limit
        self.total = 0
        self.tail: deque[bytes] = deque()
        self._tail_limit, self._tail_size = tail, 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
        if self._tail_limit:
            self.tail.append(chunk[-self._tail_limit :])
            self._tail_size += len(self.tail[-1])
            while self._tail_size - len(self.tail[0]) >= self._tail_limit:
                self._tail_size -= len(self.tail.popleft())

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def tail_text(self) -> str:
        return b"".join(self.tail).decode("utf-8", "replace")


# What the result's text drops: terminal escape sequences (CSI, OSC, two-character ESC ones), then every control
# character but \n, \t, \r (C0, DEL, C1) and the bidirectional overrides/isolates.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]?|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~]?)")
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
TOKEN_PLACEHOLDER = "[token]"


def clean_text(capture: Capture, stream: str, scrub: dict[str, str]) -> str:
    """The output contract of :class:`SandboxResult`: UTF-8 (undecodable bytes replaced), escape sequences and
    control characters but \\n\\t\\r dropped, each ``scrub`` key (the host work directory, the completion token)
    replaced by its value, and a truncation line when the stream exceeded its cap.

    Controls are dropped before the replacements, so a path or token split by control characters is still found.
    """
    head = bytes(capture.head)
    if capture.truncated:  # the cap may have cut a UTF-8 sequence: drop its first bytes rather than show U+FFFD
        cut = len(head)
        for back in range(1, min(4, len(head)) + 1):
            byte = head[-back]
            if byte & 0xC0 != 0x80:  # the last sequence's first byte
                need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
                if need > back:
                    cut = len(head) - back
                break
        head = head[:cut]
    text = _CONTROLS.sub("", _ESCAPES.sub("", head.decode("utf-8", "replace")))
    for secret in sorted(scrub, key=len, reverse=True):
        if secret:
            text = text.replace(secret, scrub[secret])
    if capture.truncated:
        if text and not text.endswith("\n"):
            text += "\n"
        text += f"[sandbox] {stream} truncated: {len(head)} of {capture.total} bytes kept\n"
    return text
