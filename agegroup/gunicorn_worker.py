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

Held answers. The app may ask for an answer to be sent later (``agegroup.tarpit``: a refusal
for the client's limits): the request's thread writes it into memory and is free at once, and
the event loop sends it when its time comes, then handles the connection as any other.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from functools import partial

from gunicorn.workers.gthread import ThreadWorker

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


class _HeldAnswer:
    """The socket as one request's answer is written to it: once ``hold_answer`` was called
    (through ``environ["gunicorn.socket"]``), what is written is kept, to be sent by the event
    loop at ``release_at``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.release_at: float | None = None
        self.kept: list[bytes] = []

    def hold_answer(self, seconds: float) -> None:
        self.release_at = time.monotonic() + seconds

    def sendall(self, data: bytes) -> None:
        if self.release_at is None:
            self.sock.sendall(data)
        else:
            self.kept.append(bytes(data))

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


class _Held:
    """An answer waiting in the event loop, and what to do with its connection after it."""

    def __init__(self, conn: object, release_at: float, answer: bytes, keepalive: bool) -> None:
        self.conn = conn
        self.release_at = release_at
        self.answer = answer
        self.keepalive = keepalive
        # A client that does not read its answer within this long is dropped.
        self.give_up_at = release_at + REQUEST_DEADLINE_S


class DeadlineWorker(ThreadWorker):
    """A gthread worker that cuts off clients still sending a request after ``REQUEST_DEADLINE_S``.

    Only time spent waiting for the client counts: a slow prediction is never cut.
    """

    def init_process(self):  # type: ignore[no-untyped-def]
        self._held: list[_Held] = []  # answers the event loop sends later, under _lock
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
        sock = conn.sock
        conn.sock = written = _HeldAnswer(sock)
        try:
            keepalive, conn = super().handle(conn)
        finally:
            conn.sock = sock
        conn.held = None
        if written.release_at is not None:
            conn.held = _Held(conn, written.release_at, b"".join(written.kept), keepalive)
        return keepalive, conn

    def finish_request(self, fs):  # type: ignore[no-untyped-def]
        """As ThreadWorker's, except that a held answer waits for the event loop."""
        held = None if fs.cancelled() else getattr(fs.conn, "held", None)
        if held is None or fs.exception() is not None:
            return super().finish_request(fs)
        held.keepalive = held.keepalive and self.alive
        with self._lock:
            self._held.append(held)
        return None

    def send_held(self) -> None:
        """Send the held answers whose time has come; then keep their connections alive, or
        close them, as their requests asked."""
        now = time.monotonic()
        with self._lock:
            due = [held for held in self._held if held.release_at <= now]
            self._held = [held for held in self._held if held.release_at > now]
        for held in due:
            conn = held.conn
            try:
                conn.sock.setblocking(False)
                sent = conn.sock.send(held.answer)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent, held.keepalive, held.answer = 0, False, b""
            held.answer = held.answer[sent:]
            if held.answer and now < held.give_up_at:
                with self._lock:
                    self._held.append(held)  # the client reads slowly: more next time round
            elif held.keepalive and not held.answer:
                conn.set_timeout()
                with self._lock:
                    self._keep.append(conn)
                    self.poller.register(
                        conn.sock,
                        selectors.EVENT_READ,
                        partial(self.on_client_socket_readable, conn),
                    )
            else:
                self.nr_conns -= 1
                conn.close()

    def murder_keepalived(self):  # type: ignore[no-untyped-def]
        """Runs about once a second in the main loop: also close requests past the deadline,
        and send the held answers that are due."""
        super().murder_keepalived()
        self.send_held()
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
