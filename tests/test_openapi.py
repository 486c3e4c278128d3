"""/openapi.json is a valid OpenAPI 3.1 document, and real responses match its schemas."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from testsupport.uploads import image_bytes

EXAMPLES = Path(__file__).resolve().parent.parent / "static" / "examples"


@pytest.fixture(scope="module")
def spec(app) -> dict:
    return app.test_client().get("/openapi.json").get_json()


def validator(spec: dict, name: str) -> Draft202012Validator:
    """A JSON Schema validator for one of the document's component schemas, $refs resolved."""
    resource = DRAFT202012.create_resource(spec)
    registry = Registry().with_resource("urn:openapi", resource)
    return Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=registry
    )


def response_schema(spec: dict, path: str, method: str, status: str) -> str:
    content = spec["paths"][path][method]["responses"][status]["content"]
    return content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]


def test_the_document_is_valid_openapi(spec):
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    assert set(spec["paths"]) == {"/api/predict", "/healthz"}


def test_its_examples_match_its_own_schemas(spec):
    predict = spec["paths"]["/api/predict"]["post"]["responses"]
    for example in predict["200"]["content"]["application/json"]["examples"].values():
        validator(spec, "Prediction").validate(example["value"])
    for status, response in predict.items():
        if status != "200":
            validator(spec, "Error").validate(response["content"]["application/json"]["example"])


@pytest.mark.parametrize("example", ["grace-hopper.jpg", "group.jpg", "no-face.jpg"])
def test_real_predictions_match_the_schema(client, spec, example):
    data = {"image": (io.BytesIO((EXAMPLES / example).read_bytes()), example)}
    response = client.post("/api/predict", data=data, content_type="multipart/form-data")
    assert response.status_code == 200
    validator(spec, response_schema(spec, "/api/predict", "post", "200")).validate(
        response.get_json()
    )


def test_a_prediction_with_an_age_in_years_matches_the_schema(spec):
    """The model may add ``age`` to each face; the schema describes it as optional."""
    example = spec["paths"]["/api/predict"]["post"]["responses"]["200"]["content"]
    body = example["application/json"]["examples"]["one face"]["value"]
    body["faces"][0]["age"] = {"estimate": 34.2, "interval": [28, 41]}
    validator(spec, "Prediction").validate(body)
    body["faces"][0]["age"] = {"interval": [28, 41]}
    assert not validator(spec, "Prediction").is_valid(body)


def test_real_errors_and_health_match_the_schema(client, spec):
    check = validator(spec, "Error")
    bad = {"image": (io.BytesIO(b"not an image"), "x.jpg")}
    answers = {
        "415": client.post("/api/predict", data=bad, content_type="multipart/form-data"),
        "400": client.post("/api/predict", data={}, content_type="multipart/form-data"),
        "422": client.post(
            "/api/predict",
            data={"image": (io.BytesIO(image_bytes_of_half_a_jpeg()), "x.jpg")},
            content_type="multipart/form-data",
        ),
    }
    for status, response in answers.items():
        assert str(response.status_code) == status
        assert status in spec["paths"]["/api/predict"]["post"]["responses"]
        check.validate(response.get_json())
    check.validate(client.get("/api/nowhere").get_json())
    validator(spec, "Health").validate(client.get("/healthz").get_json())


def image_bytes_of_half_a_jpeg() -> bytes:
    from PIL import Image

    whole = image_bytes(Image.effect_mandelbrot((300, 200), (-2, -1, 1, 1), 60).convert("RGB"))
    return whole[: len(whole) // 2]


def test_a_real_429_matches_the_schema_and_its_retry_after_is_documented(settings, app, spec):
    from agegroup.config import Settings
    from agegroup.factory import create_app

    limited = Settings(**{**settings.__dict__, "rate_limit": "1/minute"})
    client = create_app(limited, predictor=app.extensions["agegroup"].predictor).test_client()
    photo = {"image": (io.BytesIO((EXAMPLES / "grace-hopper.jpg").read_bytes()), "g.jpg")}
    assert client.post("/api/predict", data=photo).status_code == 200
    photo = {"image": (io.BytesIO((EXAMPLES / "grace-hopper.jpg").read_bytes()), "g.jpg")}
    refused = client.post("/api/predict", data=photo)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    documented = spec["paths"]["/api/predict"]["post"]["responses"]["429"]
    assert "Retry-After" in documented["headers"]
    assert "rate_limited" in documented["description"]
    validator(spec, "Error").validate(refused.get_json())
    # This server's own limit is stated in its description.
    assert (
        "`1/minute`"
        in client.get("/openapi.json").get_json()["paths"]["/api/predict"]["post"]["responses"][
            "429"
        ]["description"]
    )


def test_the_examples_result_links_open_on_the_server_that_describes_them(client, spec):
    examples = spec["paths"]["/api/predict"]["post"]["responses"]["200"]["content"]
    for example in examples["application/json"]["examples"].values():
        link = example["value"]["result_link"]
        assert link.startswith("/result?r=")
        assert client.get(link).status_code == 200
    assert "result_link" in spec["components"]["schemas"]["Prediction"]["required"]
