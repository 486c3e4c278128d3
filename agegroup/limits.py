"""Per-client limits on the prediction routes, so that one client cannot take the whole CPU.

Two rules, both off with ``AGE_RATE_LIMIT=off`` (the default for local runs and tests):

- a rate: at most ``AGE_RATE_LIMIT`` predictions (``30/minute;300/hour``) per client, counted by
  Flask-Limiter in a moving window, shared by the form post and the JSON API. Past it the
  client gets 429 with ``Retry-After``: the seconds until its oldest prediction leaves the window;
- an in-flight cap: at most ``AGE_MAX_INFLIGHT_PER_CLIENT`` predictions of one client at once in
  this worker, so that one client's parallel requests cannot fill all of its threads. Past it,
  429 at once, before the upload is read.

Under gunicorn, a refusal's answer is sent up to 2 s late, without a thread waiting
(``agegroup.tarpit``): a client that keeps posting cannot keep the CPU busy with refusals.

A client is its address as seen through the trusted proxies (``request.remote_addr`` after
ProxyFix); an IPv6 client is its /64 network, since one host usually holds a whole /64 and
could otherwise take a new address for every request.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, request
from flask_limiter import Limiter, RateLimitExceeded
from limits import RateLimitItem, parse_many

from agegroup import tarpit
from agegroup.config import Settings
from agegroup.errors import RateLimited, TooManyInFlight

log = logging.getLogger(__name__)

OFF = "off"
# The routes that run a prediction (blueprint endpoints of agegroup.web).
PREDICTION_ENDPOINTS = ("web.predict_page", "web.predict_api")
# One budget for both routes: a photo costs the same whichever way it comes.
SCOPE = "predictions"
# What an in-flight refusal asks the client to wait: a prediction takes well under a second
# here, a couple of seconds on a small share of a CPU.
INFLIGHT_RETRY_S = 2


def client_key() -> str:
    """The client a request counts against: its address, or its /64 network for IPv6."""
    address = request.remote_addr or "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def describe(limit: RateLimitItem) -> str:
    """'30 per minute', '3 per 10 seconds'."""
    unit = limit.GRANULARITY.name
    if limit.multiples == 1:
        return f"{limit.amount} per {unit}"
    return f"{limit.amount} per {limit.multiples} {unit}s"


def check_rate_limit(text: str) -> None:
    """Refuse at startup what Flask-Limiter would fail on at the first request."""
    try:
        parse_many(text)
    except ValueError as exc:
        raise ValueError(
            f"AGE_RATE_LIMIT must be limits such as '30/minute;300/hour', or 'off', not {text!r}"
        ) from exc


class InflightCap:
    """How many predictions each client has in flight in this process, at most ``most``."""

    def __init__(self, most: int) -> None:
        self.most = most
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    def held(self, key: str) -> int:
        with self._lock:
            return self._held.get(key, 0)

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """A slot for ``key`` while the block runs; ``TooManyInFlight`` (429) if all are held."""
        with self._lock:
            held = self._held.get(key, 0)
            if held >= self.most:
                raise TooManyInFlight(
                    f"Your other photos are still being worked on (at most {self.most} at once "
                    f"from one address). Please try again in {INFLIGHT_RETRY_S} seconds, once "
                    "they are done.",
                    INFLIGHT_RETRY_S,
                )
            self._held[key] = held + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._held[key] - 1
                if left:
                    self._held[key] = left
                else:
                    del self._held[key]


class ClientLimits:
    """The rate limit and the in-flight cap of one app, wrapped around its prediction views."""

    def __init__(self, app: Flask, settings: Settings) -> None:
        check_rate_limit(settings.rate_limit)
        shared_store = not settings.ratelimit_storage_uri.startswith("memory://")
        self.limiter = Limiter(
            client_key,
            app=app,
            storage_uri=settings.ratelimit_storage_uri,
            strategy="moving-window",
            key_prefix="agegroup",
            # A shared store that stops answering: count in this process's memory meanwhile
            # (Flask-Limiter logs it), rather than refusing every prediction with a 500.
            in_memory_fallback=[settings.rate_limit] if shared_store else None,
            in_memory_fallback_enabled=shared_store,
        )
        if shared_store and not self.limiter.storage.check():
            log.error("the rate-limit store %s does not answer", settings.ratelimit_storage_uri)
        self.inflight = InflightCap(settings.max_inflight_per_client)
        self._rate = self.limiter.shared_limit(settings.rate_limit, scope=SCOPE)
        for endpoint in PREDICTION_ENDPOINTS:
            app.view_functions[endpoint] = self._guard(app.view_functions[endpoint])
        log.info(
            "per-client limits: %s, at most %d in flight (store %s)",
            settings.rate_limit,
            settings.max_inflight_per_client,
            settings.ratelimit_storage_uri.split("://", 1)[0],
        )

    def _guard(self, view: Callable[..., Any]) -> Callable[..., Any]:
        """``view`` behind the rate limit, then the in-flight cap."""

        @functools.wraps(view)
        def capped(*args: Any, **kwargs: Any) -> Any:
            with self.inflight.hold(client_key()):
                return view(*args, **kwargs)

        limited = self._rate(capped)

        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return limited(*args, **kwargs)
            except RateLimitExceeded as exc:
                refusal = self._refusal(exc)
                tarpit.hold(request.environ, refusal.retry_after_s)
                raise refusal from exc
            except TooManyInFlight as refusal:
                tarpit.hold(request.environ, refusal.retry_after_s)
                raise

        return guarded

    def _refusal(self, exc: RateLimitExceeded) -> RateLimited:
        """The 429 for a breached rate, with the seconds until one more prediction is allowed."""
        breached = self.limiter.current_limit
        # When the oldest prediction in the window leaves it (Flask-Limiter's reset_at rounds up).
        reset_at = breached.window[0] if breached is not None else time.time() + 60
        wait = max(1, math.ceil(reset_at - time.time()))
        return RateLimited(
            f"You have sent more photos than this site takes from one address "
            f"({describe(exc.limit.limit)}). Please try again in {wait} second"
            f"{'s' if wait != 1 else ''}.",
            wait,
        )


def install_limits(app: Flask, settings: Settings) -> ClientLimits | None:
    """The limits ``settings`` ask for, installed on ``app``; ``None`` when they are off."""
    if settings.rate_limit == OFF:
        return None
    return ClientLimits(app, settings)
