"""The emulator's error reply.

In:  an HTTP status and a message (Kaggle's wording where known).
Out: `ApiError`, which the HTTP layer sends as Kaggle's {"code", "message"} body.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error reply: HTTP status and Kaggle's {"code", "message"} body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
