"""HTTP layer: browser and JSON routes, and the one place errors become responses."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException

from agegroup.buckets import BUCKETS
from agegroup.config import PROJECT_ROOT, Settings
from agegroup.errors import AppError, BadRequest, ModelUnavailable, NoImage, UploadTooLarge
from agegroup.faces import FaceDetector
from agegroup.image_formats import FORMAT_NAMES, HEIC_MESSAGE, MEDIA_TYPES
from agegroup.images import DecodedImage, decode_upload
from agegroup.limits import ClientLimits
from agegroup.links import ResultLinks
from agegroup.memory_budget import ANALYSIS_BYTES_PER_PIXEL, shared_budget
from agegroup.openapi import openapi_spec
from agegroup.pages import result_view
from agegroup.pipeline import AgeGroupDetector
from agegroup.predictor import Predictor

log = logging.getLogger(__name__)
bp = Blueprint("web", __name__)

EXAMPLES_DIR = PROJECT_ROOT / "static" / "examples"


@dataclass(frozen=True)
class Example:
    """A bundled photo to try (sources and licenses: static/examples/LICENSE.md)."""

    name: str
    file: str
    title: str


EXAMPLES = (
    Example("grace-hopper", "grace-hopper.jpg", "Grace Hopper, 1984"),
    Example("group", "group.jpg", "A group of five"),
    Example("no-face", "no-face.jpg", "No face at all"),
)


@dataclass
class AppState:
    """What the routes need, created once per process by ``create_app``."""

    settings: Settings
    predictor: Predictor | None
    links: ResultLinks
    load_error: str | None = None
    detector: FaceDetector | None = None
    # None with AGE_RATE_LIMIT=off; the routes are wrapped by it, this is for inspection.
    limits: ClientLimits | None = None
    # The Python API over this model and detector: the command and the page use one pipeline.
    pipeline: AgeGroupDetector | None = None

    def require_predictor(self) -> Predictor:
        if self.predictor is None:
            raise ModelUnavailable(self.load_error or "No model is loaded.")
        return self.predictor

    def require_pipeline(self) -> AgeGroupDetector:
        if self.pipeline is None:
            self.pipeline = AgeGroupDetector(
                settings=self.settings, predictor=self.require_predictor(), detector=self.detector
            )
        return self.pipeline


def _state() -> AppState:
    return current_app.extensions["agegroup"]


# Machine-facing paths: their errors are JSON, and CORS may be allowed on them.
JSON_PATHS = ("/api", "/healthz", "/openapi.json")


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path in JSON_PATHS


@bp.record_once
def _keep_key_order(state: Any) -> None:
    """JSON keys in the order they were built: probabilities in age order, as documented."""
    state.app.json.sort_keys = False


@bp.after_app_request
def _allow_named_origins(response: Response) -> Response:
    """CORS on the JSON paths, only for origins that ``AGE_CORS_ORIGINS`` names (default none)."""
    origin = request.headers.get("Origin")
    if origin and _wants_json() and origin in _state().settings.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
    response.vary.add("Origin")
    return response


def _read_upload() -> bytes:
    """The bytes of the single file in the form field ``image``."""
    # An empty file input (the phone camera field beside the file field) sends an empty part.
    files = [f for f in request.files.getlist("image") if not _empty_unnamed(f)]
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


def _empty_unnamed(file: Any) -> bool:
    """An unused file field: no file name and no bytes (the stream is in memory, so rewound)."""
    if file.filename:
        return False
    empty = not file.stream.read(1)
    file.stream.seek(0)
    return empty


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


def _page_settings() -> dict[str, Any]:
    """What every page with an upload form needs: the limits the script checks before upload."""
    settings = _state().settings
    return {
        "max_upload_mb": settings.max_upload_mb,
        "max_upload_bytes": settings.max_upload_bytes,
        "work_size": settings.work_size,
        "upload_types": MEDIA_TYPES,
        "format_names": FORMAT_NAMES,
        "heic_message": HEIC_MESSAGE,
        "examples": EXAMPLES,
        "buckets": BUCKETS,
    }


def _analyze(read: Callable[[], bytes]) -> dict[str, Any]:
    """The API answer for the photo that ``read`` returns: rounded, in age order.

    The model is checked first: without one, the answer is 503 whatever was sent.
    """
    started = time.perf_counter()
    pipeline = _state().require_pipeline()
    decoded = _decode(read())
    return pipeline.answer(pipeline.analyze_decoded(decoded, started))


def _read_example() -> bytes | None:
    """The bytes of a bundled example photo named by the form field ``example``, if any."""
    name = request.form.get("example")
    if name is None:
        return None
    example = next((e for e in EXAMPLES if e.name == name), None)
    if example is None:
        raise BadRequest("There is no example photo of that name.")
    return (EXAMPLES_DIR / example.file).read_bytes()


@bp.get("/")
def index() -> str:
    state = _state()
    return render_template(
        "index.html",
        model=state.predictor.info if state.predictor else None,
        load_error=state.load_error,
        **_page_settings(),
    )


@bp.post("/predict")
def predict_page() -> Response:
    """The form post without scripts: predict, then redirect to a GET page that holds the result.

    Post/redirect/get: Back and reload never resubmit, and nothing is stored on the server,
    because the result travels in the link itself (not the photo: it is never kept).
    """
    result = _analyze(lambda: _read_example() or _read_upload())
    return redirect(_result_link(result), code=303)


def _result_link(result: dict[str, Any]) -> str:
    """The address of the result page for an API answer, signed by this site."""
    return url_for("web.result_page", r=_state().links.token(result))


@bp.get("/result")
def result_page() -> str:
    data = _state().links.open(request.args.get("r", ""))
    return render_template(
        "result.html",
        result=result_view(data),
        result_json=data,
        **_page_settings(),
    )


@bp.post("/api/predict")
def predict_api() -> Response:
    result = _analyze(_read_upload)
    # The page's script shows the result under this link: only the server can sign it.
    return jsonify({**result, "result_link": _result_link(result)})


@bp.get("/api")
def api_page() -> str:
    return render_template("api.html", **_page_settings())


@bp.get("/openapi.json")
def openapi_document() -> Response:
    state = _state()
    return jsonify(
        openapi_spec(
            state.settings.max_upload_mb,
            request.host_url.rstrip("/"),
            _result_link,
            state.settings.rate_limit,
        )
    )


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
    page = render_template(
        "error.html", code=code, message=message, status=status, **_page_settings()
    )
    return page, status


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
