"""``vgkit serve``: a local web page and a JSON endpoint over :class:`vgkit.Grounder`.

Built on FastAPI (Starlette) and uvicorn: a page of plain HTML and JavaScript, no
assets fetched from anywhere, and ``POST /predict`` for scripts. Every prediction is
``Grounder.predict`` and every picture ``Grounder.figure``; nothing here knows the model.

Requests are served concurrently (reading, decoding and drawing run in a thread pool)
while the model runs one request at a time behind a lock: its forward pass writes
module attributes, and one forward already uses every core of a CPU.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations, whose
# types are imported inside create_app (the serve extra is optional)
import base64
import io
import threading
import time
import warnings
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from vgkit.api import Grounder, Prediction
from vgkit.data.images import BadImageError, decode_image, read_image
from vgkit.data.samples import Sample, dataset_samples
from vgkit.errors import VgkitError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 10.0
MAX_PHRASE_CHARS = 1000
EXAMPLES = 24  # dataset images offered on the page
# the multipart envelope around the image (boundaries, headers, the phrase) on top of the limit
_ENVELOPE = 64 * 1024


def _missing_extra(exc: ImportError) -> VgkitError:
    return VgkitError(f"vgkit serve needs {exc.name}: pip install 'vgkit[serve]'")


def check_installed() -> None:
    """Raise a VgkitError naming the serve extra when FastAPI, uvicorn or python-multipart is missing."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise _missing_extra(exc) from None


@dataclass
class _Examples:
    """Dataset images offered on the page, listed once, on first use."""

    grounder: Grounder
    n: int
    items: list[Sample] = field(default_factory=list)
    note: str = ""
    _done: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self) -> tuple[list[Sample], str]:
        """The examples, and why there are none, if none."""
        with self._lock:
            if not self._done:
                self._done = True
                try:
                    self.items = dataset_samples(self.grounder.recipe, self.n)
                except VgkitError as exc:
                    self.note = f"no dataset images: {exc}"
                if not self.items and not self.note:
                    self.note = "no dataset images: the run's dataset lists none"
            return self.items, self.note


def prediction_json(pred: Prediction, ms: float) -> dict[str, Any]:
    """What ``POST /predict`` answers for one prediction."""
    x1, y1, x2, y2 = pred.box
    return {
        "phrase": pred.phrase,
        "box": [x1, y1, x2, y2],  # xyxy, original-image pixels, continuous
        "xywh": list(pred.xywh),
        "image_size": list(pred.image_size),  # [width, height]
        "attention": None if pred.attention is None else pred.attention.tolist(),  # [h][w]
        "words": pred.words,
        "word_weights": None if pred.word_attention is None else pred.word_attention.tolist(),
        "ms": ms,
    }


def create_app(grounder: Grounder, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               examples: int = EXAMPLES) -> Any:
    """The FastAPI app serving `grounder`: ``GET /``, ``GET /api/info``, ``POST /predict``."""
    try:
        import python_multipart  # noqa: F401  (FastAPI parses uploads with it)
        from fastapi import FastAPI, File, Form, UploadFile
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
        from starlette.exceptions import HTTPException
        from starlette.requests import Request
    except ImportError as exc:
        raise _missing_extra(exc) from None
    if not max_upload_mb > 0:
        raise VgkitError(f"max_upload_mb={max_upload_mb!r}: give a positive number of megabytes")
    limit = int(max_upload_mb * 1024 * 1024)
    body_limit = limit + _ENVELOPE
    model_lock = threading.Lock()
    listed = _Examples(grounder, examples)
    page = resources.files("vgkit.serve").joinpath("page.html").read_text(encoding="utf-8")
    app = FastAPI(title="vgkit", summary=f"{grounder.recipe.name}: image + phrase -> box",
                  docs_url="/docs", redoc_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    def too_large() -> JSONResponse:
        return error(413, f"the request is over the upload limit of {max_upload_mb:g} MB: send "
                          "a smaller image (or start the server with a larger --max-upload-mb)")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # one line, e.g. "phrase: Field required", not pydantic's list of dicts
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                 for e in exc.errors()]
        return error(422, "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 413:
            return too_large()
        return error(exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def _refuse_large(request: Request, call_next: Any) -> Any:
        # a declared length over the limit is refused before a byte is read, with the
        # limit named; a body without one is cut off by the route's max_body_size
        declared = request.headers.get("content-length", "")
        if request.url.path == "/predict" and declared.isdigit() and int(declared) > body_limit:
            return too_large()
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        """The page."""
        return page

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        """The run, its recipe, the upload limit and the dataset images the page offers."""
        items, note = listed.get()
        return {"recipe": grounder.recipe.name, "run": str(grounder.run), "which": grounder.which,
                "device": str(grounder.device), "max_upload_mb": max_upload_mb,
                "examples": [{"id": i, "name": x.name, "phrase": x.phrase}
                             for i, x in enumerate(items)],
                "examples_note": note}

    @app.get("/examples/{item}")
    def example(item: int) -> FileResponse:
        """One of the dataset images, as stored."""
        items, _ = listed.get()
        if not 0 <= item < len(items):
            raise HTTPException(404, f"no dataset image {item}: there are {len(items)}")
        return FileResponse(items[item].file)

    @app.post("/predict", max_body_size=body_limit)
    def predict(phrase: str = Form(""), image: UploadFile | None = File(None),
                example: int | None = Form(None), figure: bool = Form(False)) -> JSONResponse:
        """Ground `phrase` in the uploaded `image` (or dataset image `example`)."""
        text = phrase.strip()
        if not text:
            return error(422, "the phrase is empty: type the expression to ground")
        if len(text) > MAX_PHRASE_CHARS:
            return error(422, f"the phrase has {len(text):,} characters; at most "
                              f"{MAX_PHRASE_CHARS:,} are accepted")
        try:
            picture = _picture(image, example, limit, max_upload_mb, listed)
        except BadImageError as exc:
            return error(400, str(exc))
        except _Refused as exc:
            return error(exc.status, str(exc))
        try:
            with model_lock, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                start = time.perf_counter()
                pred = grounder.predict(picture, text)
                ms = (time.perf_counter() - start) * 1000
        except VgkitError as exc:  # a phrase with no words, ...
            return error(422, str(exc))
        body = prediction_json(pred, ms)
        body["warnings"] = [str(w.message) for w in caught]
        if figure:
            buf = io.BytesIO()
            grounder.figure(picture, text, pred).save(buf, format="PNG")
            body["figure"] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        return JSONResponse(body)

    return app


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _picture(image: Any, example: int | None, limit: int, max_upload_mb: float,
             listed: _Examples) -> Any:
    """The PIL image of the request: an upload (upright, as a viewer shows it) or an example."""
    if (image is None) == (example is None):
        raise _Refused(422, "give an image (an upload in field 'image') or a dataset image "
                            "('example'), one of the two")
    if example is not None:
        items, note = listed.get()
        if not 0 <= example < len(items):
            raise _Refused(422, f"example {example}: there are {len(items)} dataset images"
                                + (f" ({note})" if note else ""))
        return read_image(items[example].file, upright=True)  # as Grounder.predict reads a path
    data = image.file.read(limit + 1)
    if len(data) > limit:
        raise _Refused(413, f"the image {image.filename!r} is over the upload limit of "
                            f"{max_upload_mb:g} MB")
    return decode_image(data, image.filename or "upload")


def serve(grounder: Grounder, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, log_level: str = "info") -> None:
    """Serve `grounder` with uvicorn until interrupted."""
    try:
        import uvicorn
    except ImportError as exc:
        raise _missing_extra(exc) from None
    app = create_app(grounder, max_upload_mb=max_upload_mb)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
