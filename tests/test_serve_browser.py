"""imgfeat serve in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
search by click and by upload, a map whose WebGL canvas provably has points drawn on it, a lasso
selection, and the duplicates slider. Screenshots go to ``test-artifacts/serve/``.

Skipped when no Chromium is installed, unless IMGFEAT_REQUIRE_BROWSER=1 (set by .ci/run), where a
missing browser fails instead."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

from helpers import PATIENCE, wait_until  # noqa: E402
from test_serve_api import make_collection  # noqa: E402

from imgfeat.serve.app import ServeConfig  # noqa: E402
from imgfeat.serve.collection import Collection  # noqa: E402
from imgfeat.serve.server import Background  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "serve"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
# Recent headless Chromium does not fall back to software WebGL by itself.
WEBGL_FLAGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]

if not (CHROMIUM and DRIVER):
    if os.environ.get("IMGFEAT_REQUIRE_BROWSER") == "1":
        raise RuntimeError("browser tests required but chromium/chromedriver are missing "
                           "(apt-get install chromium chromium-driver)")
    pytest.skip("no chromium + chromedriver here (Debian: apt-get install chromium chromium-driver)",
                allow_module_level=True)

pytestmark = pytest.mark.slow


def launch_browser(width: int = 1400, height: int = 900):
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                 "--disable-extensions", *WEBGL_FLAGS]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(PATIENCE)
    driver.set_script_timeout(PATIENCE)
    return driver


def wait_for(driver, script: str, timeout: float = PATIENCE):
    """Poll a JS expression until it is truthy (bounded by the tests' patience, never the claim)."""
    return wait_until(lambda: driver.execute_script("return " + script), f"waiting for: {script}", timeout, 0.1)


def shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    data = make_collection(root)
    collection = Collection(data["store"], labels=str(data["labels"]), cache=root / "serve-cache")
    with Background(collection, ServeConfig(port=0)) as srv:
        driver = launch_browser()
        try:
            yield {**data, "url": srv.url, "collection": collection, "driver": driver}
        finally:
            driver.quit()


def test_search_page_click_and_upload(site):
    from selenium.webdriver.common.by import By

    d, c = site["driver"], site["collection"]
    d.get(site["url"])
    wait_for(d, "document.body.dataset.ready === '1'")
    cards = d.find_elements(By.CSS_SELECTOR, "#browse .card")
    assert len(cards) == 20  # the whole (small) collection is shown to browse
    target = next(e for e in cards if e.get_attribute("data-id") == "chelsea")
    target.click()
    wait_for(d, "document.querySelectorAll('#results .card').length === 19")  # k=20, itself left out
    ids = [e.get_attribute("data-id") for e in d.find_elements(By.CSS_SELECTOR, "#results .card")]
    want = [h.row for h in c.search(c.vector(c.row_of["chelsea"]), 19, exclude=c.row_of["chelsea"])]
    assert ids == [c.ids[r] for r in want] and ids[0] == "chelsea-copy"
    # thumbnails really loaded (naturalWidth > 0) for the images that exist
    wait_for(d, "[...document.querySelectorAll('#results .card img')].filter(i => i.complete && i.naturalWidth > 0)"
                ".length >= 15")
    shot(d, "search-neighbours")

    d.find_element(By.ID, "q-file").send_keys(str(site["images"] / "coffee.jpg"))
    wait_for(d, "document.querySelector('#status').textContent.includes('results') && "
                "document.querySelector('#results .card') && "
                "document.querySelector('#results .card').dataset.id === 'coffee'")
    score = float(d.find_element(By.CSS_SELECTOR, "#results .card .score").text)
    assert score > 0.999
    shot(d, "search-upload")


def test_search_page_shows_errors_and_hides_text_box(site):
    from selenium.webdriver.common.by import By

    d = site["driver"]
    d.get(site["url"])
    wait_for(d, "document.body.dataset.ready === '1'")
    assert not d.find_element(By.ID, "q-text").is_displayed()  # the model has no text tower
    box = d.find_element(By.ID, "q-id")
    box.clear()
    box.send_keys("no-such-id\n")
    wait_for(d, "document.querySelector('#status').classList.contains('error')")
    assert "no such id" in d.find_element(By.ID, "status").text


def _canvas_pixels(driver) -> np.ndarray:
    from selenium.webdriver.common.by import By

    rect = driver.find_element(By.ID, "map-canvas").rect
    ratio = driver.execute_script("return window.devicePixelRatio") or 1
    page = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(int)
    x0, y0 = int(rect["x"] * ratio) + 2, int(rect["y"] * ratio) + 2
    x1, y1 = int((rect["x"] + rect["width"]) * ratio) - 2, int((rect["y"] + rect["height"]) * ratio) - 2
    return page[y0:y1, x0:x1]


@pytest.mark.timing
def test_map_draws_points_and_lasso_selects(site):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    d = site["driver"]
    d.get(site["url"] + "map")
    wait_for(d, "window.imgfeatMap && (window.imgfeatMap.ready || window.imgfeatMap.error)")
    assert d.execute_script("return window.imgfeatMap.error || null") is None
    assert d.execute_script("return window.imgfeatMap.points") == 20
    background = np.array([255, 255, 255])

    def drawn_pixels():  # the first frame may come a little after ready: look again until it is there (bounded)
        px = _canvas_pixels(d)
        drawn = np.abs(px - background).sum(axis=2) > 60
        return (px, drawn) if drawn.sum() > 20 * 10 else None

    try:
        px, drawn = wait_until(drawn_pixels, "points drawn on the WebGL canvas", patience=min(PATIENCE, 60))
    except AssertionError:
        raise AssertionError("the WebGL canvas is blank: no points were drawn") from None
    shot(d, "map")
    # both label colours appear (noise: blue #1f77b4, photo: orange #ff7f0e, blended with some opacity)
    r, b = px[..., 0], px[..., 2]
    assert ((b - r > 80) & drawn).sum() > 5 * 13 and ((r - b > 80) & drawn).sum() > 5 * 7
    shot(d, "map")

    # hovering a point shows its thumbnail
    canvas = d.find_element(By.ID, "map-canvas")
    w, h = canvas.size["width"], canvas.size["height"]
    x, y = d.execute_script("return window.imgfeatMap.scatterplot.getScreenPosition(0)")
    ActionChains(d).move_to_element_with_offset(canvas, int(x - w / 2), int(y - h / 2)).perform()
    wait_for(d, "document.querySelector('#tooltip').style.display === 'block' && "
                "document.querySelector('#tooltip img').complete && "
                "document.querySelector('#tooltip img').naturalWidth > 0")
    rows = np.frombuffer(__import__("requests").get(site["url"] + "api/map/rows.i32", timeout=PATIENCE).content, "<i4")
    assert d.find_element(By.CSS_SELECTOR, "#tooltip div").text.startswith(site["collection"].ids[rows[0]])
    shot(d, "map-hover")

    d.find_element(By.ID, "mode-lasso").click()
    chain = ActionChains(d, duration=20).move_to_element_with_offset(canvas, -w // 2 + 5, -h // 2 + 5).click_and_hold()
    for x, y in ((w - 10, 0), (w - 10, h - 10), (0, h - 10), (0, 0)):
        chain.move_to_element_with_offset(canvas, -w // 2 + 5 + x, -h // 2 + 5 + y)
    chain.release().perform()
    count = wait_for(d, "document.querySelector('#sel-count').textContent.match(/^(\\d+) selected/)")
    assert int(count[1]) == 20
    wait_for(d, "document.querySelectorAll('#sel-items .card').length === 20")
    assert d.find_element(By.ID, "sel-download").is_displayed()
    shot(d, "map-selection")


def test_duplicates_slider(site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = site["driver"]
    d.get(site["url"] + "duplicates")
    wait_for(d, "document.body.dataset.ready === '1'")
    status = d.find_element(By.ID, "status").text
    assert "groups at cosine ≥ 0.950" in status
    slider = d.find_element(By.ID, "threshold")
    slider.send_keys(Keys.END)  # to 1.000: keyboard moves fire input and change like a drag
    wait_for(d, "document.querySelector('#status').textContent.includes('cosine ≥ 1.000')")
    slider.send_keys(Keys.HOME)  # to 0.500
    wait_for(d, "document.querySelector('#status').textContent.includes('cosine ≥ 0.500')")
    groups = d.find_elements(By.CSS_SELECTOR, "#groups .group")
    want = site["collection"].duplicate_groups(0.5)
    assert len(groups) == len(want) and len(want) >= 1
    first = {e.get_attribute("data-id") for e in groups[0].find_elements(By.CSS_SELECTOR, ".card")}
    assert first == {site["collection"].ids[r] for r in want[0]}
    href = d.find_element(By.ID, "download").get_attribute("href")
    assert href.endswith("/api/duplicates.tsv?threshold=0.500")
    shot(d, "duplicates")


def test_text_box_on_a_tiny_clip_store(tmp_path):
    pytest.importorskip("open_clip")
    from selenium.webdriver.common.by import By
    from test_clip import MODEL, make_tiny_clip

    from imgfeat.api import extract

    tiny = make_tiny_clip(tmp_path)
    store = tmp_path / "store"
    extract(str(tiny["images"]), str(store), model=MODEL, weights=tiny["weights"], l2=True, workers=0, quiet=True)
    c = Collection(store, cache=tmp_path / "serve-cache")
    with Background(c, ServeConfig(port=0, weights=tiny["weights"])) as srv:
        want = __import__("requests").get(srv.url + "api/search/text", params={"q": "a cup of coffee", "k": 10},
                                          timeout=PATIENCE).json()["results"]
        d = launch_browser()
        try:
            d.get(srv.url)
            wait_for(d, "document.body.dataset.ready === '1'")
            box = d.find_element(By.ID, "q-text")
            assert box.is_displayed()
            box.send_keys("a cup of coffee\n")
            wait_for(d, "document.querySelectorAll('#results .card').length === 12")  # k=20: all 12 images
            ids = [e.get_attribute("data-id") for e in d.find_elements(By.CSS_SELECTOR, "#results .card")]
            assert ids[:10] == [r["id"] for r in want]
            assert "a cup of coffee" in d.find_element(By.ID, "query").text
            shot(d, "search-text")
        finally:
            d.quit()


def test_an_image_added_to_the_store_appears_without_a_restart(tmp_path, photos):
    """The store follows its folder (issue 20): the running server shows the new image on the next page load."""
    from selenium.webdriver.common.by import By

    from imgfeat.api import extract

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted(photos.glob("*.jpg"))[:3]:
        shutil.copy(p, folder / p.name)
    store = tmp_path / "store"
    kw = dict(model="squeezenet1_1", backend="torch", workers=0, quiet=True, shard_size=2)
    extract(str(folder), str(store), **kw)
    with Background(Collection(store, cache=tmp_path / "serve-cache"), ServeConfig(port=0)) as srv:
        d = launch_browser()
        try:
            d.get(srv.url)
            wait_for(d, "document.body.dataset.ready === '1'")
            assert len(d.find_elements(By.CSS_SELECTOR, "#browse .card")) == 3
            shutil.copy(sorted(photos.glob("*.jpg"))[3], folder / "added.jpg")
            extract(str(folder), str(store), **kw)
            d.get(srv.url)
            wait_for(d, "document.body.dataset.ready === '1'")
            ids = {e.get_attribute("data-id") for e in d.find_elements(By.CSS_SELECTOR, "#browse .card")}
            assert "added.jpg" in ids and len(ids) == 4
            wait_for(d, "[...document.querySelectorAll('#browse .card img')].some(i => i.closest('.card').dataset.id"
                        " === 'added.jpg' && i.complete && i.naturalWidth > 0)")
        finally:
            d.quit()


def test_audit_review_page_by_keyboard(tmp_path):
    """Issue 22: the review page lists the suspects; 'r' relabels the current one to the suggestion, 'd' drops
    the next; the decisions download as the TSV probe/diffuse/audit take back."""
    pytest.importorskip("cleanlab")
    import requests
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from test_audit import make_review

    review = make_review(tmp_path)
    collection = Collection(review["store"], cache=tmp_path / "serve-cache")
    with Background(collection, ServeConfig(port=0, audit=str(review["report"]))) as srv:
        d = launch_browser()
        try:
            d.get(srv.url + "audit")
            wait_for(d, "document.body.dataset.ready === '1'")
            suspects = d.find_elements(By.CSS_SELECTOR, ".suspect")
            assert len(suspects) >= 16
            first, second = suspects[0].get_attribute("data-id"), suspects[1].get_attribute("data-id")
            body = d.find_element(By.TAG_NAME, "body")
            body.send_keys("r")
            wait_for(d, "document.body.dataset.decided === '1'")
            body.send_keys("d")
            wait_for(d, "document.body.dataset.decided === '2'")
            assert "relabel →" in d.find_elements(By.CSS_SELECTOR, ".suspect .decision")[0].text
            body.send_keys(Keys.ARROW_UP)
            shot(d, "audit")
            # issue 29: every image is listed (flagged first), each shows its whole id, and more pages load
            assert d.execute_script("return document.querySelectorAll('.suspect.flagged').length > 0 && "
                                    "document.querySelectorAll('.suspect.unflagged').length > 0")
            assert d.execute_script("return document.querySelector('.suspect .full-id').textContent") == first
            d.find_element(By.ID, "more").click()
            wait_for(d, "document.querySelectorAll('.suspect').length === 325")
            # the outlier tab has no suggestion: 'l' picks any known label
            d.find_element(By.CSS_SELECTOR, "#tabs button[data-issue='outlier']").click()
            wait_for(d, "document.body.dataset.issue === 'outlier'")
            outlier = d.execute_script("return document.querySelector('.suspect').dataset.id")
            body.send_keys("r")
            wait_for(d, "document.querySelector('#status').classList.contains('error')")
            body.send_keys("l")
            field = d.find_element(By.ID, "label")
            field.send_keys("c3", Keys.ENTER)
            wait_for(d, "document.body.dataset.decided === '3'")
            tsv = requests.get(srv.url + "api/audit/decisions.tsv", timeout=PATIENCE).text
        finally:
            d.quit()
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in tsv.splitlines()[1:]}
    assert rows[first][0] == "relabel" and rows[first][1] and rows[second] == ["drop", ""]
    assert rows[outlier] == ["relabel", "c3"]


@pytest.mark.parametrize("shape", ["wide", "tall"])
def test_every_point_of_the_map_is_inside_the_canvas(site, tmp_path, shape):
    """Issue 29.11: a map wider (or taller) than the canvas is fitted to it, in a narrow window and a wide one; no
    point is drawn outside (regl-scatterplot shows y in [-1, 1] and x in [-w/h, w/h])."""
    c0 = site["collection"]
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(c0.n, 2)) * ([5, 1] if shape == "wide" else [1, 5])
    coords = tmp_path / "coords.tsv"
    coords.write_text("".join(f"{i}\t{x}\t{y}\n" for i, (x, y) in zip(c0.ids, pts)))
    c = Collection(site["store"], cache=tmp_path / "cache", map_coords=str(coords))
    with Background(c, ServeConfig(port=0)) as srv:
        for width, height in ((700, 1000), (1400, 700)):
            d = launch_browser(width, height)
            try:
                d.get(srv.url + "map")
                wait_for(d, "window.imgfeatMap && (window.imgfeatMap.ready || window.imgfeatMap.error)")
                n = d.execute_script("return window.imgfeatMap.points")
                pos = np.array(d.execute_script(
                    f"return [...Array({n}).keys()].map(i => window.imgfeatMap.scatterplot.getScreenPosition(i))"))
                w, h = d.execute_script("const r = document.querySelector('#map-canvas').getBoundingClientRect();"
                                        " return [r.width, r.height]")
                assert pos.shape == (20, 2)
                assert (pos[:, 0] >= 0).all() and (pos[:, 0] <= w).all(), (shape, width, pos[:, 0].min(), w)
                assert (pos[:, 1] >= 0).all() and (pos[:, 1] <= h).all(), (shape, width, pos[:, 1].min(), h)
                # and the map uses the canvas: its long side spans most of the matching side of the canvas
                span = (np.ptp(pos[:, 0]) / w) if shape == "wide" else (np.ptp(pos[:, 1]) / h)
                assert span > 0.8 or max(np.ptp(pos[:, 0]) / w, np.ptp(pos[:, 1]) / h) > 0.8
                shot(d, f"map-{shape}-{width}x{height}")
            finally:
                d.quit()
