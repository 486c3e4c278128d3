"""The routes and every bad input of the upload path, through Flask's test client."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegroup.buckets import BUCKETS
from agegroup.config import Settings
from agegroup.crops import whole_photo_as_face
from agegroup.factory import create_app
from agegroup.image_formats import FORMAT_NAMES
from agegroup.predictor import predict_flip_averaged
from agegroup.preprocess import to_model_input
from testsupport.images import synthetic_faces
from testsupport.learner import export_tiny_learner
from testsupport.uploads import heic_start, image_bytes, png_claiming, post

ROOT = Path(__file__).resolve().parent.parent


def assert_json_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.data[:300]
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and len(body["error"]["message"]) > 10
    assert "Traceback" not in response.get_data(as_text=True)


def assert_still_serving(client, face_jpeg: bytes) -> None:
    assert post(client, face_jpeg).status_code == 200


def photo(size=(160, 120), seed=1) -> Image.Image:
    """A smooth synthetic picture (upscaled from 64 px, so large sizes still compress well)."""
    return Image.fromarray(synthetic_faces(1, 64, seed=seed)[0]).resize(size, Image.BILINEAR)


# --- the happy path -------------------------------------------------------------------------


def test_index_has_an_upload_form_that_works_without_javascript(client):
    response = client.get("/")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'enctype="multipart/form-data"' in html
    assert 'action="/predict"' in html and 'method="post"' in html
    assert 'type="file" name="image" accept="image/*"' in html
    assert 'type="submit"' in html
    assert "never stored" in html  # the privacy promise is on the page


def test_the_form_tells_the_script_the_servers_own_limits(client, settings):
    """The browser checks type and size before uploading, with exactly the server's limits."""
    from agegroup.image_formats import ALLOWED_FORMATS

    html = client.get("/").get_data(as_text=True)
    assert f'data-max-bytes="{settings.max_upload_bytes}"' in html
    assert f'data-work-size="{settings.work_size}"' in html
    types = html.split('data-types="')[1].split('"')[0].split(",")
    assert {t.split("/")[1].upper() for t in types} == ALLOWED_FORMATS - {"MPO"}
    # The phone camera field is off without the script, so the plain form sends one file.
    assert 'capture="user" disabled' in html


def test_healthz_names_the_loaded_model(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "model": {"name": "tiny-test-model", "version": "0.0.1"},
    }


def test_api_predict_returns_the_documented_schema(client, face_jpeg):
    response = post(client, face_jpeg)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) >= {"model", "image", "faces", "elapsed_ms"}
    assert body["model"] == {"name": "tiny-test-model", "version": "0.0.1"}
    assert body["image"] == {"width": 120, "height": 120}
    assert isinstance(body["elapsed_ms"], float) and body["elapsed_ms"] > 0
    assert len(body["faces"]) >= 1
    for face in body["faces"]:
        assert set(face) >= {"box", "bucket", "confidence", "probabilities"}
        probabilities = face["probabilities"]
        assert list(probabilities) == list(BUCKETS)  # every group, in age order
        assert all(0.0 <= p <= 1.0 for p in probabilities.values())
        # Rounded to 4 decimals, so seven of them sum to 1 within 7 x 0.00005.
        assert all(p == round(p, 4) for p in probabilities.values())
        assert abs(sum(probabilities.values()) - 1.0) <= 0.00035 + 1e-9
        assert face["bucket"] == max(probabilities, key=probabilities.get)
        assert face["confidence"] == probabilities[face["bucket"]]
    # In age order in the text itself, not only once parsed.
    text = response.get_data(as_text=True)
    positions = [text.index(f'"{bucket}":') for bucket in BUCKETS]
    assert positions == sorted(positions)


def test_api_matches_the_learners_own_predict(app, client, face_jpeg):
    """The answer is the learner's own ``predict``, averaged over the crop and its mirror (here
    the whole-photo crop: the tiny test photo has no face the detector finds)."""
    predictor = app.extensions["agegroup"].predictor
    crop = whole_photo_as_face(Image.open(io.BytesIO(face_jpeg)).convert("RGB"))
    image = to_model_input(crop, predictor.info.input_size)  # what the server feeds the learner
    _, _, as_is = predictor.learn.predict(image)
    _, _, flipped = predictor.learn.predict(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert not np.allclose(as_is.numpy(), flipped.numpy(), atol=1e-3)  # the average matters
    faces = post(client, face_jpeg).get_json()["faces"]
    [whole] = faces
    assert whole["face_found"] is False
    got = list(whole["probabilities"].values())
    assert np.allclose(got, (as_is.numpy() + flipped.numpy()) / 2, atol=1e-4)


def test_flip_averaging_is_the_mean_of_each_face_and_its_own_mirror(app):
    predictor = app.extensions["agegroup"].predictor
    faces = [Image.effect_mandelbrot((120, 90), (-2, -1, 1, 1), 60).convert("RGB"), photo()]
    mirrors = [face.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for face in faces]
    as_is, flipped = predictor.predict(faces), predictor.predict(mirrors)
    assert not np.allclose(as_is, flipped, atol=1e-3)  # the tiny network is not symmetric
    averaged = predict_flip_averaged(predictor, faces)
    assert averaged.shape == (2, 7)
    assert np.allclose(averaged, (as_is + flipped) / 2, atol=1e-6)  # row by row, in order
    assert predict_flip_averaged(predictor, []).shape == (0, 7)


def result_page(client, data: bytes, name: str = "photo.jpg"):
    """Post the form like a browser without scripts and follow the redirect to the result."""
    response = post(client, data, path="/predict", filename=name)
    assert response.status_code == 303, response.data[:300]
    location = response.headers["Location"]
    assert location.startswith("/result?r=")
    return client.get(location)


def test_the_form_post_redirects_to_a_result_link_that_renders_the_answer(client, face_jpeg):
    """Post/redirect/get: reload and Back never resubmit, and the link can be shared."""
    api = post(client, face_jpeg).get_json()["faces"][0]
    response = result_page(client, face_jpeg)
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<h1" in html
    assert f'id="predicted-bucket-1">{api["bucket"]}<' in html
    positions = [html.index(f'data-bucket="{bucket}"') for bucket in BUCKETS]
    assert positions == sorted(positions)
    assert html.count('class="bar winner"') == 1
    winner = html.index('class="bar winner"')
    assert html[winner:].index(f'data-bucket="{api["bucket"]}"') < 40
    for bucket, p in api["probabilities"].items():
        assert f"{p * 100:.1f}%" in html, bucket
    assert html.count('id="image-input"') == 1  # a form to try another photo
    assert "base64" not in html  # the photo is in neither the link nor the page


def _link_json(**face_changes) -> dict:
    """An API answer as a result link carries it: the OpenAPI document's one-face example."""
    from agegroup.openapi import EXAMPLE_FACE

    return {
        "model": {"name": "m", "version": "1"},
        "image": {"width": 1200, "height": 800},
        "faces": [EXAMPLE_FACE | face_changes],
        "elapsed_ms": 12.0,
    }


def signed(app, data: dict) -> str:
    """The ``r`` parameter the app makes for ``data``, signed with its key."""
    return app.extensions["agegroup"].links.token(data)


def test_a_result_link_round_trips_and_shows_the_age_in_years_when_present(app, client):
    data = _link_json(age={"estimate": 34.2, "interval": [28, 41]})
    decoded = app.extensions["agegroup"].links.open(signed(app, data))
    # The link carries the numbers, not what follows from them (bucket and confidence).
    kept = {k: v for k, v in data["faces"][0].items() if k not in ("bucket", "confidence")}
    assert decoded == data | {"faces": [kept]}
    html = client.get(f"/result?r={signed(app, data)}").get_data(as_text=True)
    assert "about 34, likely 28-41" in html
    assert "<title>1 face: 21-30 - Age group detector</title>" in html
    assert "about 34" not in client.get(f"/result?r={signed(app, _link_json())}").get_data(
        as_text=True
    )


def test_a_link_with_twenty_faces_fits_in_gunicorns_request_line(app, client):
    """gunicorn.conf.py refuses request lines over 4094 bytes; 20 faces with ages stay far below."""
    import gunicorn.config

    rng = np.random.default_rng(0)
    data = _link_json()
    data["image"] = {"width": 9000, "height": 9000}
    data["faces"] = [
        {
            "box": [int(v) for v in rng.integers(1000, 8000, 4)],
            "face_found": True,
            "low_resolution": False,
            "probabilities": dict(zip(BUCKETS, rng.dirichlet(np.ones(7)).round(4), strict=True)),
            "age": {"estimate": round(rng.uniform(1, 90), 1), "interval": [20, 80]},
        }
        for _ in range(20)
    ]
    for face in data["faces"]:  # rounding may leave the sum off by up to 0.00035
        face["probabilities"] = {k: float(v) for k, v in face["probabilities"].items()}
    line = f"GET /result?r={signed(app, data)} HTTP/1.1"
    limit = gunicorn.config.Config().limit_request_line
    conf: dict = {}
    exec((ROOT / "gunicorn.conf.py").read_text(), conf)
    assert len(line) < min(limit, conf["limit_request_line"]) / 2
    # The access log shows the path, never the query string that carries the numbers.
    assert "%(U)s" in conf["access_log_format"]
    assert not any(f"%({k})s" in conf["access_log_format"] for k in ("r", "q", "f"))
    html = client.get(line.split()[1]).get_data(as_text=True)
    assert html.count('<a class="face-box') == 20


@pytest.mark.parametrize(
    "change",
    [
        {"box": [1300, 20, 50, 50]},  # outside the photo
        {"probabilities": dict.fromkeys(BUCKETS, 0.5)},  # does not sum to 1
        {"probabilities": {"0-10": 1.0}},  # groups missing
        {"box": None},  # face_found without a box
        {"age": {"estimate": "old"}},
    ],
)
def test_a_result_link_with_impossible_numbers_is_a_clear_400_even_when_signed(app, client, change):
    """The page checks every number again, whoever signed them."""
    response = client.get(f"/result?r={signed(app, _link_json(**change))}")
    assert response.status_code == 400
    assert 'data-code="bad_result_link"' in response.get_data(as_text=True)
    for junk in ["", "abc", "!!!!", "A" * 7000]:
        assert client.get(f"/result?r={junk}").status_code == 400


def test_no_face_leads_with_no_face_found_and_keeps_the_guess_secondary(app, client):
    data = _link_json(box=None, face_found=False)
    html = client.get(f"/result?r={signed(app, data)}").get_data(as_text=True)
    assert '<h1 id="result-title" tabindex="-1">No face found</h1>' in html
    assert "<title>No face found - Age group detector</title>" in html
    assert "closer" in html and "brighter" in html
    # The guess is inside a closed <details>, labelled unreliable, after the advice.
    details = html.index('<details class="fallback-guess"')
    assert html.index("What to try") < details < html.index('class="bucket"')
    assert "unreliable" in html[details : details + 300]


def test_an_example_photo_can_be_tried_without_a_file(client):
    response = client.post("/predict", data={"example": "grace-hopper"})
    assert response.status_code == 303
    html = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "1 face:" in html
    assert client.post("/predict", data={"example": "../../etc/passwd"}).status_code == 400
    index = client.get("/").get_data(as_text=True)
    for name in ("grace-hopper", "group", "no-face"):
        assert f'value="{name}"' in index
        assert client.get(f"/static/examples/{name}.jpg").status_code == 200


def test_api_page_links_the_openapi_document(client):
    html = client.get("/api").get_data(as_text=True)
    assert "<h1>JSON API</h1>" in html and 'href="/openapi.json"' in html
    assert client.get("/openapi.json").get_json()["openapi"].startswith("3.")


def test_cors_is_off_by_default_and_on_for_named_origins(settings, app, face_jpeg):
    origin = {"Origin": "https://example.org"}
    plain = app.test_client().get("/healthz", headers=origin)
    assert "Access-Control-Allow-Origin" not in plain.headers
    allowed = Settings(**{**settings.__dict__, "cors_origins": ("https://example.org",)})
    client = create_app(allowed, predictor=app.extensions["agegroup"].predictor).test_client()
    response = client.get("/healthz", headers=origin)
    assert response.headers["Access-Control-Allow-Origin"] == "https://example.org"
    preflight = client.options("/api/predict", headers=origin)
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://example.org"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    other = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Origin" not in client.get("/", headers=origin).headers


def test_cors_origins_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("AGE_CORS_ORIGINS", "https://a.example, https://b.example/")
    assert Settings.from_env().cors_origins == ("https://a.example", "https://b.example")
    monkeypatch.delenv("AGE_CORS_ORIGINS")
    assert Settings.from_env().cors_origins == ()


def test_every_response_carries_security_headers(client):
    headers = client.get("/").headers
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"


# --- bad input ------------------------------------------------------------------------------


def test_no_file_is_400(client, face_jpeg):
    assert_json_error(post(client, None), 400, "no_image")
    assert_still_serving(client, face_jpeg)


def test_empty_file_is_400(client, face_jpeg):
    assert_json_error(post(client, b""), 400, "no_image")
    assert_still_serving(client, face_jpeg)


@pytest.mark.parametrize(
    "payload",
    [b"hello, this is text", b"<html><body>not a photo</body></html>", b"%PDF-1.4\n%\xe2\xe3\n"],
)
def test_a_file_that_is_not_an_image_is_415_whatever_its_name(client, face_jpeg, payload):
    assert_json_error(post(client, payload, filename="photo.jpg"), 415, "unsupported_type")
    assert_still_serving(client, face_jpeg)


def test_an_avif_photo_is_predicted_as_its_lossless_png_is(client):
    upright = photo((160, 120), seed=6)
    avif = post(client, image_bytes(upright, "AVIF", lossless=True), filename="web.avif")
    png = post(client, image_bytes(upright, "PNG"), filename="web.png").get_json()
    assert avif.status_code == 200, avif.get_json()
    assert avif.get_json()["image"] == {"width": 160, "height": 120}
    assert [f["box"] for f in avif.get_json()["faces"]] == [f["box"] for f in png["faces"]]


def test_an_iphone_heic_photo_is_415_and_says_how_to_send_it(client, face_jpeg):
    response = post(client, heic_start(), filename="IMG_0001.HEIC")
    assert_json_error(response, 415, "unsupported_type")
    assert "Most Compatible" in response.get_json()["error"]["message"]
    assert_still_serving(client, face_jpeg)


def test_html_errors_are_pages_with_the_message(client):
    response = post(client, b"not an image", path="/predict")
    html = response.get_data(as_text=True)
    assert response.status_code == 415
    assert "text/html" in response.headers["Content-Type"]
    assert FORMAT_NAMES in html and "Traceback" not in html
    assert 'id="upload-form"' in html and "<h1" in html  # the error page carries the form


def test_truncated_jpeg_is_422(client, face_jpeg):
    big = image_bytes(photo((400, 300)), quality=95)
    assert_json_error(post(client, big[: len(big) // 2]), 422, "corrupt_image")
    assert_still_serving(client, face_jpeg)


def test_progressive_jpeg_with_zero_sampling_factors_is_422(client, face_jpeg):
    # Found by the fuzz test: a damaged frame header saying 0 once divided by zero (a 500).
    jpeg = bytearray(image_bytes(photo((64, 48)), quality=90, progressive=True))
    start = jpeg.index(b"\xff\xc2")  # SOF2: marker, length, precision, height, width, count
    count = jpeg[start + 9]
    for i in range(count):  # each component: id, sampling factors, quantisation table
        jpeg[start + 10 + 3 * i + 1] = 0x00
    # A JPEG whose frame cannot be decoded is damaged: 422, as for a truncated file.
    assert_json_error(post(client, bytes(jpeg)), 422, "corrupt_image")
    assert_still_serving(client, face_jpeg)


def test_corrupt_png_is_422(client, face_jpeg):
    png = bytearray(image_bytes(photo(), "PNG"))
    png[60:200] = bytes(140)  # zero out the compressed pixel data
    assert_json_error(post(client, bytes(png), filename="a.png"), 422, "corrupt_image")
    assert_still_serving(client, face_jpeg)


def test_upload_over_the_size_limit_is_413(client, face_jpeg):
    noise = np.random.default_rng(0).integers(0, 255, (900, 900, 3), dtype=np.uint8)
    big = image_bytes(Image.fromarray(noise), "PNG")
    assert len(big) > 1024 * 1024  # the test app's limit is 1 MB
    assert_json_error(post(client, big, filename="big.png"), 413, "too_large")
    assert_still_serving(client, face_jpeg)


def test_the_size_limit_comes_from_the_environment(monkeypatch, settings):
    monkeypatch.setenv("AGE_MAX_UPLOAD_MB", "3")
    assert Settings.from_env().max_upload_bytes == 3 * 1024 * 1024
    monkeypatch.delenv("AGE_MAX_UPLOAD_MB")
    assert Settings.from_env().max_upload_bytes == 10 * 1024 * 1024


def test_decompression_bomb_is_refused_before_decoding(client, face_jpeg):
    bomb = png_claiming(100_000, 100_000)
    assert len(bomb) < 200
    response = post(client, bomb, filename="bomb.png")
    assert_json_error(response, 413, "too_large")
    assert "too many pixels" in response.get_json()["error"]["message"]
    assert_still_serving(client, face_jpeg)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("LA", "PNG")],
)
def test_unusual_pixel_modes_are_predicted(client, mode, fmt):
    base = photo()
    if mode == "I;16":
        pixels = np.asarray(base.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(pixels, "I;16")
    elif mode == "P":
        image = base.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        image = base.convert(mode)
    response = post(client, image_bytes(image, fmt), filename=f"x.{fmt.lower()}")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["image"] == {"width": 160, "height": 120}


def test_exif_orientation_is_applied_before_prediction(client):
    upright = photo((120, 180), seed=5)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a phone sensor writes
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = post(client, image_bytes(stored, "PNG", exif=exif), filename="phone.png").get_json()
    plain = post(client, image_bytes(upright, "PNG"), filename="upright.png").get_json()
    assert rotated["image"] == {"width": 120, "height": 180}
    assert np.allclose(
        list(rotated["faces"][0]["probabilities"].values()),
        list(plain["faces"][0]["probabilities"].values()),
        atol=1e-5,
    )


def test_a_very_large_photo_is_downscaled_and_its_face_found_in_its_own_pixels(client_with, grace):
    # Grace Hopper's 512 x 600 portrait, four times larger, at a known place in a 5000 x 3800
    # photo: found on the photo shrunk to AGE_WORK_SIZE, and boxed in the upload's pixels.
    large = photo((5000, 3800), seed=7)
    large.paste(grace.resize((2048, 2400)), (2500, 1000))
    face_box = (2500 + 4 * 172, 1000 + 4 * 144, 4 * 183, 4 * 183)  # README's example, x4
    for work_size in (1600, 800):
        client = client_with(max_upload_mb=10, work_size=work_size)
        response = post(client, image_bytes(large, quality=80), filename="large.jpg")
        assert response.status_code == 200, response.get_json()
        answer = response.get_json()
        assert answer["image"] == {"width": 5000, "height": 3800}
        [face] = [f for f in answer["faces"] if f["face_found"]]
        x, y, w, h = face["box"]
        assert abs(x + w / 2 - (face_box[0] + face_box[2] / 2)) < 0.15 * face_box[2]
        assert abs(y + h / 2 - (face_box[1] + face_box[3] / 2)) < 0.15 * face_box[3]
        assert 0.7 < w / face_box[2] < 1.4


def test_more_pixels_than_allowed_is_413(settings, app, face_jpeg):
    small = Settings(**{**settings.__dict__, "max_pixels": 10_000})
    client = create_app(small, predictor=app.extensions["agegroup"].predictor).test_client()
    assert_json_error(post(client, image_bytes(photo((200, 100)))), 413, "too_large")


def test_two_image_fields_are_400(client, face_jpeg):
    form = {"image": [(io.BytesIO(face_jpeg), "a.jpg"), (io.BytesIO(face_jpeg), "b.jpg")]}
    response = client.post("/api/predict", data=form, content_type="multipart/form-data")
    assert_json_error(response, 400, "bad_request")


def test_wrong_method_and_unknown_path_get_clean_errors(client):
    assert_json_error(client.get("/api/predict"), 405, "method_not_allowed")
    assert_json_error(client.get("/api/nothing"), 404, "not_found")
    assert_json_error(client.post("/api"), 405, "method_not_allowed")
    assert_json_error(client.delete("/openapi.json"), 405, "method_not_allowed")
    page = client.get("/nowhere")
    assert page.status_code == 404 and "text/html" in page.headers["Content-Type"]


# --- no model, wrong model ------------------------------------------------------------------


@pytest.fixture()
def no_model_client(tmp_path: Path):
    settings = Settings(model_path=tmp_path / "export.pkl", model_dir=tmp_path)
    return create_app(settings).test_client()


def test_without_a_model_the_server_starts_and_says_how_to_make_one(no_model_client, face_jpeg):
    page = no_model_client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "No model is installed" in html and "agegroup.training.train" in html
    assert_json_error(post(no_model_client, face_jpeg), 503, "model_unavailable")
    assert_json_error(no_model_client.get("/healthz"), 503, "model_unavailable")
    assert post(no_model_client, face_jpeg, path="/predict").status_code == 503


def test_a_learner_with_other_classes_is_refused_at_startup(tmp_path: Path, face_jpeg):
    export_tiny_learner(tmp_path / "export.pkl", vocab_ok=False)
    settings = Settings(model_path=tmp_path / "export.pkl", model_dir=tmp_path)
    app = create_app(settings)
    state = app.extensions["agegroup"]
    assert state.predictor is None
    assert "nor the seven age groups" in state.load_error
    assert_json_error(app.test_client().get("/healthz"), 503, "model_unavailable")


def test_a_model_path_outside_the_model_folder_is_refused(tmp_path: Path, model_dir: Path):
    settings = Settings(model_path=model_dir / "export.pkl", model_dir=tmp_path)
    state = create_app(settings).extensions["agegroup"]
    assert state.predictor is None and "outside" in state.load_error


def test_a_learner_without_a_version_is_refused_with_how_to_export_it(tmp_path: Path, model_dir):
    from fastai.learner import load_learner

    learn = load_learner(model_dir / "export.pkl", cpu=True)
    del learn.agegroup_version
    learn.export(tmp_path / "export.pkl")
    state = create_app(Settings(model_path=tmp_path / "export.pkl", model_dir=tmp_path))
    load_error = state.extensions["agegroup"].load_error
    assert "carries no version" in load_error and "export_learner" in load_error
