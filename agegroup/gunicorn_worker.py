"""The gunicorn worker class (``worker_class`` in gunicorn.conf.py): gthread with a deadline.

Slow clients. A gthread worker reads a request (headers and body) in one of its ``threads``,
so a client that sends one byte at a time holds a thread, not the worker: the other threads
keep answering everybody else. Gunicorn itself puts no limit on how long that takes (its
``timeout`` only restarts a worker whose main loop hangs), so ``DeadlineWorker`` closes a
connection whose thread is still waiting for the request ``GUNICORN_REQUEST_DEADLINE`` seconds
(default 30) after it started reading it; the thread is free again at once. Time spent
computing the answer never counts, so a slow prediction on a busy host is not cut. A client
that opens many slow connections can still hold all threads for that long: on the public
internet, a proxy that buffers whole requests before passing them on is the full protection.
tests/test_soak.py::test_slow_clients_do_not_block_other_users checks this behaviour.

Refused clients. A keep-alive connection whose request the app refused for the client's limits
(``agegroup.tarpit``) goes back to the event loop only when its hold ends: its next request is
not read before then, and no thread waits for it.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from functools import partial

from gunicorn.workers.gthread import ThreadWorker

from agegroup import tarpit

# The longest a client may take to send one request (headers and body), from its first byte.
REQUEST_DEADLINE_S = float(os.environ.get("GUNICORN_REQUEST_DEADLINE", "30"))


class _TimedReads:
    """The socket as the request parser sees it: marks when a thread waits for the client."""

    def __init__(self, sock: socket.socket, conn: object) -> None:
        self._sock = sock
        self._conn = conn

    def recv(self, size: int) -> bytes:
        self._conn.waiting = True
        try:
            return self._sock.recv(size)
        finally:
            self._conn.waiting = False


class DeadlineWorker(ThreadWorker):
    """A gthread worker that cuts off clients still sending a request after ``REQUEST_DEADLINE_S``.

    Only time spent waiting for the client counts: a slow prediction is never cut.
    """

    def init_process(self):  # type: ignore[no-untyped-def]
        self._held: list[tuple[float, object]] = []  # (release time, connection), under _lock
        super().init_process()

    def enqueue_req(self, conn):  # type: ignore[no-untyped-def]
        conn.started = time.monotonic()
        conn.waiting = False
        conn.init()  # creates the parser on a connection's first request
        unreader = conn.parser.unreader
        if not isinstance(unreader.sock, _TimedReads):
            unreader.sock = _TimedReads(unreader.sock, conn)
        # As in ThreadWorker.enqueue_req, now that the reads are timed before any thread runs.
        self._wrap_future(self.tpool.submit(self.handle, conn), conn)

    def handle(self, conn):  # type: ignore[no-untyped-def]
        conn.started = time.monotonic()  # a thread starts reading now, not when it was queued
        return super().handle(conn)

    def finish_request(self, fs):  # type: ignore[no-untyped-def]
        """As ThreadWorker's, except that a kept-alive connection the app holds waits aside."""
        release_at = None if fs.cancelled() else tarpit.release_time(fs.conn.sock)
        if release_at is None or fs.exception() is not None:
            return super().finish_request(fs)
        keepalive, conn = fs.result()
        if not (keepalive and self.alive):
            return super().finish_request(fs)
        conn.sock.setblocking(False)
        with self._lock:
            self._held.append((release_at, conn))
        return None

    def release_held(self) -> None:
        """Connections whose hold has ended go back to the event loop, as kept-alive ones."""
        now = time.monotonic()
        with self._lock:
            due = [conn for at, conn in self._held if at <= now]
            self._held = [(at, conn) for at, conn in self._held if at > now]
            for conn in due:
                conn.set_timeout()
                self._keep.append(conn)
                self.poller.register(
                    conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
                )

    def murder_keepalived(self):  # type: ignore[no-untyped-def]
        """Runs about once a second in the main loop: also close requests past the deadline,
        and release held connections."""
        super().murder_keepalived()
        self.release_held()
        now = time.monotonic()
        for future in list(self.futures):
            conn = future.conn
            if future.done() or not conn.waiting or now - conn.started < REQUEST_DEADLINE_S:
                continue
            conn.waiting = False
            self.log.warning(
                "Closing a connection from %s still sending its request after %.0f s",
                conn.client[0] if conn.client else "?",
                REQUEST_DEADLINE_S,
            )
            try:
                # Wakes the thread blocked on this socket: its read sees the end of the stream.
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
