"""A connect and read timeout for every HTTP request the kaggle client makes.

In:  the environment: KIT_CONNECT_TIMEOUT_S (default 10) and KIT_READ_TIMEOUT_S (default 30).
     (30 s: a Kaggle RPC answers in seconds; with kit.kaggle.retry's call budget a stalled call gives
     up within about 90 s instead of retrying 60 s timeouts for minutes.)
Out: `install()`: from then on, a request sent through `requests` without a timeout of its own
     gets (connect, read); `current()` says what they are.

Why: kagglesdk sends API calls with no timeout (`kaggle_http_client.py` calls `session.send`
without one) and the client's submission upload opens its own session, also without one; a
stalled connection would hang kit for ever. Neither exposes the session before the call, so the
default is set where every such request passes: `requests.adapters.HTTPAdapter.send`. Requests
that name a timeout (kit's downloads) keep theirs. Installing twice is harmless.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kit.errors import KitError

DEFAULT_CONNECT_S = 10.0
DEFAULT_READ_S = 30.0
_MARK = "_kit_default_timeout"


def current(environ: Mapping[str, str] | None = None) -> tuple[float, float]:
    """(connect, read) seconds from the environment."""
    env = os.environ if environ is None else environ
    try:
        connect = float(env.get("KIT_CONNECT_TIMEOUT_S", DEFAULT_CONNECT_S))
        read = float(env.get("KIT_READ_TIMEOUT_S", DEFAULT_READ_S))
    except ValueError as exc:
        raise KitError(f"KIT_CONNECT_TIMEOUT_S / KIT_READ_TIMEOUT_S: expected numbers of seconds ({exc})") from None
    if connect <= 0 or read <= 0:
        raise KitError("KIT_CONNECT_TIMEOUT_S / KIT_READ_TIMEOUT_S: expected seconds > 0")
    return connect, read


def install() -> None:
    """Give every `requests` call without a timeout the (connect, read) timeout of `current()`."""
    from requests.adapters import HTTPAdapter

    if getattr(HTTPAdapter.send, _MARK, False):
        return
    original = HTTPAdapter.send

    def send(self: HTTPAdapter, request: Any, stream: bool = False, timeout: Any = None, *args: Any,
             **kwargs: Any) -> Any:
        return original(self, request, stream, current() if timeout is None else timeout, *args, **kwargs)

    setattr(send, _MARK, True)
    HTTPAdapter.send = send  # type: ignore[method-assign]
