"""A refusal's answer waits a moment: the 429 costs a flooding client time, not the server CPU.

A client past its limits that posts again as soon as it has its answer gets one 429 after
another; each costs the worker about 1.5 ms of CPU (gunicorn, Flask, the limiter), so such a
client keeps a small CPU busy with refusals alone, and everybody else's predictions wait. When a
prediction route refuses a client for its limits (``agegroup.limits``), it asks for its answer
to be sent only ``Retry-After`` seconds later, at most ``MAX_HOLD_S``: the gunicorn worker
(``agegroup.gunicorn_worker``) keeps the written answer and sends it from its event loop then,
so no thread waits. A client that waits for each answer is slowed to one request per connection
every ``MAX_HOLD_S``. The connection is busy meanwhile, so a proxy in front (Render's) sends
other visitors' requests on its other connections, and a browser fetches the page's files on
others too.

Outside gunicorn (Flask's test client, Werkzeug) answers are sent at once: ``hold`` does
nothing there.
"""

from __future__ import annotations

from typing import Any

# The longest a refusal's answer waits: enough that a flood over a few connections costs
# little, short enough that a person who was refused reads why at once.
MAX_HOLD_S = 2.0


def hold(environ: dict[str, Any], seconds: float) -> None:
    """Send this request's answer ``seconds`` from now (at most ``MAX_HOLD_S``), where the
    server can (gunicorn's worker offers ``hold_answer`` on the request's socket)."""
    hold_answer = getattr(environ.get("gunicorn.socket"), "hold_answer", None)
    if hold_answer is not None and seconds > 0:
        hold_answer(min(seconds, MAX_HOLD_S))
