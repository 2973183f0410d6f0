"""Scripted answers: make the emulator answer the next call(s) of an RPC with a given class of reply.

In:  `AnswerScript.push(call, answers)`, where `call` is "<service>/<Method>" (or "*" for any call)
     and each answer is one of `ANSWER_CLASSES` (a 429 may carry its Retry-After: "429:120",
     "429:Wed, 21 Oct 2026 07:28:00 GMT", "429:soon").
Out: `AnswerScript.next(call)`: the answer for this call (None: answer normally); `http` acts on it.

What each class does on the wire (the property tests drive every RPC kit uses with these):
  400 401 403 404 409 500  Kaggle's {"code", "message"} error, before any work is done
  429[:RA]                 a rate-limit refusal, before any work, with Retry-After RA (absent if not given)
  502-html 503-html        a gateway error page (text/html), before any work
  empty truncated          the work is done, then a 200 whose JSON body is empty / cut in half
  stall                    the work is done, then the reply is held for `Realism.stall_s`
  lost                     the work is done, then a 500 (the client never sees the real reply)
  unnumbered               the work is done, then a 200 whose reply lacks its version number (a push Kaggle
                           took without saying which version it made); other replies as usual
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

BEFORE_WORK = ("400", "401", "403", "404", "409", "429", "500", "502-html", "503-html")
AFTER_WORK = ("empty", "truncated", "stall", "lost", "unnumbered")
ANSWER_CLASSES = BEFORE_WORK + AFTER_WORK
ANY_CALL = "*"
MESSAGES = {"400": "Invalid request", "401": "Unauthenticated", "403": "Permission denied",
            "404": "Not found", "409": "Conflict: a concurrent change", "500": "Internal server error"}
HTML_PAGE = "<html><head><title>{status}</title></head><body><h1>{status} Server Error</h1></body></html>"


def answer_class(answer: str) -> str:
    """The class of an answer ("429:120" -> "429")."""
    return answer.split(":", 1)[0]


def retry_after(answer: str) -> str | None:
    """The Retry-After a "429:RA" answer carries (None when it carries none)."""
    head, sep, value = answer.partition(":")
    return value if sep and head == "429" else None


class AnswerScript:
    """Queues of scripted answers per call, consumed in order (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[str]] = {}
        self.used: list[tuple[str, str]] = []  # (call, answer) as given out, for a test's report

    def push(self, call: str, answers: Iterable[str]) -> None:
        items = list(answers)
        for answer in items:
            if answer_class(answer) not in ANSWER_CLASSES:
                raise ValueError(f"answer {answer!r}: expected one of {', '.join(ANSWER_CLASSES)}")
        with self._lock:
            self._queues.setdefault(call, deque()).extend(items)

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()
            self.used.clear()

    def next(self, call: str) -> str | None:
        with self._lock:
            for key in (call, ANY_CALL):
                queue = self._queues.get(key)
                if queue:
                    answer = queue.popleft()
                    self.used.append((call, answer))
                    return answer
        return None
