"""GANPaint in a real browser: the page and the rating page, driven by Selenium in headless Chromium against the real
``gandissect paint`` server (a subprocess; one paint server and one browser for the whole module).

Strokes are painted with real mouse input (ActionChains), so the page's pointer handling, its per-stroke masks and
the stack it sends are what is tested; the server's answers are checked against the API itself. The scene to paint on
is found by the test through the API (seed with the largest solid tree region), not hard-coded.

Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian's chromium and chromium-driver); nothing is downloaded.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[1]
# the screenshots go to a temporary folder; GANDISSECT_SCREENSHOTS=docs redraws the README's pair
SHOTS = os.environ.get("GANDISSECT_SCREENSHOTS")
GENERATOR = "checkpoints/scene_gan_generator.safetensors"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason=f"the real-browser tests need {CHROMIUM} and {CHROMEDRIVER} (apt install chromium chromium-driver)")

webdriver = pytest.importorskip("selenium.webdriver", reason="the real-browser tests need selenium")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.actions import interaction  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.actions.pointer_input import PointerInput  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

IMAGE_SIZE = 64          # the generator's resolution (the segmentation's too)
SEARCH_SEEDS = range(0, 201)
WAIT_S = 30              # longest wait for one answer of the page (a loaded CI machine is slow)

# a repaired generator for the rating page: units 6..10 of layer4 folded to zero; random alternative: units 1..5
MAKE_REPAIRED = (
    "import sys\n"
    "from gandissect.core.hooks import fold_ablation\n"
    "from gandissect.models.progan import ProGANGenerator, load_generator\n"
    "ProGANGenerator.save(fold_ablation(load_generator(sys.argv[1]), 'layer4', [6, 7, 8, 9, 10]), sys.argv[2])\n"
)


# ----- the server -------------------------------------------------------------------------------------------------

def gandissect_command() -> list[str]:
    """``python -m gandissect.cli`` (the module runs main()), else the venv's console script."""
    spec = importlib.util.find_spec("gandissect.cli")
    if spec and spec.origin and 'if __name__ == "__main__":' in Path(spec.origin).read_text():
        return [sys.executable, "-m", "gandissect.cli"]
    return [str(Path(sys.executable).parent / "gandissect")]


class Server:
    """``gandissect paint --port 0 ...`` as a subprocess; ``wait()`` reads the JSON it announces on stdout."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        with log.open("w") as stderr:
            self.process = subprocess.Popen([*gandissect_command(), "paint", "--port", "0", *args], cwd=REPO,
                                            stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.announced: dict | None = None

    def _read(self) -> None:
        for line in self.process.stdout:  # drained to the end, so the pipe never fills
            self.lines.put(line)
        self.lines.put(None)

    def wait(self, timeout: float = 180) -> dict:
        """The announcement ``{"url", "rate"}`` (possibly printed over several lines)."""
        text, deadline = "", time.monotonic() + timeout
        while self.announced is None:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"the paint server announced no URL within {timeout:.0f} s; stderr:\n{self.stderr()}")
            if line is None:
                pytest.fail(f"the paint server exited ({self.process.wait()}) before announcing its URL; "
                            f"stderr:\n{self.stderr()}")
            text += line
            try:
                announced = json.loads(text)
            except json.JSONDecodeError:
                continue
            self._until_listening(announced["url"], deadline)
            self.announced = announced
        return self.announced

    def _until_listening(self, url: str, deadline: float) -> None:
        """The URL is announced once the port is bound; wait until requests are answered there too."""
        while True:
            try:
                with urllib.request.urlopen(url + "api/health", timeout=10):
                    return
            except (urllib.error.URLError, ConnectionError) as err:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the paint server at {url} does not answer ({err}); stderr:\n{self.stderr()}")
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return self.wait()["url"]

    def stderr(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as err:
        pytest.fail(f"{path} answered {err.code}: {err.read()[:500]!r}")


def pixels(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,"), data_url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The paint server (shipped concepts) now; the rating server starts in the background once its repair run is
    made, so it is up by the time the rating test runs."""
    tmp = tmp_path_factory.mktemp("paint_browser")
    run = tmp / "repair_run"
    run.mkdir()
    (run / "repair.json").write_text(json.dumps({
        "settings": {"generator": GENERATOR, "layer": "layer4"}, "random_units": [[1, 2, 3, 4, 5]],
        "checkpoint": {"path": "repaired_generator.safetensors"}}))
    repaired = run / "repaired_generator.safetensors"
    maker = subprocess.Popen([sys.executable, "-c", MAKE_REPAIRED, GENERATOR, str(repaired)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    paint = Server([], tmp / "paint.log")
    started = {"paint": paint, "run": run}
    try:
        paint.wait()
        _, err = maker.communicate(timeout=180)
        assert maker.returncode == 0, f"making the repaired generator failed:\n{err[-3000:]}"
        started["rate"] = Server(["--rate", str(run)], tmp / "rate.log")
        yield started
    finally:
        if maker.poll() is None:
            maker.kill()
        for server in ("paint", "rate"):
            if server in started:
                started[server].stop()


@pytest.fixture(scope="module")
def base(servers) -> str:
    return servers["paint"].url


@pytest.fixture(scope="module")
def concepts(base) -> list[dict]:
    found = api(base, "api/concepts")
    assert {c["name"] for c in found} >= {"tree"}, found
    return found


# ----- the browser ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def body_data(driver, key: str) -> str | None:
    return driver.execute_script(f"return document.body.dataset[{key!r}] ?? null")


def wait_shown(driver, seed: int, strokes: int) -> None:
    """Until the page shows ``seed`` with ``strokes`` strokes applied and no request is in flight."""
    def shown(d):
        state = d.execute_script("const b = document.body.dataset; return [b.busy, b.seed, b.strokes, b.error];")
        if state[3] == "1":
            raise AssertionError(f"the page reports an error: {d.find_element(By.ID, 'status').text}")
        return state[:3] == ["0", str(seed), str(strokes)]
    WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(shown)


def open_page(driver, base: str, seed: int) -> None:
    """Load the page and type ``seed`` into #seed (Enter)."""
    driver.get(base)
    WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(
        lambda d: body_data(d, "busy") == "0" and d.find_elements(By.CSS_SELECTOR, "#concepts [data-concept]"))
    box = driver.find_element(By.ID, "seed")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(seed), Keys.ENTER)
    wait_shown(driver, seed, 0)


def choose(driver, concept: str, action: str, strength: str, fine: bool = False) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#concepts [data-concept="{concept}"]').click()
    driver.find_element(By.ID, f"action-{action}").click()
    driver.find_element(By.ID, f"strength-{strength}").click()
    box = driver.find_element(By.ID, "fine")
    if box.is_selected() != fine:
        box.click()
    for selected in (f'#concepts [data-concept="{concept}"]', f"#action-{action}", f"#strength-{strength}"):
        assert driver.find_element(By.CSS_SELECTOR, selected).get_attribute("aria-pressed") == "true", selected


def paint(driver, path: list[tuple[float, float]], touch: bool = False) -> None:
    """A stroke along ``path``, in image pixels (0..64) of the scene under #canvas, with the real mouse (or a finger):
    press, moves, release."""
    canvas = driver.find_element(By.ID, "canvas")
    size = canvas.size
    scale_x, scale_y = size["width"] / IMAGE_SIZE, size["height"] / IMAGE_SIZE
    points = [(round(x * scale_x), round(y * scale_y)) for x, y in path]
    start = (points[0][0] - size["width"] // 2, points[0][1] - size["height"] // 2)  # offsets from the centre
    moves = [(x1 - x0, y1 - y0) for (x0, y0), (x1, y1) in zip(points, points[1:])]
    if touch:
        actions = ActionBuilder(driver, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"), duration=40)
        actions.pointer_action.move_to(canvas, *start).pointer_down()
        for dx, dy in moves:
            actions.pointer_action.move_by(dx, dy)
        actions.pointer_action.pointer_up()
        actions.perform()
        return
    actions = ActionChains(driver, duration=40)
    actions.move_to_element_with_offset(canvas, *start).click_and_hold()
    for dx, dy in moves:
        actions.move_by_offset(dx, dy)
    actions.release()
    actions.move_to_element(driver.find_element(By.ID, "status"))  # the brush cursor off the scene
    actions.perform()


def src(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).get_attribute("src")


def shares(driver) -> tuple[float, float, str]:
    status = driver.find_element(By.ID, "status")
    before, after = status.get_attribute("data-before"), status.get_attribute("data-after")
    assert before is not None and after is not None, f"no shares in #status: {status.text!r}"
    return float(before), float(after), status.text


def assert_status(text: str, concept: str, before: float, after: float) -> None:
    """#status reads "<concept>: 38% -> 4% in the painted area", with the shares it holds in data-before/-after."""
    found = re.match(r"(\w+): (\d+)% -> (\d+)% in the painted area", text)
    assert found, text
    assert found[1] == concept, text
    assert abs(int(found[2]) - 100 * before) <= 0.5001 and abs(int(found[3]) - 100 * after) <= 0.5001, text


def screenshot(driver, path: Path) -> None:
    """The palette, the scene and the original (not the empty page around them), as a small PNG."""
    driver.execute_script("document.activeElement && document.activeElement.blur()")
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    rects = [driver.find_element(By.ID, name).rect for name in ("palette", "work", "side")]
    left = min(r["x"] for r in rects) - 8
    top = min(r["y"] for r in rects) - 8
    right = max(r["x"] + r["width"] for r in rects) + 8
    bottom = max(r["y"] + r["height"] for r in rects) + 8
    shot = shot.crop((max(0, int(left)), max(0, int(top)), min(shot.width, int(right)), min(shot.height, int(bottom))))
    path.parent.mkdir(parents=True, exist_ok=True)
    shot.save(path, optimize=True)
    if path.stat().st_size > 300_000:
        shot.quantize(256).save(path, optimize=True)


# ----- the scenes the tests paint on --------------------------------------------------------------------------------

BRUSH_RADIUS = 3.5  # the page's default brush: 56 of 512 px, 7 image pixels wide


COLOUR_SEEDS = list(range(16))


@functools.lru_cache(maxsize=None)
def concept_colour(base: str, concept: str) -> tuple[int, int, int]:
    """The colour of ``concept`` in the segmentation images the server returns. Its palette is not assumed: it is the
    colour whose pixel count equals, in every one of a few seeds, the concept's share that the server reports for a
    stroke over the whole image."""
    answer = api(base, "api/generate", {"seeds": COLOUR_SEEDS, "segmentation": True, "interventions": [
        {"concept": concept, "action": "remove", "strength": "low", "mask": [[1]]}]})
    candidates = None
    for result in answer["results"]:
        image = pixels(result["original_segmentation"])
        count = round(result["shares"][0]["before"] * image.shape[0] * image.shape[1])
        if count:
            colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
            here = {tuple(int(v) for v in colours[i]) for i in np.flatnonzero(counts == count)}
            candidates = here if candidates is None else candidates & here
    assert candidates and len(candidates) == 1, f"cannot tell the colour of {concept} in the segmentation: {candidates}"
    return candidates.pop()


def concept_masks(base: str, seeds: list[int], concept: str) -> dict[int, np.ndarray]:
    """Per seed, the pixels of the original that the segmenter labels ``concept``, read off the segmentation image
    the server returns."""
    colour = np.array(concept_colour(base, concept))
    answer = api(base, "api/generate", {"seeds": seeds, "segmentation": True})
    return {r["seed"]: (pixels(r["original_segmentation"]) == colour).all(-1) for r in answer["results"]}


def largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of ``mask``."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    return labels == 1 + int(np.argmax(ndimage.sum(mask, labels, range(1, n + 1))))


def serpentine(region: np.ndarray, radius: float = BRUSH_RADIUS) -> list[tuple[float, float]]:
    """A back-and-forth stroke covering ``region`` row band by row band with a brush of ``radius`` (image pixels):
    the way one paints over a tree."""
    ys, xs = np.nonzero(region)
    path, y, forth = [], ys.min() + 0.8 * radius, True
    while True:
        band = region[int(max(0, y - radius)):int(y + radius) + 1].any(0).nonzero()[0]
        x0, x1 = band.min() + 0.8 * radius, band.max() + 1 - 0.8 * radius
        if x1 < x0:
            x0 = x1 = (band.min() + band.max() + 1) / 2
        path += [(x0, y), (x1, y)] if forth else [(x1, y), (x0, y)]
        if y >= ys.max() + 1 - 0.8 * radius:
            return path
        y, forth = min(y + 1.4 * radius, ys.max() + 1 - 0.8 * radius), not forth


def square(top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    mask[top:top + side, left:left + side] = True
    return mask


@pytest.fixture(scope="module")
def tree_scene(base, concepts) -> dict:
    """The seed in 0..200 whose original has the largest connected tree region, and a stroke over that region."""
    best = None
    seeds = list(SEARCH_SEEDS)
    for start in range(0, len(seeds), 16):
        for seed, mask in concept_masks(base, seeds[start:start + 16], "tree").items():
            blob = largest_blob(mask)
            if best is None or blob.sum() > best["pixels"]:
                best = {"seed": seed, "pixels": int(blob.sum()), "blob": blob}
    assert best["pixels"] >= 150, f"no seed in {SEARCH_SEEDS} has a tree region of 150 pixels: {best['pixels']}"
    best["path"] = serpentine(best.pop("blob"))
    best["original"] = api(base, "api/generate", {"seed": best["seed"]})["original"]
    return best


# ----- the tests --------------------------------------------------------------------------------------------------

def test_paint_remove_trees(browser, base, tree_scene, tmp_path):
    seed = tree_scene["seed"]
    open_page(browser, base, seed)
    assert src(browser, "image") == tree_scene["original"] == src(browser, "original")
    image = browser.find_element(By.ID, "image")
    assert min(image.size["width"], image.size["height"]) >= 512, image.size
    shots = Path(SHOTS) if SHOTS else tmp_path
    screenshot(browser, shots / "paint_before.png")

    choose(browser, "tree", "remove", "high")
    paint(browser, tree_scene["path"])
    wait_shown(browser, seed, 1)
    before, after, text = shares(browser)
    where = {key: tree_scene[key] for key in ("seed", "pixels")}
    assert before >= 0.4, (text, where)  # the stroke lies mostly on trees
    assert after < before - 0.2, (text, where)
    assert_status(text, "tree", before, after)
    assert src(browser, "image") != tree_scene["original"]
    assert src(browser, "original") == tree_scene["original"]
    assert browser.find_element(By.ID, "download").get_attribute("href") == src(browser, "image")
    screenshot(browser, shots / "paint_after.png")

    browser.find_element(By.ID, "undo").click()
    wait_shown(browser, seed, 0)
    assert src(browser, "image") == tree_scene["original"]


def test_undo_redo_reset_overlay_and_fine(browser, base, concepts, tree_scene):
    seed = tree_scene["seed"]
    open_page(browser, base, seed)
    undo, redo, reset = (browser.find_element(By.ID, name) for name in ("undo", "redo", "reset"))
    assert not undo.is_enabled() and not redo.is_enabled() and not reset.is_enabled()

    choose(browser, "tree", "remove", "high")
    paint(browser, tree_scene["path"])
    wait_shown(browser, seed, 1)
    one = src(browser, "image")
    choose(browser, "tree", "draw", "high")
    paint(browser, [(8, 8), (20, 10), (30, 8)])
    wait_shown(browser, seed, 2)
    two = src(browser, "image")
    assert len({tree_scene["original"], one, two}) == 3
    assert "tree" in browser.find_element(By.ID, "status").text

    undo.click()
    wait_shown(browser, seed, 1)
    assert src(browser, "image") == one and redo.is_enabled()
    redo.click()
    wait_shown(browser, seed, 2)
    assert src(browser, "image") == two and not redo.is_enabled()
    undo.click()
    undo.click()
    wait_shown(browser, seed, 0)
    assert src(browser, "image") == tree_scene["original"] and not undo.is_enabled()
    redo.click()
    wait_shown(browser, seed, 1)
    assert src(browser, "image") == one
    reset.click()
    wait_shown(browser, seed, 0)
    assert src(browser, "image") == tree_scene["original"]
    assert not undo.is_enabled() and not redo.is_enabled() and not reset.is_enabled()

    # a new stroke after an undo drops what could be redone; a finger paints like the mouse
    paint(browser, [(8, 8), (20, 10)])
    wait_shown(browser, seed, 1)
    undo.click()
    wait_shown(browser, seed, 0)
    paint(browser, [(40, 8), (50, 10)], touch=True)
    wait_shown(browser, seed, 1)
    assert not redo.is_enabled()
    assert src(browser, "image") != tree_scene["original"]

    overlay = browser.find_element(By.ID, "overlay")
    segmentation = browser.find_element(By.ID, "segmentation")
    assert not segmentation.is_displayed()
    overlay.click()
    assert segmentation.is_displayed()
    shown = pixels(segmentation.get_attribute("src"))
    assert shown.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert segmentation.size == browser.find_element(By.ID, "image").size
    assert float(segmentation.value_of_css_property("opacity")) < 1
    overlay.click()
    assert not segmentation.is_displayed()

    # fine strokes: the same concept at the finer layer
    fine = [c for c in concepts if c["name"] == "tree" and not c["default"]]
    assert fine, "the shipped concepts have no finer layer for tree"
    fine = max(fine, key=lambda c: c["resolution"][0] * c["resolution"][1])
    assert browser.find_element(By.ID, "fine-label").text == "fine strokes ({0}x{1})".format(*fine["resolution"])
    coarse = src(browser, "image")
    choose(browser, "tree", "remove", "high", fine=True)
    paint(browser, tree_scene["path"])
    wait_shown(browser, seed, 2)
    assert src(browser, "image") != coarse
    text = browser.find_element(By.ID, "status").text
    assert f"({fine['strengths']['high']} units at {fine['layer']})" in text, text


# Drawing: trees into a meadow, chosen by hand with the API (the page's default brush painting a square of 16x16
# pixels, strength high): on seed 15 the tree share there rises from 0 to about 0.66 (at least 0.5 for the square
# shifted by up to 2 pixels, or 14 pixels wide); seeds 30, 64, 67 and 79 behave alike. Cloud into sky and most other
# grass squares rise far less (often under 0.3): where a tree can grow matters to the generator.
DRAW, INTO = "tree", "grass"
DRAW_SCENE = {"seed": 15, "top": 38, "left": 47, "side": 16}


def test_paint_draw_into_empty_region(browser, base, concepts):
    seed, box = DRAW_SCENE["seed"], square(DRAW_SCENE["top"], DRAW_SCENE["left"], DRAW_SCENE["side"])
    into, drawn = concept_masks(base, [seed], INTO)[seed], concept_masks(base, [seed], DRAW)[seed]
    assert into[box].all() and not drawn[box].any(), f"seed {seed}: the square is no longer all {INTO}"
    open_page(browser, base, seed)
    choose(browser, DRAW, "draw", "high")
    paint(browser, serpentine(box))
    wait_shown(browser, seed, 1)
    before, after, text = shares(browser)
    assert before <= 0.05, text  # no DRAW there yet (the brush's round ends may touch a neighbour)
    assert after >= before + 0.3, text
    assert_status(text, DRAW, before, after)


def test_rating_page(browser, servers):
    rate = servers["rate"].wait()
    assert rate["rate"] == rate["url"] + "rate"
    browser.get(rate["rate"])
    WebDriverWait(browser, WAIT_S, poll_frequency=0.05).until(lambda d: body_data(d, "busy") == "0")
    left, right = browser.find_element(By.ID, "left"), browser.find_element(By.ID, "right")
    assert "more realistic" in browser.find_element(By.TAG_NAME, "h1").text
    for image in (left, right):
        assert min(image.size["width"], image.size["height"]) >= 256
        assert pixels(image.get_attribute("src")).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert browser.find_element(By.ID, "count").text == "0"
    shown = set()
    for n in range(1, 4):
        shown.add(left.get_attribute("src"))
        left.click()
        WebDriverWait(browser, WAIT_S, poll_frequency=0.05).until(
            lambda d: d.find_element(By.ID, "count").text == str(n) and body_data(d, "busy") == "0")
    assert len(shown) == 3  # a new pair after each answer
    assert "error" not in browser.find_element(By.ID, "status").text

    lines = (servers["run"] / "ratings.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["choice"] == "left" for line in lines)
    done = subprocess.run([*gandissect_command(), "rate", "summary", str(servers["run"])], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["over_original"]["answers"] + summary["over_random"]["answers"] == 3
    wins = sum(json.loads(line)["preferred_repaired"] for line in lines)
    assert summary["over_original"]["preferred_repaired"] + summary["over_random"]["preferred_repaired"] == wins
