"""The Flask app factory (``create_app``); the model and detector come from ``agegroup.loaders``."""

from __future__ import annotations

import io
import logging
from typing import IO

from flask import Flask, Request, request
from werkzeug.middleware.proxy_fix import ProxyFix

from agegroup.config import PROJECT_ROOT, Settings
from agegroup.errors import ModelUnavailable
from agegroup.limits import install_limits
from agegroup.links import ResultLinks, secret_key_of
from agegroup.loaders import load_detector, load_predictor
from agegroup.predictor import Predictor

log = logging.getLogger("agegroup")  # the name the app logged under before the split

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
# Sent on HTTPS only (as seen through the trusted proxies): browsers then refuse plain HTTP to
# this host for a year. No includeSubDomains: the host may be a subdomain of someone else's.
HSTS = "max-age=31536000"


class InMemoryRequest(Request):
    """Keeps uploaded files in memory: Werkzeug would spool files over 500 KB to disk."""

    def _get_file_stream(self, *args: object, **kwargs: object) -> IO[bytes]:
        return io.BytesIO()


def create_app(settings: Settings | None = None, predictor: Predictor | None = None) -> Flask:
    """Build the app; the model is loaded here, once per process, unless one is given."""
    from agegroup.web import AppState, bp

    settings = settings or Settings.from_env()
    app = Flask(
        "agegroup",
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    # Werkzeug refuses larger bodies before reading them (413); the slack covers multipart overhead.
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + 64 * 1024
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024
    load_error = None
    if predictor is None:
        try:
            predictor = load_predictor(settings)
            log.info("model %s %s loaded", predictor.info.name, predictor.info.version)
        except ModelUnavailable as exc:
            load_error = exc.message
            log.error("no model loaded: %s", exc.message)
    # The face detector is loaded (and its working memory taken) now, not on the first request.
    detector = load_detector(settings) if predictor is not None else None
    if detector is not None:
        detector.warm_up()
    links = ResultLinks(secret_key_of(settings))
    app.extensions["agegroup"] = state = AppState(settings, predictor, links, load_error, detector)
    app.register_blueprint(bp)
    state.limits = install_limits(app, settings)
    if settings.trusted_proxies:
        # The visitor's address and scheme from the last N proxies' X-Forwarded-For/-Proto:
        # limits, logs (gunicorn's too: it reads the same REMOTE_ADDR) and request.scheme.
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]

    @app.after_request
    def add_security_headers(response):  # type: ignore[no-untyped-def]
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.is_secure:
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        return response

    return app
