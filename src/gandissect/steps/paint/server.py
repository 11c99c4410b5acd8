"""The GANPaint web app: the page, a JSON API and the rating page, served by FastAPI.

Every request is stateless: the page keeps the stack of strokes and sends all of it each time, so undo, redo and
reset live in the page. ``POST /api/generate`` renders a seed (or several) with the strokes applied, batched with
whatever other requests are waiting (``engine.PaintEngine``), and reports for each stroke the share of its painted
area that the segmenter labels with the stroke's concept, before and after. Anything a client sends that cannot be
served gets a 4xx JSON answer ``{"error", "field", "expected"}``; see ``limits`` in the config.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from gandissect.data.scenes import LABEL_COLORS
from gandissect.errors import BadValueError
from gandissect.steps.paint.engine import MAX_SEED, PaintEngine, Stroke, png_url, pooled
from gandissect.steps.paint.masks import decode_mask

STATIC = resources.files("gandissect.steps.paint") / "static"


class Intervention(BaseModel):
    model_config = ConfigDict(extra="forbid")
    concept: str = Field(max_length=64, description="a concept name from GET /api/concepts")
    action: Literal["remove", "draw"]
    strength: Literal["low", "medium", "high"] | int = Field("medium", description="or a number of units")
    layer: str | None = Field(None, max_length=64, description="default: the concepts file's default layer")
    mask: str | list = Field(description="PNG data URL (painted = alpha > 0) or a 2-D list of 0/1, any size")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    seeds: list[int] | None = Field(None, min_length=1)
    interventions: list[Intervention] = Field(default_factory=list)
    segmentation: bool = Field(False, description="also return the segmentation of both images as PNG data URLs")


class RatingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pair: str = Field(max_length=64)
    choice: Literal["left", "right"]


class ClientError(Exception):
    def __init__(self, status: int, field: str, error: str, expected: str = ""):
        super().__init__(error)
        self.status, self.field, self.error, self.expected = status, field, error, expected


def segmentation_url(labels: torch.Tensor) -> str:
    return png_url(LABEL_COLORS[labels[0].numpy()].astype(np.uint8))


class PaintApp:
    """What the routes share: the engine, the concepts, the limits and (optionally) the rating session."""

    def __init__(self, engine: PaintEngine, concepts: dict, class_names: list[str], limits, rating=None):
        self.engine, self.concepts, self.limits, self.rating = engine, concepts, limits, rating
        self.class_names = class_names
        self.by_key = {(c["name"], c["layer"]): c for c in concepts["concepts"]}
        self.default_layer = concepts["default_layer"]

    def concept_list(self) -> list[dict]:
        out = []
        for c in self.concepts["concepts"]:
            strengths = self.concepts["layers"][c["layer"]]["strengths"]["units"]
            out.append({"name": c["name"], "layer": c["layer"], "ranking": c["ranking"], "category": c["category"],
                        "units": len(c["units"]), "strengths": strengths,
                        "color": [int(v) for v in LABEL_COLORS[self.class_names.index(c["name"])]],
                        "resolution": self.concepts["layers"][c["layer"]]["shape"][1:],
                        "default": c["layer"] == self.default_layer})
        return out

    def strokes(self, interventions: list[Intervention]) -> list[Stroke]:
        strokes = []
        for i, item in enumerate(interventions):
            where = f"interventions[{i}]"
            layer = item.layer or self.default_layer
            concept = self.by_key.get((item.concept, layer))
            if concept is None:
                if layer not in self.concepts["layers"]:
                    raise ClientError(422, f"{where}.layer", f"unknown layer {layer!r}",
                                      f"one of {', '.join(self.concepts['layers'])}")
                names = sorted({c['name'] for c in self.concepts['concepts'] if c['layer'] == layer})
                raise ClientError(422, f"{where}.concept", f"unknown concept {item.concept!r} at {layer}",
                                  f"one of {', '.join(names)}")
            counts = self.concepts["layers"][layer]["strengths"]["units"]
            n = counts[item.strength] if isinstance(item.strength, str) else item.strength
            if not 1 <= n <= len(concept["units"]):
                raise ClientError(422, f"{where}.strength", f"{n} units",
                                  f"low, medium, high or a number of units from 1 to {len(concept['units'])}")
            try:
                mask = decode_mask(item.mask, f"{where}.mask")
            except BadValueError as err:
                raise ClientError(422, f"{where}.mask", str(err),
                                  "a PNG data URL or a rectangular 2-D list of 0/1") from None
            values = concept["draw_values"][:n] if item.action == "draw" else [0.0] * n
            strokes.append(Stroke(item.concept, layer, item.action, self.class_names.index(concept["name"]),
                                  concept["units"][:n], values, mask))
        return strokes

    def generate(self, body: GenerateRequest) -> dict:
        limits = self.limits
        if (body.seed is None) == (body.seeds is None):
            raise ClientError(422, "seed", "give either seed or seeds", "seed: an integer, or seeds: a list of them")
        seeds = [body.seed] if body.seed is not None else body.seeds
        if len(seeds) > limits.max_seeds:
            raise ClientError(422, "seeds", f"{len(seeds)} seeds", f"at most {limits.max_seeds}")
        for i, seed in enumerate(seeds):
            if not 0 <= seed <= MAX_SEED:
                raise ClientError(422, f"seeds[{i}]", f"seed {seed}", f"an integer from 0 to {MAX_SEED}")
        if len(body.interventions) > limits.max_interventions:
            raise ClientError(422, "interventions", f"{len(body.interventions)} interventions",
                              f"at most {limits.max_interventions}")
        strokes = self.strokes(body.interventions)
        rendered = self.engine.render(seeds, strokes)
        size = tuple(rendered[0]["labels"].shape[-2:])
        painted = [pooled(stroke.mask, size) >= 0.5 for stroke in strokes]  # each stroke's pixels, once per request
        results = [self._answer(r, strokes, painted, body.segmentation) for r in rendered]
        return results[0] if body.seed is not None else {"results": results}

    def _answer(self, result: dict, strokes: list[Stroke], painted: list, segmentation: bool) -> dict:
        shares = []
        for stroke, inside in zip(strokes, painted):
            area = int(inside.sum())
            before = (result["original_labels"] == stroke.class_index).any(0) & inside
            after = (result["labels"] == stroke.class_index).any(0) & inside
            shares.append({"concept": stroke.concept, "layer": stroke.layer, "action": stroke.action,
                           "units": len(stroke.units), "painted_pixels": area,
                           "before": round(int(before.sum()) / area, 4) if area else None,
                           "after": round(int(after.sum()) / area, 4) if area else None})
        answer = {"seed": result["seed"], "image": png_url(result["image"].numpy()),
                  "original": png_url(result["original"].numpy()), "shares": shares}
        if segmentation:
            answer["segmentation"] = segmentation_url(result["labels"])
            answer["original_segmentation"] = segmentation_url(result["original_labels"])
        return answer


def _error(status: int, field: str, error: str, expected: str = "") -> JSONResponse:
    return JSONResponse({"error": error, "field": field, "expected": expected}, status_code=status)


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, whether or not they announce their length."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = _error(413, "body", "request body too large", f"at most {self.limit} bytes")
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await too_big(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await too_big(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay():  # the body once, then the real channel (a response may wait on it for the disconnect)
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, replay, send)


def build_app(state: PaintApp) -> FastAPI:
    # the schema is at /openapi.json; FastAPI's /docs pages would load their scripts from a CDN, so they are off
    app = FastAPI(title="gandissect paint", description=__doc__.split("\n\n")[0], docs_url=None, redoc_url=None)

    @app.exception_handler(ClientError)
    async def client_error(request: Request, err: ClientError):
        return _error(err.status, err.field, err.error, err.expected)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        problems = err.errors()
        first = problems[0] if problems else {"loc": ("body",), "msg": "invalid request", "type": ""}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        if first.get("type") == "json_invalid" or field == "body":
            return _error(400, "body", "the request body is not a JSON object (malformed JSON or another type)",
                          "a JSON object")
        expected = str(first.get("ctx", {}).get("expected", "")) if isinstance(first.get("ctx"), dict) else ""
        return _error(422, field, first.get("msg", "invalid value"), expected)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(str(STATIC / "index.html"))

    @app.get("/rate", include_in_schema=False)
    def rate_page():
        return FileResponse(str(STATIC / "rate.html"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/concepts")
    def concepts() -> list[dict]:
        return state.concept_list()

    @app.post("/api/generate")
    def generate(body: GenerateRequest) -> dict:
        return state.generate(body)

    @app.get("/api/rate/pair")
    def rate_pair() -> dict:
        if state.rating is None:
            raise ClientError(404, "rate_run", "this server has no repair run to rate",
                              "start it with --rate RUN (a repair run directory)")
        return state.rating.pair()

    @app.post("/api/rate")
    def rate(body: RatingRequest) -> dict:
        if state.rating is None:
            raise ClientError(404, "rate_run", "this server has no repair run to rate",
                              "start it with --rate RUN (a repair run directory)")
        try:
            return state.rating.answer(body.pair, body.choice)
        except KeyError:
            raise ClientError(422, "pair", f"unknown pair {body.pair!r}", "a pair id from GET /api/rate/pair") from None

    @app.get("/api/health")
    def health() -> dict:
        return {"ok": True, "batches": state.engine.batches}

    return BodyLimit(app, state.limits.max_body_bytes)


def build_state(cfg) -> PaintApp:
    """The engine, concepts and (with ``cfg.rate_run``) rating session of a PaintConfig, every input checked."""
    from gandissect.models.generators import open_generator
    from gandissect.models.segmenter import load_segmenter
    from gandissect.steps.paint.concepts import load_concepts
    from gandissect.steps.paint.ratings import RatingSession

    concepts = load_concepts(cfg.concepts)
    generator, segmenter = open_generator(cfg, "paint"), load_segmenter(cfg.segmenter)
    engine = PaintEngine(generator, segmenter, cfg.latent_stream, cfg.batching, cfg.max_batch, cfg.wait_ms,
                         cfg.cache_size, layers=list(concepts["layers"]))
    rating = RatingSession(cfg.rate_run, cfg.rate_seed) if cfg.rate_run else None
    return PaintApp(engine, concepts, list(segmenter.classes), cfg.limits, rating)


def serve(cfg, announce, log_level: str = "warning") -> None:
    """Serve until interrupted; ``announce(url)`` is called once the port is bound (``port: 0`` picks a free one)."""
    import socket

    import uvicorn

    state = build_state(cfg)
    # proto IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on such sockets, and without it every
    # answer waits ~40 ms for the client's delayed ACK (headers and body go out as two writes)
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as err:
        raise BadValueError(f"cannot listen on {cfg.host}:{cfg.port} ({err.strerror}); pick another --port, or 0 "
                            "for a free one") from None
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(build_app(state), log_level=log_level, access_log=False))
    announce(f"http://{host}:{port}/")
    try:
        server.run(sockets=[sock])
    finally:
        state.engine.close()
