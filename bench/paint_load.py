"""Does gathering concurrent paint requests into one forward beat GANPaint's one-request-at-a-time lock?

Measured in one run: two `gandissect paint` servers on free ports of this machine, one batching (the default) and
one serialised (``batching=false``: each request alone under one lock, as the original GANPaint), each hit by 1 and
then 16 concurrent clients. Every request is what the page sends: a seed (from a pool of 64 scenes) and one stroke
(random concept, action and strength, a random rectangle painted on a 512 x 512 PNG). Prints per case p50 / p95
latency and edits/s, and the ratio of batched to serialised throughput at 16 clients (target >= 4x on 2 CPU cores)
and the one-client p50 of the batched server (target < 100 ms).

    python bench/paint_load.py [--requests 240] [--clients 1,16]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONCEPTS = ["tree", "building", "dome", "door", "window", "roof", "sky", "cloud", "grass", "water", "mountain", "road"]


def stroke_png(rng: np.random.Generator) -> str:
    mask = np.zeros((512, 512, 4), np.uint8)
    top, left = rng.integers(0, 384, size=2)
    height, width = rng.integers(64, 256, size=2)
    mask[top:top + height, left:left + width] = (255, 80, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def bodies(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"seed": int(rng.integers(0, 64)),
             "interventions": [{"concept": str(rng.choice(CONCEPTS)), "action": str(rng.choice(["remove", "draw"])),
                                "strength": str(rng.choice(["low", "medium", "high"])), "mask": stroke_png(rng)}]}
            for _ in range(count)]


def start(batching: bool, settings: list[str]) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "gandissect.cli", "paint", "--port", "0",
               "--set", f"batching={str(batching).lower()}", *[a for s in settings for a in ("--set", s)]]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    return server, json.loads(server.stdout.readline())["url"]


def hammer(url: str, work: list[dict], clients: int) -> dict:
    latencies, lock = [], threading.Lock()
    chunks = [work[i::clients] for i in range(clients)]

    def client(mine):
        with httpx.Client(base_url=url, timeout=120) as http:
            for body in mine:
                began = time.perf_counter()
                response = http.post("/api/generate", json=body)
                response.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - began)
    threads = [threading.Thread(target=client, args=(chunk,)) for chunk in chunks]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "edits_per_s": round(len(ms) / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=240, help="requests per case")
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of both servers (experiments/scenes/paint.yaml), e.g. wait_ms=10")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    results = {}
    for batching in (True, False):
        server, url = start(batching, args.set)
        try:
            with httpx.Client(base_url=url, timeout=120) as http:  # warm-up: the 64 plain samples and the code paths
                http.post("/api/generate", json={"seeds": list(range(16))})
                for body in bodies(16, 99):
                    http.post("/api/generate", json=body)
            for clients in counts:
                name = f"{'batched' if batching else 'serialised'}_{clients}"
                forwards = httpx.get(url + "api/health").json()["batches"]
                results[name] = hammer(url, bodies(args.requests, clients), clients)
                forwards = httpx.get(url + "api/health").json()["batches"] - forwards
                results[name]["images_per_forward"] = round(args.requests / max(forwards, 1), 1)
                print(name, results[name], file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait()
    top = max(counts)
    ratio = results[f"batched_{top}"]["edits_per_s"] / results[f"serialised_{top}"]["edits_per_s"]
    summary = {"cases": results, f"throughput_ratio_at_{top}_clients": round(ratio, 2),
               "target_ratio": 4.0, "one_client_p50_ms": results.get("batched_1", {}).get("p50_ms"),
               "target_p50_ms": 100}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
