"""The OpenAPI 3.1 description of the JSON API, served at ``/openapi.json``.

Its schemas are plain JSON Schema (2020-12), so the tests validate real responses against them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agegroup.buckets import BUCKETS
from agegroup.image_formats import FORMAT_NAMES

EXAMPLE_FACE = {
    "box": [412, 180, 236, 236],
    "face_found": True,
    "low_resolution": False,
    "bucket": "21-30",
    "confidence": 0.6212,
    "probabilities": dict(
        zip(BUCKETS, [0.0113, 0.0521, 0.6212, 0.2385, 0.0507, 0.0162, 0.01], strict=True)
    ),
}
NO_FACE_EXAMPLE = {
    "model": {"name": "resnet50-utkface-64px", "version": "2026.11.28"},
    "image": {"width": 800, "height": 600},
    "faces": [
        {
            **EXAMPLE_FACE,
            "box": None,
            "face_found": False,
            "bucket": "0-10",
            "confidence": 0.4711,
            "probabilities": dict(
                zip(BUCKETS, [0.4711, 0.1, 0.1502, 0.1203, 0.0811, 0.0502, 0.0271], strict=True)
            ),
        }
    ],
    "warnings": [
        "No face was found in this photo, so the result is for the whole photo, read as one "
        "face that fills it."
    ],
    "elapsed_ms": 98.2,
}

ERROR_CODES = {
    "400": ("no_image, bad_request", "No file, an empty file, or several files."),
    "413": ("too_large", "Over the upload limit, or too many pixels."),
    "415": ("unsupported_type", f"Not a {FORMAT_NAMES} image, whatever its name."),
    "422": ("corrupt_image", "A truncated or damaged image."),
    "429": (
        "rate_limited, too_many_in_flight",
        "This address sent more photos than the server takes from one client in a while, or "
        "already has as many being worked on as it may; `Retry-After` says when to try again. "
        "This answer itself may come up to 2 seconds late.",
    ),
    "503": (
        "model_unavailable, busy",
        "No model is loaded, or the server has no memory free for this photo right now "
        "(`busy`, with `Retry-After`).",
    ),
}
# The statuses whose answers may say when to try again.
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before sending the photo again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def _error_response(status: str, codes: str, description: str) -> dict[str, Any]:
    first = codes.split(",")[0].strip()
    response = {
        "description": f"{description} (`error.code`: {codes})",
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/Error"},
                "example": {"error": {"code": first, "message": description}},
            }
        },
    }
    if status in ("429", "503"):
        response["headers"] = RETRY_AFTER
    return response


def _schemas() -> dict[str, Any]:
    probability = {"type": "number", "minimum": 0, "maximum": 1}
    return {
        "Model": {
            "type": "object",
            "required": ["name", "version"],
            "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
        },
        "Face": {
            "type": "object",
            "required": [
                "box",
                "face_found",
                "low_resolution",
                "bucket",
                "confidence",
                "probabilities",
            ],
            "properties": {
                "box": {
                    "description": "[x, y, width, height] in the upright photo's pixels; null "
                    "for the whole-photo guess made when no face was found.",
                    "oneOf": [
                        {
                            "type": "array",
                            "items": {"type": "integer", "minimum": 0},
                            "minItems": 4,
                            "maxItems": 4,
                        },
                        {"type": "null"},
                    ],
                },
                "face_found": {
                    "type": "boolean",
                    "description": "false for the whole-photo guess: unreliable, see warnings.",
                },
                "low_resolution": {
                    "type": "boolean",
                    "description": "The face is too small for the model to judge reliably.",
                },
                "bucket": {"type": "string", "enum": list(BUCKETS)},
                "confidence": {
                    **probability,
                    "description": "The probability of `bucket`, rounded to 4 decimals.",
                },
                "probabilities": {
                    "type": "object",
                    "description": "Every age group in age order, rounded to 4 decimals; they "
                    "sum to 1 within rounding.",
                    "properties": {bucket: probability for bucket in BUCKETS},
                    "required": list(BUCKETS),
                    "additionalProperties": False,
                },
                "age": {
                    "type": "object",
                    "description": "Optional: the estimated age in years with an 80% interval, "
                    "present when the model estimates years.",
                    "required": ["estimate"],
                    "properties": {
                        "estimate": {"type": "number", "minimum": 0},
                        "interval": {
                            "type": "array",
                            "items": {"type": "number", "minimum": 0},
                            "minItems": 2,
                            "maxItems": 2,
                        },
                    },
                },
            },
        },
        "Prediction": {
            "type": "object",
            "required": ["model", "image", "faces", "warnings", "elapsed_ms", "result_link"],
            "properties": {
                "model": {"$ref": "#/components/schemas/Model"},
                "image": {
                    "type": "object",
                    "description": "The uploaded photo's size, upright (EXIF orientation applied).",
                    "required": ["width", "height"],
                    "properties": {
                        "width": {"type": "integer", "minimum": 1},
                        "height": {"type": "integer", "minimum": 1},
                    },
                },
                "faces": {
                    "type": "array",
                    "description": "One entry per face, left to right (at most 20, the largest); "
                    "when no face is found, one whole-photo entry with face_found false.",
                    "minItems": 1,
                    "items": {"$ref": "#/components/schemas/Face"},
                },
                "warnings": {"type": "array", "items": {"type": "string"}},
                "elapsed_ms": {"type": "number", "minimum": 0},
                "result_link": {
                    "type": "string",
                    "format": "uri-reference",
                    "description": "This answer's page on this server (`/result?r=...`): its "
                    "numbers, never the photo. The server signs the link, so only links it "
                    "made open (others get 400); they keep working across restarts when the "
                    "server has a fixed `SECRET_KEY`.",
                },
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "model"],
            "properties": {
                "status": {"const": "ok"},
                "model": {"$ref": "#/components/schemas/Model"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
    }


def openapi_spec(
    max_upload_mb: float,
    server_url: str,
    link_for: Callable[[dict[str, Any]], str],
    rate_limit: str,
) -> dict[str, Any]:
    """The API description for this server: its upload limit, address and rate limit filled
    in, and the examples' ``result_link`` made by ``link_for`` (so they open on this server)."""
    model = NO_FACE_EXAMPLE["model"]
    prediction = {**NO_FACE_EXAMPLE, "image": {"width": 1200, "height": 800}}
    prediction |= {"faces": [EXAMPLE_FACE], "warnings": [], "elapsed_ms": 123.4}
    examples = {"one face": prediction, "no face": NO_FACE_EXAMPLE}
    examples = {name: {**value, "result_link": link_for(value)} for name, value in examples.items()}
    errors = {status: _error_response(status, *text) for status, text in ERROR_CODES.items()}
    limit = "none" if rate_limit == "off" else f"`{rate_limit}` per client address"
    errors["429"]["description"] += f" This server's limit: {limit}."
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Age group detector",
            "version": "1",
            "description": "Predicts the age group of every face in a photo. Photos are processed "
            "in memory and never stored or logged.",
        },
        "servers": [{"url": server_url}],
        "paths": {
            "/api/predict": {
                "post": {
                    "summary": "Predict the age group of every face in a photo",
                    "operationId": "predict",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image"],
                                    "properties": {
                                        "image": {
                                            "type": "string",
                                            "contentMediaType": "application/octet-stream",
                                            "description": f"One {FORMAT_NAMES} file, at "
                                            f"most {max_upload_mb:g} MB.",
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The faces found, or a whole-photo guess if none.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Prediction"},
                                    "examples": {
                                        name: {"value": value} for name, value in examples.items()
                                    },
                                }
                            },
                        },
                        **errors,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Whether the model is loaded",
                    "operationId": "health",
                    "responses": {
                        "200": {
                            "description": "The model is loaded.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Health"},
                                    "example": {"status": "ok", "model": model},
                                }
                            },
                        },
                        "503": errors["503"],
                    },
                }
            },
        },
        "components": {"schemas": _schemas()},
    }
