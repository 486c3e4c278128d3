"""HTTP layer: browser and JSON routes, and the one place errors become responses."""

from __future__ import annotations

import base64
import io
import logging
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from agegroup.analysis import analyze
from agegroup.buckets import BUCKETS
from agegroup.config import Settings
from agegroup.errors import AppError, BadRequest, ModelUnavailable, NoImage, UploadTooLarge
from agegroup.faces import FaceDetector
from agegroup.images import ANALYSIS_BYTES_PER_PIXEL, DecodedImage, decode_upload, shared_budget
from agegroup.predictor import Predictor

log = logging.getLogger(__name__)
bp = Blueprint("web", __name__)

PREVIEW_SIZE = 960


@dataclass
class AppState:
    """What the routes need, created once per process by ``create_app``."""

    settings: Settings
    predictor: Predictor | None
    load_error: str | None = None
    detector: FaceDetector | None = None

    def require_predictor(self) -> Predictor:
        if self.predictor is None:
            raise ModelUnavailable(self.load_error or "No model is loaded.")
        return self.predictor


def _state() -> AppState:
    return current_app.extensions["agegroup"]


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def _read_upload() -> bytes:
    """The bytes of the single file in the form field ``image``."""
    files = request.files.getlist("image")
    if not files:
        raise NoImage("No photo was uploaded: send one file in the form field 'image'.")
    if len(files) > 1:
        raise BadRequest("Send exactly one photo per request.")
    limit = _state().settings.max_upload_bytes
    data = files[0].stream.read(limit + 1)
    if len(data) > limit:
        raise UploadTooLarge(_too_large_message())
    if not data:
        raise NoImage("The uploaded file is empty.")
    return data


def _too_large_message() -> str:
    mb = _state().settings.max_upload_mb
    return f"The upload is larger than the limit of {mb:g} MB."


def _decode(data: bytes) -> DecodedImage:
    settings = _state().settings
    budget = shared_budget(settings.decode_budget_bytes, settings.decode_wait_s)
    decoded = decode_upload(data, settings.max_pixels, settings.work_size, budget)
    # Detection, crops and the answer also need memory: held in the budget until the response.
    hold = budget.reserve(decoded.image.width * decoded.image.height * ANALYSIS_BYTES_PER_PIXEL)
    hold.__enter__()
    g.memory_hold = hold
    return decoded


@bp.teardown_app_request
def _release_memory_hold(_error: BaseException | None) -> None:
    hold = g.pop("memory_hold", None)
    if hold is not None:
        hold.__exit__(None, None, None)


def _inline_photo(image: Any) -> str:
    """A data URL of a small JPEG copy: the photo is shown without ever being stored."""
    preview = image.copy()
    preview.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@bp.get("/")
def index() -> str:
    state = _state()
    return render_template(
        "index.html",
        model=state.predictor.info if state.predictor else None,
        load_error=state.load_error,
        max_upload_mb=state.settings.max_upload_mb,
    )


@bp.post("/predict")
def predict_page() -> str:
    started = time.perf_counter()
    state = _state()
    predictor = state.require_predictor()
    decoded = _decode(_read_upload())
    result = analyze(decoded, predictor, started, state.detector)
    return render_template(
        "result.html",
        result=result,
        buckets=BUCKETS,
        photo_url=_inline_photo(decoded.image),
        model=predictor.info,
        max_upload_mb=state.settings.max_upload_mb,
    )


@bp.post("/api/predict")
def predict_api() -> Response:
    started = time.perf_counter()
    state = _state()
    predictor = state.require_predictor()
    decoded = _decode(_read_upload())
    return jsonify(analyze(decoded, predictor, started, state.detector).to_json(predictor.info))


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    state = _state()
    if state.predictor is None:
        return _error_json("model_unavailable", state.load_error or "No model is loaded.", 503)
    info = state.predictor.info
    return jsonify({"status": "ok", "model": {"name": info.name, "version": info.version}}), 200


def _error_json(code: str, message: str, status: int) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def _error_response(code: str, message: str, status: int) -> tuple[Any, int]:
    if _wants_json():
        return _error_json(code, message, status)
    return render_template("error.html", code=code, message=message, status=status), status


@bp.app_errorhandler(AppError)
def handle_app_error(error: AppError) -> tuple[Any, int] | Response:
    body, status = _error_response(error.code, error.message, error.status)
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is None:
        return body, status
    response = current_app.make_response((body, status))
    response.headers["Retry-After"] = str(retry_after)
    return response


_HTTP_CODES = {
    400: ("bad_request", "The request could not be understood."),
    404: ("not_found", "There is no page at this address."),
    405: ("method_not_allowed", "This address does not accept that method."),
    413: ("too_large", None),
}


@bp.app_errorhandler(HTTPException)
def handle_http_error(error: HTTPException) -> tuple[Any, int]:
    status = error.code or 500
    code, message = _HTTP_CODES.get(status, ("http_error", None))
    if status == 413:
        message = _too_large_message()
    return _error_response(code, message or error.name, status)


@bp.app_errorhandler(Exception)
def handle_unexpected(error: Exception) -> tuple[Any, int]:
    # Logged with its traceback for the operator; the client sees no detail.
    log.exception("unexpected error on %s %s", request.method, request.path)
    return _error_response("internal_error", "Something went wrong on our side.", 500)
