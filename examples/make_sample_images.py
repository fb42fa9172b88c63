"""Write the small real photos in examples/images/ from scikit-image's sample data.

The repository ships the result; rerun only to regenerate (needs: pip install scikit-image).
"""

from pathlib import Path

from PIL import Image
from skimage import data

OUT = Path(__file__).parent / "images"
PHOTOS = {  # name -> (skimage loader, longest side)
    "chelsea.jpg": (data.chelsea, 320),        # a tabby cat
    "coffee.jpg": (data.coffee, 320),          # an espresso cup
    "astronaut.jpg": (data.astronaut, 320),
    "rocket.jpg": (data.rocket, 320),
    "motorcycle.jpg": (lambda: data.stereo_motorcycle()[0], 320),
    "camera.png": (data.camera, 256),          # greyscale (mode L)
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    lines = []
    for name, (load, side) in PHOTOS.items():
        img = Image.fromarray(load())
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
        kw = {"quality": 90} if name.endswith(".jpg") else {}
        img.save(OUT / name, **kw)
        lines.append(f"{Path(name).stem}\timages/{name}")
    (OUT.parent / "images.tsv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
