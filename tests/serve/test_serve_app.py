"""``vgkit.serve.create_app`` through FastAPI's TestClient on the tiny trained run."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vgkit.serve import create_app


@pytest.fixture(scope="module")
def client(grounder):
    return TestClient(create_app(grounder, max_upload_mb=0.05))


def png(size=(120, 90), seed=0) -> bytes:
    """A PNG of noise with a red square: real pixels the model has never seen."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    a[20:50, 30:70] = (220, 30, 30)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def post(client, data: bytes | None, phrase: str | None, **extra):
    files = {"image": ("pic.png", data, "image/png")} if data is not None else None
    form = {"phrase": phrase, **extra} if phrase is not None else dict(extra)
    return client.post("/predict", data=form, files=files)


def test_page_and_info(client, tiny_run):
    page = client.get("/")
    assert page.status_code == 200 and 'id="phrase"' in page.text and "/predict" in page.text
    info = client.get("/api/info").json()
    assert info["recipe"] == "synthetic-attn-regression" and info["max_upload_mb"] == 0.05
    assert info["examples"] and not info["examples_note"]
    first = info["examples"][0]
    assert (tiny_run.root / first["name"]).is_file() and first["phrase"]
    got = client.get(f"/examples/{first['id']}")
    assert got.status_code == 200
    assert got.content == (tiny_run.root / first["name"]).read_bytes()
    assert client.get("/examples/999").status_code == 404


def test_predict_matches_grounder(client, grounder):
    data = png()
    r = post(client, data, "the red square")
    assert r.status_code == 200, r.text
    body = r.json()
    want = grounder.predict(Image.open(io.BytesIO(data)), "the red square")
    assert body["box"] == pytest.approx(list(want.box), abs=1e-4)
    assert body["image_size"] == [120, 90]
    assert np.allclose(np.array(body["attention"]), want.attention, atol=1e-6)
    assert np.array(body["attention"]).shape == grounder.model.spec.grid
    assert body["words"] == want.words == ["the", "red", "square"]
    assert body["word_weights"] == pytest.approx(want.word_attention.tolist(), abs=1e-6)
    assert sum(body["word_weights"]) == pytest.approx(1, abs=1e-4)
    assert body["ms"] > 0 and "figure" not in body


def test_predict_figure_is_the_grounders_figure(client, grounder):
    data = png(seed=1)
    body = post(client, data, "the red square", figure="true").json()
    head, b64 = body["figure"].split(",", 1)
    assert head == "data:image/png;base64"
    got = Image.open(io.BytesIO(base64.b64decode(b64)))
    want = grounder.figure(Image.open(io.BytesIO(data)), "the red square")
    assert got.size == want.size
    assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want.convert("RGB")))


def test_dataset_example_matches_grounder(client, grounder, tiny_run):
    first = client.get("/api/info").json()["examples"][0]
    body = post(client, None, first["phrase"], example=str(first["id"])).json()
    want = grounder.predict(tiny_run.root / first["name"], first["phrase"])
    assert body["box"] == pytest.approx(list(want.box), abs=1e-4)


@pytest.mark.parametrize("phrase, status, says", [
    ("", 422, "the phrase is empty"),
    ("   ", 422, "the phrase is empty"),
    ("x" * 1001, 422, "at most 1,000"),
])
def test_bad_phrases_are_422_with_the_reason(client, phrase, status, says):
    r = post(client, png(), phrase)
    assert r.status_code == status and says in r.json()["detail"], r.text


def test_missing_fields_are_one_line_422(client):
    r = post(client, png(), None)
    assert r.status_code == 422 and "the phrase is empty" in r.json()["detail"]
    r = post(client, png(), "the red square", example="first")
    assert r.status_code == 422
    assert r.json()["detail"].startswith("example: Input should be a valid integer")
    r = post(client, None, "the red square")
    assert r.status_code == 422 and "give an image" in r.json()["detail"]
    r = post(client, png(), "the red square", example="0")
    assert r.status_code == 422 and "one of the two" in r.json()["detail"]
    r = post(client, None, "the red square", example="77")
    assert r.status_code == 422 and "example 77" in r.json()["detail"]


@pytest.mark.parametrize("data, says", [
    (b"not an image at all", "cannot decode image 'pic.png'"),
    (png()[:200], "cannot decode image 'pic.png'"),
    (b"", "is empty (0 bytes)"),
])
def test_bad_images_are_400_with_the_reason(client, data, says):
    r = post(client, data, "the red square")
    assert r.status_code == 400 and says in r.json()["detail"], r.text
    assert "\n" not in r.json()["detail"]


def test_pixel_limit_applies(client, monkeypatch):
    monkeypatch.setenv("VGKIT_MAX_IMAGE_PIXELS", "5000")
    r = post(client, png(), "the red square")
    assert r.status_code == 400
    assert "120x90 = 10,800 pixels is over the limit of 5,000" in r.json()["detail"]


def test_oversize_upload_is_413(client):
    big = png(size=(400, 400))  # noise does not compress: ~480 kB against a 51 kB limit
    assert len(big) > 0.05 * 1024 * 1024 + 64 * 1024
    r = post(client, big, "the red square")
    assert r.status_code == 413 and "upload limit of 0.05 MB" in r.json()["detail"], r.text


def test_oversize_image_within_the_envelope_is_413(client):
    # over the image limit but under limit + multipart envelope: refused by the reader
    rng = np.random.default_rng(3)
    blob = rng.integers(0, 255, int(0.05 * 1024 * 1024) + 1000, dtype=np.uint8).tobytes()
    r = post(client, blob, "the red square")
    assert r.status_code == 413 and "'pic.png' is over the upload limit" in r.json()["detail"]


def test_concurrent_requests_all_answered_correctly(client, grounder):
    images = [png(seed=s) for s in range(6)]
    want = [grounder.predict(Image.open(io.BytesIO(d)), "the red square").box for d in images]
    got: dict[int, list[float]] = {}

    def ask(k: int) -> None:
        got[k] = post(client, images[k], "the red square").json()["box"]

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == list(range(len(images)))
    for k in range(len(images)):
        assert got[k] == pytest.approx(list(want[k]), abs=1e-4)


def test_unknown_words_warn_in_the_answer(client):
    body = post(client, png(), "zzyzx qwfp").json()
    assert any("zzyzx" in w for w in body["warnings"])


def test_oversize_body_without_a_length_is_413(client):
    # a chunked body declares no length: the route's own limit cuts it off while reading
    def chunks():
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 4096

    r = client.post("/predict", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and "upload limit of 0.05 MB" in r.json()["detail"], r.text


def test_a_request_in_the_model_does_not_block_the_others(grounder):
    """While one prediction holds the model, the page, the info and refusals are answered."""
    entered, release = threading.Event(), threading.Event()

    class Slow:
        def __getattr__(self, name):
            return getattr(grounder, name)

        def predict(self, *args, **kwargs):
            entered.set()
            assert release.wait(60)
            return grounder.predict(*args, **kwargs)

    client = TestClient(create_app(Slow()))  # type: ignore[arg-type]
    answer: dict[str, object] = {}
    slow = threading.Thread(target=lambda: answer.update(
        r=post(client, png(), "the red square")))
    slow.start()
    try:
        assert entered.wait(60), "the first request never reached the model"
        assert client.get("/api/info").status_code == 200
        assert post(client, b"junk", "the red square").status_code == 400
        assert post(client, png(), "").status_code == 422
        assert not answer  # still inside the model
    finally:
        release.set()
        slow.join(60)
    assert answer["r"].status_code == 200
