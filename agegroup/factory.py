"""The Flask app factory (``create_app``) and the loading of the configured model and detector."""

from __future__ import annotations

import io
import logging
from typing import IO, TYPE_CHECKING

from flask import Flask, Request, request
from werkzeug.middleware.proxy_fix import ProxyFix

from agegroup.config import PROJECT_ROOT, Settings
from agegroup.errors import ModelUnavailable
from agegroup.limits import install_limits
from agegroup.links import ResultLinks, secret_key_of
from agegroup.predictor import Predictor

if TYPE_CHECKING:
    from agegroup.faces import FaceDetector

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


def load_predictor(settings: Settings) -> Predictor:
    """Load the configured model once, as served: mixed with age-v1 when its calibration file
    gives age-v1 a share (``agegroup.agev1``); raises ``ModelUnavailable`` with a clear reason."""
    from agegroup.agev1 import as_served

    return as_served(load_network(settings))


def load_network(settings: Settings) -> Predictor:
    """The configured runtime's network (fastai learner or ONNX twin), calibrated."""
    if settings.runtime == "onnx":
        from agegroup.onnx_runtime import OnnxPredictor, lean_model_path

        if settings.onnx_precision not in ("float", "int8"):
            raise ModelUnavailable(
                f"AGE_ONNX_PRECISION must be 'float' or 'int8', not {settings.onnx_precision!r}."
            )

        return OnnxPredictor(lean_model_path(settings), settings.model_dir, settings.torch_threads)
    if settings.runtime != "fastai":
        raise ModelUnavailable(f"AGE_RUNTIME must be 'fastai' or 'onnx', not {settings.runtime!r}.")
    from agegroup.predictor import FastaiPredictor

    return FastaiPredictor(settings.model_path, settings.model_dir, settings.torch_threads)


def load_detector(settings: Settings) -> FaceDetector:
    """The face detector ``AGE_FACE_DETECTOR`` names, aligned as ``AGE_FACE_LANDMARKS`` says.

    A landmark model that cannot be loaded is logged and faces are cropped by their boxes:
    the app still answers, slightly less precisely framed.
    """
    from agegroup.faces import FaceDetector, make_detector

    threads, pixels = settings.torch_threads, settings.detect_pixels
    try:
        return make_detector(
            settings.face_detector, settings.face_landmarks, threads, detect_pixels=pixels
        )
    except (OSError, RuntimeError) as exc:
        log.error("face landmarks not loaded (%s); faces are cropped by their boxes", exc)
        return FaceDetector(
            kind=settings.face_detector, keypoints=False, threads=threads, detect_pixels=pixels
        )


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
