"""Refused clients wait before their next request is read: the 429 costs them time, not us CPU.

A client past its limits that keeps posting on keep-alive connections gets one 429 after
another; each costs the worker about 1.5 ms of CPU (gunicorn, Flask, the limiter), so a client
that sends the next request as soon as it has the answer keeps a small CPU busy with refusals
alone, and everybody else's predictions wait for it. When a prediction route refuses a client
(``agegroup.limits``), it marks the connection with the refusal's ``Retry-After``, and the
gunicorn worker (``agegroup.gunicorn_worker``) reads nothing more from that connection until
then, at most ``MAX_HOLD_S``: no thread waits meanwhile, the connection simply is not polled.
An abusive client's rate falls to one request per connection every few seconds; a browser that
was refused only finds its next request answered when it was told it may retry anyway.

Outside gunicorn (Flask's test client, Werkzeug) there is no connection to hold: ``hold`` does
nothing there.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

# The longest a connection is held: about gunicorn's keep-alive timeout, so that held
# connections do not pile up for longer than idle ones would.
MAX_HOLD_S = 10.0

_held: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def hold(environ: dict[str, Any], seconds: float) -> None:
    """Read nothing more from this request's connection for ``seconds`` (at most
    ``MAX_HOLD_S``) after its answer is sent."""
    sock = environ.get("gunicorn.socket")
    if sock is None or seconds <= 0:
        return
    with _lock:
        _held[sock] = time.monotonic() + min(seconds, MAX_HOLD_S)


def release_time(sock: Any) -> float | None:
    """When the connection on ``sock`` may be read again (``time.monotonic()``), or ``None``
    when it is not held; forgets it either way."""
    with _lock:
        return _held.pop(sock, None)
