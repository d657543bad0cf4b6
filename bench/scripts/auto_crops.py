"""Calibration and evaluation crops from disjoint scikit-image photos (BENCHMARKS.md, "Choices by measurement").

usage: python auto_crops.py SKIMAGE_DATA_DIR OUT_DIR N_CALIB N_EVAL
SKIMAGE_DATA_DIR: skimage/data of the scikit-image 0.26.0 wheel. Writes OUT_DIR/calib and OUT_DIR/eval.
"""
import os
import random
import sys

from PIL import Image

CALIB = ["astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
         "hubble_deep_field.jpg", "motorcycle_left.png", "rocket.jpg"]
EVAL = ["cell.png", "clock_motion.png", "gravel.png", "ihc.png", "moon.png", "page.png", "retina.jpg", "text.png",
        "color.png", "horse.png"]


def crops(src, photos, out, n, seed):
    """n seeded square crops (35-100 % of the shorter side), resized to 224x224, half of them flipped."""
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    images = [Image.open(os.path.join(src, p)).convert("RGB") for p in photos]
    for i in range(n):
        im = rng.choice(images)
        w, h = im.size
        side = rng.randint(max(1, min(w, h) * 35 // 100), min(w, h))
        x, y = rng.randint(0, w - side), rng.randint(0, h - side)
        c = im.crop((x, y, x + side, y + side)).resize((224, 224), Image.BILINEAR)
        if rng.random() < 0.5:
            c = c.transpose(Image.FLIP_LEFT_RIGHT)
        c.save(os.path.join(out, f"{i:05}.png"))


if __name__ == "__main__":
    src, out, n_calib, n_eval = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    crops(src, CALIB, os.path.join(out, "calib"), n_calib, 1)
    crops(src, EVAL, os.path.join(out, "eval"), n_eval, 2)
