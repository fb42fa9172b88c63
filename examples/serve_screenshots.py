"""The README's screenshots of imgfeat serve, taken from the real app in headless Chromium on the
collection examples/serve_demo.py makes.

    python examples/serve_demo.py --workdir /tmp/fmnist-serve
    python examples/serve_screenshots.py --workdir /tmp/fmnist-serve --out docs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from test_serve_browser import launch_browser, wait_for

    from imgfeat.serve.app import ServeConfig
    from imgfeat.serve.collection import Collection
    from imgfeat.serve.server import Background

    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/fmnist-serve")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args()
    work, out = Path(args.workdir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    c = Collection(work / "features", labels=str(work / "labels.tsv"), map_coords=str(work / "map.coords.tsv"))
    with Background(c, ServeConfig(port=0)) as srv:
        d = launch_browser(1400, 860)
        try:
            d.get(srv.url + "?id=00042")
            wait_for(d, "document.querySelectorAll('#results .card img').length >= 20 && "
                        "[...document.querySelectorAll('#results .card img')].every(i => i.complete)")
            time.sleep(0.5)
            d.save_screenshot(str(out / "serve-search.png"))
            d.get(srv.url + "map")
            wait_for(d, "window.imgfeatMap && window.imgfeatMap.ready")
            d.find_element(By.ID, "mode-lasso").click()
            from selenium.webdriver.common.action_chains import ActionChains

            canvas = d.find_element(By.ID, "map-canvas")
            chain = ActionChains(d, duration=20).move_to_element_with_offset(canvas, -60, -60).click_and_hold()
            for x, y in ((40, -60), (40, 40), (-60, 40), (-60, -60)):
                chain.move_to_element_with_offset(canvas, x, y)
            chain.release().perform()
            wait_for(d, "document.querySelectorAll('#sel-items .card img').length > 0")
            time.sleep(1.0)
            d.save_screenshot(str(out / "serve-map.png"))
            d.get(srv.url + "duplicates")
            wait_for(d, "document.body.dataset.ready === '1'")
            slider = d.find_element(By.ID, "threshold")
            for _ in range(4):
                slider.send_keys(Keys.RIGHT)  # 0.95 -> 0.97
            wait_for(d, "document.querySelector('#status').textContent.includes('0.970')", timeout=120)
            time.sleep(1.0)
            d.save_screenshot(str(out / "serve-duplicates.png"))
        finally:
            d.quit()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
