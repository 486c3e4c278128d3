"""Per-client limits (agegroup/limits.py): the rate gives 429 with Retry-After to the API and
the page alike, the in-flight cap holds under real parallel requests, and ``off`` disables both."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from agegroup.config import Settings
from agegroup.factory import create_app
from agegroup.limits import client_key
from testsupport.uploads import post

FORM_POST = {"example": "grace-hopper"}  # the form's example button: no file to build


def limited_app(settings: Settings, app: Any, rate: str = "3/minute", in_flight: int = 2) -> Any:
    """The test app with per-client limits on, sharing the session's loaded model."""
    changed = Settings(
        **{**settings.__dict__, "rate_limit": rate, "max_inflight_per_client": in_flight}
    )
    return create_app(changed, predictor=app.extensions["agegroup"].predictor)


def from_address(app: Any, address: str) -> Any:
    """A test client whose requests come from ``address``."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def retry_after(response: Any) -> int:
    value = int(response.headers["Retry-After"])
    assert 1 <= value <= 60
    return value


def test_past_the_rate_the_api_gets_429_with_retry_after_and_the_json_error(
    settings, app, face_jpeg
):
    client = limited_app(settings, app).test_client()
    assert [post(client, face_jpeg).status_code for _ in range(3)] == [200, 200, 200]
    refused = post(client, face_jpeg)
    assert refused.status_code == 429
    body = refused.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == "rate_limited"
    wait = retry_after(refused)
    assert f"Please try again in {wait} second" in body["error"]["message"]
    assert "(3 per minute)" in body["error"]["message"]
    # Pages that predict nothing are not limited.
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200


def test_the_form_gets_the_page_with_the_form_and_when_to_try_again(settings, app, face_jpeg):
    """One budget for both ways in: two API posts and a form post use it up."""
    client = limited_app(settings, app).test_client()
    assert post(client, face_jpeg).status_code == 200
    assert post(client, face_jpeg).status_code == 200
    assert client.post("/predict", data=FORM_POST).status_code == 303
    page = client.post("/predict", data=FORM_POST)
    html = page.get_data(as_text=True)
    assert page.status_code == 429 and "text/html" in page.headers["Content-Type"]
    assert 'data-code="rate_limited"' in html
    assert f"Please try again in {retry_after(page)} second" in html
    assert html.count('id="upload-form"') == 1  # the form to try again with
    assert post(client, face_jpeg).status_code == 429  # the API shares the spent budget


def test_after_retry_after_seconds_the_client_may_predict_again(settings, app, face_jpeg):
    client = limited_app(settings, app, rate="2/3seconds").test_client()
    # Every post counts, answered or not: two quick refusals spend the budget within the window.
    assert [post(client, b"not a photo").status_code for _ in range(2)] == [415, 415]
    refused = post(client, face_jpeg)
    assert refused.status_code == 429
    assert retry_after(refused) <= 3
    time.sleep(retry_after(refused))
    assert post(client, face_jpeg).status_code == 200


def test_each_address_has_its_own_budget_and_an_ipv6_host_its_whole_64(settings, app, face_jpeg):
    limited = limited_app(settings, app, rate="1/minute")
    first, second = from_address(limited, "198.51.100.1"), from_address(limited, "198.51.100.2")
    assert post(first, face_jpeg).status_code == 200
    assert post(first, face_jpeg).status_code == 429
    assert post(second, face_jpeg).status_code == 200
    # A new address in the same /64 is the same client; another /64 is another.
    assert post(from_address(limited, "2001:db8:1:2::1"), face_jpeg).status_code == 200
    assert post(from_address(limited, "2001:db8:1:2:ffff::9"), face_jpeg).status_code == 429
    assert post(from_address(limited, "2001:db8:1:3::1"), face_jpeg).status_code == 200


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:aa:bb:1:2:3:4", "2001:db8:aa:bb::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
    ],
)
def test_a_client_is_its_address_or_its_ipv6_64(app, address, key):
    with app.test_request_context(environ_base={"REMOTE_ADDR": address}):
        assert client_key() == key


# --- the in-flight cap ----------------------------------------------------------------------


class GatedPredictor:
    """The real loaded model, whose predictions wait until the test opens the gate: so that
    requests stay in flight for as long as the test needs."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.waiting = threading.Semaphore(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict(self, faces: Any) -> Any:
        self.waiting.release()
        assert self.gate.wait(30), "the test never opened the gate"
        return self.inner.predict(faces)


@contextmanager
def in_flight(app: Any, address: str, count: int, face_jpeg: bytes) -> Iterator[list[int]]:
    """``count`` predictions from ``address`` held in flight in threads; their statuses once
    the block ends (the gate opens then)."""
    gated: GatedPredictor = app.extensions["agegroup"].predictor
    statuses: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: statuses.append(post(from_address(app, address), face_jpeg).status_code)
        )
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in range(count):
            assert gated.waiting.acquire(timeout=30), "a request never reached the model"
        yield statuses
    finally:
        gated.gate.set()
        for thread in threads:
            thread.join(30)


def gated_app(settings: Settings, app: Any, rate: str, in_flight: int = 2) -> Any:
    predictor = GatedPredictor(app.extensions["agegroup"].predictor)
    changed = Settings(
        **{**settings.__dict__, "rate_limit": rate, "max_inflight_per_client": in_flight}
    )
    return create_app(changed, predictor=predictor)


def test_a_client_with_two_predictions_in_flight_gets_429_at_once(settings, app, face_jpeg):
    gated = gated_app(settings, app, rate="100/minute")
    with in_flight(gated, "198.51.100.7", 2, face_jpeg) as statuses:
        started = time.perf_counter()
        refused = post(from_address(gated, "198.51.100.7"), face_jpeg)
        assert time.perf_counter() - started < 5  # not queued behind the two
        assert refused.status_code == 429
        assert refused.get_json()["error"]["code"] == "too_many_in_flight"
        assert "at most 2 at once" in refused.get_json()["error"]["message"]
        retry_after(refused)
        page = from_address(gated, "198.51.100.7").post("/predict", data=FORM_POST)
        assert page.status_code == 429 and 'id="upload-form"' in page.get_data(as_text=True)
        # Another client's photo still reaches the model meanwhile.
        with in_flight(gated, "198.51.100.8", 1, face_jpeg) as other:
            pass
    assert statuses == [200, 200] and other == [200]
    assert gated.extensions["agegroup"].limits.inflight.held("198.51.100.7") == 0
    assert post(from_address(gated, "198.51.100.7"), face_jpeg).status_code == 200


def test_a_failed_prediction_gives_its_slot_back(settings, app):
    limited = limited_app(settings, app, rate="100/minute", in_flight=1)
    client = limited.test_client()
    for _ in range(3):  # each a 415: the slot is returned every time
        assert post(client, b"not a photo").status_code == 415
    assert limited.extensions["agegroup"].limits.inflight.held("127.0.0.1") == 0


def test_the_slots_are_per_client(settings, app, face_jpeg):
    limited = limited_app(settings, app, rate="100/minute", in_flight=1)
    cap = limited.extensions["agegroup"].limits.inflight
    with ExitStack() as held:
        held.enter_context(cap.hold("127.0.0.1"))
        assert post(limited.test_client(), face_jpeg).status_code == 429
        assert post(from_address(limited, "198.51.100.9"), face_jpeg).status_code == 200
    assert post(limited.test_client(), face_jpeg).status_code == 200


# --- off ------------------------------------------------------------------------------------


def test_off_disables_the_rate_and_the_in_flight_cap(settings, app, face_jpeg):
    gated = gated_app(settings, app, rate="off", in_flight=1)
    assert gated.extensions["agegroup"].limits is None
    with in_flight(gated, "198.51.100.7", 3, face_jpeg) as statuses:
        pass  # all three reached the model at once: none was refused
    assert statuses == [200, 200, 200]
    client = from_address(gated, "198.51.100.7")
    assert {post(client, face_jpeg).status_code for _ in range(12)} == {200}


def test_off_is_the_default_and_the_environment_sets_the_limits(monkeypatch):
    for name in ("AGE_RATE_LIMIT", "AGE_MAX_INFLIGHT_PER_CLIENT", "AGE_RATELIMIT_STORAGE_URI"):
        monkeypatch.delenv(name, raising=False)
    default = Settings.from_env()
    assert default.rate_limit == "off" and default.max_inflight_per_client == 2
    assert default.ratelimit_storage_uri == "memory://"
    monkeypatch.setenv("AGE_RATE_LIMIT", "30/minute;300/hour")
    monkeypatch.setenv("AGE_MAX_INFLIGHT_PER_CLIENT", "3")
    monkeypatch.setenv("AGE_RATELIMIT_STORAGE_URI", "redis://cache.internal:6379")
    chosen = Settings.from_env()
    assert chosen.rate_limit == "30/minute;300/hour" and chosen.max_inflight_per_client == 3
    assert chosen.ratelimit_storage_uri == "redis://cache.internal:6379"
    for bad in ("0", "two", "1.5"):
        monkeypatch.setenv("AGE_MAX_INFLIGHT_PER_CLIENT", bad)
        with pytest.raises(ValueError, match="AGE_MAX_INFLIGHT_PER_CLIENT"):
            Settings.from_env()


@pytest.mark.parametrize("rate", ["lots", "30/fortnight", "30 per"])
def test_a_rate_it_cannot_read_stops_the_app_at_startup(settings, app, rate):
    with pytest.raises(ValueError, match=re.escape("AGE_RATE_LIMIT")):
        limited_app(settings, app, rate=rate)


def test_a_store_without_its_client_package_stops_the_app_at_startup(settings, app):
    """``redis://`` needs the redis package: without it the app refuses to start."""
    try:
        import redis  # noqa: F401

        pytest.skip("the redis package is installed here")
    except ImportError:
        pass
    roomy = Settings(
        **{
            **settings.__dict__,
            "rate_limit": "3/minute",
            "ratelimit_storage_uri": "redis://127.0.0.1:1",
        }
    )
    with pytest.raises(Exception, match="(?i)redis"):
        create_app(roomy, predictor=app.extensions["agegroup"].predictor)
