"""GANPaint's engine and JSON API on the shipped scene GAN and concepts file, over real HTTP (uvicorn)."""

import base64
import io
import json
import math
import threading

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from gandissect.config import PaintConfig, PaintLimitsConfig
from gandissect.core.wandb_files import read_offline_run
from gandissect.core.hooks import NetHook
from gandissect.steps.paint.engine import Stroke, compose
from gandissect.steps.paint.server import build_app, build_state

from .conftest import REPO


def png_mask(mask: np.ndarray, painted_alpha: int = 255) -> str:
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask > 0] = (255, 0, 0, painted_alpha)
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def decode(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


class Served:
    """The paint app on a free port of 127.0.0.1, in a thread of this process (so its memory can be read)."""

    def __init__(self, cfg: PaintConfig):
        import socket

        import uvicorn

        self.state = build_state(cfg)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # as server.serve does
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(build_app(self.state), log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            threading.Event().wait(0.02)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.state.engine.close()


@pytest.fixture(scope="module")
def served():
    cfg = PaintConfig(generator=str(REPO / "checkpoints/scene_gan_generator.safetensors"),
                      segmenter=str(REPO / "checkpoints/scene_segmenter.safetensors"),
                      concepts=str(REPO / "checkpoints/scene_gan_paint_concepts.json"),
                      limits=PaintLimitsConfig(max_body_bytes=200_000, max_interventions=8, max_seeds=4))
    server = Served(cfg)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        server.client = client
        yield server
    server.close()


def class_region(served, seed: int, name: str) -> np.ndarray:
    """(64, 64) bool: where the segmenter sees ``name`` in the plain sample of ``seed``."""
    answer = served.client.post("/api/generate", json={"seed": seed}).json()
    image = torch.from_numpy(decode(answer["image"])[..., :3].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    segmenter = served.state.engine.segmenter
    return (segmenter.labels(image)[0] == segmenter.classes.index(name)).any(0).numpy()


def seed_with(served, name: str, least: int = 250) -> tuple[int, np.ndarray]:
    for seed in range(100):
        region = class_region(served, seed, name)
        if region.sum() >= least:
            return seed, region
    pytest.fail(f"no seed below 100 shows {least} pixels of {name}")


def test_stacked_strokes_equal_one_edit():
    """compose() gives the same layer output as applying the strokes one after another, overlapping or not."""
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(2, 6, 4, 4, generator=gen)
    strokes = [Stroke("a", "l", "remove", 1, [0, 2, 3], [0.0] * 3, torch.rand(9, 9, generator=gen)),
               Stroke("b", "l", "draw", 2, [2, 5], [3.0, -1.0], (torch.rand(4, 4, generator=gen) > 0.5).float()),
               Stroke("c", "other", "draw", 2, [1], [9.0], torch.ones(4, 4)),
               Stroke("d", "l", "draw", 2, [3], [2.0], torch.ones(1, 1))]
    expected = r.clone()
    from gandissect.steps.paint.engine import pooled
    for stroke in strokes:
        if stroke.layer != "l":
            continue
        a = torch.zeros(6, 4, 4)
        a[stroke.units] = pooled(stroke.mask, (4, 4))
        k = torch.zeros(6, 1, 1)
        k[stroke.units, 0, 0] = torch.tensor(stroke.values)
        expected = (1 - a) * expected + a * k
    alpha, value = compose(strokes, "l", (6, 4, 4))
    model = torch.nn.Sequential(torch.nn.Identity())
    with NetHook(model, ["0"]) as hook:
        hook.edit("0", alpha, None, value)
        got = hook(r)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(compose([], "l", (6, 4, 4))[0], torch.zeros(6, 4, 4))


def test_concepts_cover_every_class_at_two_layers(served):
    concepts = served.client.get("/api/concepts").json()
    classes = served.state.engine.segmenter.classes[1:]
    by_layer = {}
    for c in concepts:
        by_layer.setdefault(c["layer"], {})[c["name"]] = c
    assert set(by_layer) == {"layer4", "layer6"}
    assert by_layer["layer6"]["tree"]["resolution"] == [16, 16] and by_layer["layer4"]["tree"]["default"]
    for layer, found in by_layer.items():
        assert set(found) == set(classes)
        for name, c in found.items():
            assert c["ranking"] == f"{name}-{'ace' if c['category'] in ('object', 'part') else 'iou'}"
            assert 1 <= c["strengths"]["low"] <= c["strengths"]["medium"] <= c["strengths"]["high"] <= c["units"]


def test_plain_samples_are_the_same_every_time_and_in_any_company(served):
    one = served.client.post("/api/generate", json={"seed": 11}).json()
    many = served.client.post("/api/generate", json={"seeds": [3, 11, 4]}).json()["results"]
    assert one["image"] == one["original"] == many[1]["image"] and one["shares"] == []
    assert [r["seed"] for r in many] == [3, 11, 4] and many[0]["image"] != many[1]["image"]


def test_removing_trees_empties_the_painted_area_and_only_there(served):
    seed, trees = seed_with(served, "tree")
    rows, cols = np.nonzero(trees)
    mask = np.zeros((64, 64), np.uint8)
    mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = 1
    body = {"seed": seed, "interventions": [{"concept": "tree", "action": "remove", "strength": "high",
                                             "mask": png_mask(np.kron(mask, np.ones((8, 8), np.uint8)))}]}
    answer = served.client.post("/api/generate", json=body).json()
    share = answer["shares"][0]
    assert share["painted_pixels"] == int(mask.sum()) and share["before"] > 0.3
    assert share["after"] < share["before"] / 2, share
    image, original = decode(answer["image"]).astype(int), decode(answer["original"]).astype(int)
    outside = np.ones((64, 64), bool)
    outside[max(rows.min() - 16, 0):rows.max() + 17, max(cols.min() - 16, 0):cols.max() + 17] = False
    assert np.abs(image - original).sum(-1)[outside].mean() < np.abs(image - original).sum(-1)[mask > 0].mean() / 4
    # the same mask as a 2-D list of another size gives the same edit
    listed = dict(body, interventions=[dict(body["interventions"][0], mask=np.kron(mask, np.ones((2, 2))).tolist())])
    assert served.client.post("/api/generate", json=listed).json()["image"] == answer["image"]


def test_strokes_are_batched_as_they_would_run_alone(served):
    """Sixteen concurrent requests share generator forwards and give each the image it gets alone."""
    seed, _ = seed_with(served, "tree")
    bodies = [{"seed": seed + i, "interventions": [{"concept": c, "action": a, "strength": "medium",
                                                    "mask": [[1, 0], [0, 1]] if i % 2 else [[1]]}]}
              for i, (c, a) in enumerate([("tree", "remove"), ("dome", "draw"), ("sky", "remove"), ("door", "draw")]
                                         * 4)]
    alone = [served.client.post("/api/generate", json=b).json() for b in bodies]
    before = served.state.engine.batches
    together = [None] * len(bodies)

    def post(i):
        together[i] = served.client.post("/api/generate", json=bodies[i]).json()
    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert served.state.engine.batches - before < len(bodies)  # some requests shared a forward
    for a, b in zip(alone, together):
        diff = np.abs(decode(a["image"]).astype(int) - decode(b["image"]).astype(int))
        assert diff.max() <= 2 and a["shares"][0]["before"] == b["shares"][0]["before"]


BAD = [  # (body or raw bytes, status, field fragment, message fragment)
    (b"{not json", 400, "body", "JSON"),
    (b"[1, 2]", 400, "body", "JSON object"),
    (b'{"seed": Infinity}', 422, "seed", "finite"),
    (b'{"seed": 1, "interventions": [{"concept": "tree", "action": "draw", "mask": [[NaN]]}]}', 422,
     "interventions[0].mask", "0 or 1"),
    ({"seed": 1, "interventions": [{"concept": "unicorn", "action": "remove", "mask": [[1]]}]}, 422,
     "interventions[0].concept", "unknown concept"),
    ({"seed": 1, "interventions": [{"concept": "tree", "action": "paint", "mask": [[1]]}]}, 422,
     "interventions.0.action", "remove"),
    ({"seed": 1, "interventions": [{"concept": "tree", "action": "draw", "layer": "layer9", "mask": [[1]]}]}, 422,
     "interventions[0].layer", "unknown layer"),
    ({"seed": 1, "interventions": [{"concept": "tree", "action": "draw", "strength": 0, "mask": [[1]]}]}, 422,
     "interventions[0].strength", "units"),
    ({"seed": 1, "interventions": [{"concept": "tree", "action": "draw", "mask": "data:image/png;base64,AAAA"}]}, 422,
     "interventions[0].mask", "PNG"),
    ({"seed": 1, "interventions": [{"concept": "tree", "action": "draw", "mask": "data:image/jpeg;base64,AAAA"}]},
     422, "interventions[0].mask", "data URL"),
    ({"seed": 1, "interventions": [{"concept": "tree", "action": "draw", "mask": [[1, 0], [1]]}]}, 422,
     "interventions[0].mask", "rectangular"),
    ({"seed": 1, "interventions": [{"concept": "tree", "action": "draw", "mask": [[1, 2]]}]}, 422,
     "interventions[0].mask", "0 or 1"),
    ({"seed": 1, "interventions": [{"concept": "tree", "action": "draw", "mask": [["1"]]}]}, 422,
     "interventions[0].mask", "0 or 1"),
    ({"seed": 1, "interventions": [{"concept": "tree", "action": "draw", "mask": [[0] * 3000]}]}, 422,
     "interventions[0].mask", "larger than"),
    ({"seed": 1, "interventions": [{"concept": "tree", "action": "draw", "mask": [[1]]}] * 9}, 422,
     "interventions", "at most 8"),
    ({"seeds": [1, 2, 3, 4, 5]}, 422, "seeds", "at most 4"),
    ({"seed": -3}, 422, "seed", "greater than or equal"),
    ({"seed": 2**31}, 422, "seed", "less than or equal"),
    ({"seeds": [1, 2**40]}, 422, "seeds[1]", "seed"),
    ({"seed": 1, "seeds": [2]}, 422, "seed", "either"),
    ({}, 422, "seed", "either"),
    ({"seed": 1, "colour": "red"}, 422, "colour", "Extra"),
    ({"seed": "seven"}, 422, "seed", "integer"),
]


@pytest.mark.parametrize("body,status,field,message", BAD, ids=range(len(BAD)))
def test_bad_requests_get_a_4xx_naming_the_field(served, body, status, field, message):
    if isinstance(body, bytes):
        response = served.client.post("/api/generate", content=body, headers={"content-type": "application/json"})
    else:
        response = served.client.post("/api/generate", json=body)
    answer = response.json()
    assert response.status_code == status and field in answer["field"] and message in answer["error"] + answer[
        "expected"], answer


def test_bodies_over_the_limit_are_refused_announced_or_not(served):
    big = json.dumps({"seed": 1, "interventions": [{"concept": "tree", "action": "draw",
                                                    "mask": [[0] * 300] * 400}]}).encode()
    assert len(big) > 200_000
    response = served.client.post("/api/generate", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["field"] == "body"

    def chunks():
        for start in range(0, len(big), 50_000):
            yield big[start:start + 50_000]
    response = served.client.post("/api/generate", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_a_thousand_random_requests_never_get_a_5xx(served):
    """Seeded fuzzing: random JSON, mutated valid bodies and damaged masks. No 5xx; the server answers a valid
    request exactly as before; its memory does not keep growing."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    valid = {"seed": 5, "interventions": [{"concept": "tree", "action": "remove", "strength": "low",
                                           "mask": [[1, 0], [0, 1]]}]}
    reference = served.client.post("/api/generate", json=valid).json()
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                     st.sampled_from(["tree", "remove", "draw", "high", "layer4",
                                      "data:image/png;base64,iVBORw0KGgo="]))
    anything = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                          st.dictionaries(st.text(max_size=12), inner, max_size=5)),
                            max_leaves=20)
    fields = st.sampled_from(["seed", "seeds", "interventions", "segmentation", "concept", "action", "strength",
                              "layer", "mask"])
    statuses, rss = [], []

    def mutated(draw_key, value):
        body = json.loads(json.dumps(valid))
        if draw_key in ("concept", "action", "strength", "layer", "mask"):
            body["interventions"][0][draw_key] = value
        else:
            body[draw_key] = value
        return body

    @settings(max_examples=1000, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(anything, st.tuples(fields, anything).map(lambda kv: mutated(*kv)),
                     st.binary(max_size=300)))
    def send(body):
        if isinstance(body, bytes):
            response = served.client.post("/api/generate", content=body, headers={"content-type": "application/json"})
        else:
            response = served.client.post("/api/generate", json=body)
        statuses.append(response.status_code)
        assert response.status_code < 500, (body, response.text)
        if len(statuses) % 250 == 0:
            rss.append(_rss_mb())

    send()
    assert len(statuses) >= 1000 and sum(s >= 400 for s in statuses) > 500
    assert served.client.post("/api/generate", json=valid).json() == reference
    assert rss[-1] - rss[1] < 50, rss  # after warm-up, no growth without bound


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_rating_pairs_are_recorded_and_summarized(tmp_path):
    from gandissect.core.hooks import fold_ablation
    from gandissect.models.progan import ProGANGenerator, load_generator
    from gandissect.steps.paint.ratings import RatingSession, binomial_interval, summarize
    from scipy.stats import binomtest

    generator = REPO / "checkpoints/scene_gan_generator.safetensors"
    ProGANGenerator.save(fold_ablation(load_generator(generator), "layer4", [6, 7, 8]),
                         tmp_path / "repaired_generator.safetensors")
    (tmp_path / "repair.json").write_text(json.dumps({"settings": {"generator": str(generator), "layer": "layer4"},
                                                      "random_units": [[1, 2, 3]],
                                                      "checkpoint": {"path": "repaired_generator.safetensors"}}))
    session = RatingSession(tmp_path, seed=3)
    for _ in range(12):
        pair = session.pair()
        assert pair["left"] != pair["right"]
        session.answer(pair["pair"], "left")
    with pytest.raises(KeyError):
        session.answer(pair["pair"], "left")  # answered once only
    lines = [json.loads(line) for line in (tmp_path / "ratings.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and all(r["preferred_repaired"] == (r["repaired_side"] == "left") for r in lines)
    summary = summarize(tmp_path)
    for name in ("original", "random"):
        mine = [r for r in lines if r["alternative"] == name]
        entry = summary[f"over_{name}"]
        wins = sum(r["preferred_repaired"] for r in mine)
        assert entry["answers"] == len(mine) and entry["preferred_repaired"] == wins
        if mine:
            exact = binomtest(entry["preferred_repaired"], len(mine)).proportion_ci(0.95, method="exact")
            assert entry["ci95"] == [round(exact.low, 4), round(exact.high, 4)]
    assert binomial_interval(0, 10)[0] == 0.0 and math.isclose(binomial_interval(5, 10)[1], 0.8129, abs_tol=1e-4)


def test_paint_commands_refuse_bad_input_in_one_line(tmp_path, capsys):
    from gandissect.cli import main

    busy = __import__("socket").socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    (tmp_path / "notes.json").write_text('{"format": "something else"}')
    cases = [
        (["paint", "--set", f"concepts={tmp_path / 'none.json'}"], "concepts file"),
        (["paint", "--set", f"concepts={tmp_path / 'notes.json'}"], "is not a concepts file"),
        (["paint", "--port", "70000"], "port=70000"),
        (["paint", "--port", str(busy.getsockname()[1])], "cannot listen"),
        (["paint", "--rate", str(tmp_path)], "not a repair run directory"),
        (["paint", "--set", "max_batch=0"], "max_batch=0"),
        (["paint", "prepare", "--set", "layers=[]"], "at least one layer"),
        (["rate", "summary", str(tmp_path)], "no ratings yet"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], (argv, err)
    busy.close()


def test_prepare_makes_a_concepts_file_the_server_reads(tmp_path, isolated_runs):
    """A tiny `paint prepare` (one layer, ACE of the object classes, a few steps) and a second run that reuses it."""
    from gandissect.config import PaintPrepareConfig
    from gandissect.pipelines import run_paint_prepare
    from gandissect.steps.paint.concepts import load_concepts

    cfg = PaintPrepareConfig(generator=str(REPO / "checkpoints/scene_gan_generator.safetensors"),
                             segmenter=str(REPO / "checkpoints/scene_segmenter.safetensors"), layers=["layer4"],
                             n=48, ace_categories=["object"], keep=10, out=str(tmp_path / "concepts.json"),
                             ace_set=["steps=3", "batch_size=4", "n=16", "constants_n=16", "removal_units=10",
                                      "init_units=5"])
    first = run_paint_prepare(cfg)
    concepts = load_concepts(tmp_path / "concepts.json")
    assert first["ace_runs"] == 2 and first["concepts"] == 12
    by_name = {c["name"]: c for c in concepts["concepts"]}
    ace = json.loads((isolated_runs / "paint-prepare" / "ace-layer4-tree" / "ace.json").read_text())
    dissection = json.loads((isolated_runs / "paint-prepare" / "dissect" / "dissect.json").read_text())
    assert by_name["tree"]["ranking"] == "tree-ace" and by_name["tree"]["units"] == ace["rankings"]["ace"][:10]
    assert by_name["sky"]["ranking"] == "sky-iou"
    thresholds = [d["threshold"] for d in dissection["layers"]["layer4"]["units_detail"]]
    assert by_name["door"]["draw_values"] == [round(thresholds[u], 6) for u in by_name["door"]["units"]]
    counts = concepts["layers"]["layer4"]["strengths"]["units"]
    assert 1 <= counts["low"] <= counts["medium"] <= counts["high"] <= 10
    again = run_paint_prepare(cfg)  # the finished ACE runs are reused, not run again
    assert again["wall_s"] < first["wall_s"] / 2 and load_concepts(tmp_path / "concepts.json")["concepts"] == concepts[
        "concepts"]
    logged = read_offline_run(isolated_runs / "paint-prepare" / "wandb")  # both attempts, one W&B run
    assert (logged["group"], logged["job_type"]) == ("scene_gan_generator", "paint-prepare")
    assert logged["summary"]["concepts"] == again["concepts"] and logged["summary"]["ace_runs"] == again["ace_runs"]
    assert {a["name"] for a in logged["artifacts"] if a["used"]} == {"scene_gan_generator"}
