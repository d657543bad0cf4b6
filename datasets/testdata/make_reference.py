"""Generates the preprocessing reference for datasets' tests. Run once; outputs are committed.

    python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install numpy pillow
    /tmp/pyref/bin/python datasets/testdata/make_reference.py

The reference chain is torchvision's, which on PIL images is PIL itself:
Resize(int) -> PIL Image.resize to (int(s * long / short), s); CenterCrop -> Image.crop at
int(round((size - crop) / 2)); ToTensor -> x / 255 in float32; Normalize -> (x - mean) / std in float32.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent
rng = np.random.default_rng(1234)


def synthetic(h, w, c, gen=rng):
    """Gradients, a disc, stripes and noise: edges and texture so that filter differences show."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = [
        255 * x / max(w - 1, 1),
        255 * y / max(h - 1, 1),
        127 + 127 * np.sin(x / 5.0) * np.cos(y / 7.0),
        255 * (((x // 9) + (y // 9)) % 2),
    ]
    disc = ((x - w / 2) ** 2 + (y - h / 3) ** 2) < (min(h, w) / 4) ** 2
    chans = []
    for i in range(c):
        v = base[i % 4] * 0.7 + 60 * disc + gen.normal(0, 12, (h, w))
        chans.append(v)
    return np.clip(np.stack(chans, -1), 0, 255).round().astype(np.uint8)


def write_sources():
    Image.fromarray(synthetic(250, 300, 3)).save(HERE / "rgb_300x250.png")
    Image.fromarray(synthetic(131, 97, 4)).save(HERE / "rgba_97x131.png")
    Image.fromarray(synthetic(33, 40, 1)[..., 0]).save(HERE / "gray_40x33.png")
    g16 = (synthetic(37, 45, 1)[..., 0].astype(np.uint16) * 257 + rng.integers(0, 257, (37, 45))).astype(np.uint16)
    Image.fromarray(g16).save(HERE / "gray16_45x37.png")
    Image.fromarray(synthetic(240, 320, 3)).save(HERE / "photo_320x240.jpg", quality=92)
    # The other formats PIL opens that int8kit decodes, from a generator of their own so that the files above
    # and their reference values stay the same.
    more = np.random.default_rng(5678)
    Image.fromarray(synthetic(240, 320, 3, more)).save(HERE / "photo_320x240.webp", quality=90)
    Image.fromarray(synthetic(61, 83, 4, more)).save(HERE / "rgba_83x61_lossless.webp", lossless=True)
    Image.fromarray(synthetic(50, 60, 3, more)).save(HERE / "rgb_60x50.bmp")
    Image.fromarray(synthetic(45, 70, 3, more)).save(HERE / "rgb_70x45_lzw.tiff", compression="tiff_lzw")
    Image.fromarray(synthetic(48, 64, 3, more)).quantize(64, dither=Image.Dither.NONE).save(HERE / "palette_64x48.gif")


RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def load(path, channels):
    img = Image.open(path)
    if img.mode in ("I;16", "I;16B", "I"):
        # int8kit maps 16-bit to 8-bit by round(v / 257); PIL's convert("L") would clip at 255.
        a = np.asarray(img).astype(np.uint32)
        img = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8))
    img = img.convert("L" if channels == "gray" else "RGB")
    return img


def geometry(img, r):
    h, w = r["size"]
    if r["resize"] == "exact":
        img = img.resize((w, h), RESAMPLE[r["interpolation"]])
    elif r["resize"] == "shorter":
        s = r["resize_to"]
        iw, ih = img.size
        short, long = (iw, ih) if iw <= ih else (ih, iw)
        new_long = int(s * long / short)
        size = (s, new_long) if iw <= ih else (new_long, s)
        if size != img.size:
            img = img.resize(size, RESAMPLE[r["interpolation"]])
    iw, ih = img.size
    left, top = int(round((iw - w) / 2.0)), int(round((ih - h) / 2.0))
    return img.crop((left, top, left + w, top + h))


def tensor(img, r):
    a = np.asarray(img).astype(np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if r["channels"] == "bgr":
        a = a[..., ::-1]
    a = a / np.float32(r.get("scale", 255.0))
    a = (a - np.array(r["mean"], np.float32)) / np.array(r["std"], np.float32)
    return a.transpose(2, 0, 1) if r.get("layout", "NCHW") == "NCHW" else a


IMAGENET = dict(channels="rgb", size=[224, 224], resize="shorter", resize_to=256, interpolation="bilinear",
                mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
CLIP = dict(channels="rgb", size=[224, 224], resize="shorter", resize_to=224, interpolation="bicubic",
            mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711])
CASES = [
    ("rgb_300x250.png", "preset:imagenet", IMAGENET),
    ("rgb_300x250.png", "preset:clip", CLIP),
    ("rgba_97x131.png", "rgba-bicubic-up", dict(channels="rgb", size=[150, 120], resize="shorter", resize_to=120,
                                                 interpolation="bicubic", mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])),
    ("rgb_300x250.png", "gray-exact-bilinear", dict(channels="gray", size=[28, 28], resize="exact",
                                                     interpolation="bilinear", mean=[0.286], std=[0.353])),
    ("rgb_300x250.png", "bgr-nhwc-nearest", dict(channels="bgr", layout="NHWC", size=[40, 48], resize="exact",
                                                  interpolation="nearest", mean=[0.1, 0.2, 0.3], std=[0.9, 0.8, 0.7])),
    ("gray_40x33.png", "gray-to-rgb-none", dict(channels="rgb", size=[30, 36], resize="none",
                                                 interpolation="bilinear", mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])),
    ("gray16_45x37.png", "gray16-shorter", dict(channels="gray", size=[20, 20], resize="shorter", resize_to=24,
                                                  interpolation="bilinear", mean=[0.5], std=[0.5])),
    ("photo_320x240.jpg", "jpeg-imagenet", IMAGENET),
    ("photo_320x240.webp", "webp-imagenet", IMAGENET),
    ("rgba_83x61_lossless.webp", "webp-lossless-none", dict(channels="rgb", size=[61, 83], resize="none",
                                                            interpolation="bilinear", mean=[0.5, 0.5, 0.5],
                                                            std=[0.5, 0.5, 0.5])),
    ("rgb_60x50.bmp", "bmp-gray-bilinear", dict(channels="gray", size=[28, 28], resize="exact",
                                                interpolation="bilinear", mean=[0.286], std=[0.353])),
    ("rgb_70x45_lzw.tiff", "tiff-bgr-bicubic", dict(channels="bgr", size=[32, 32], resize="shorter", resize_to=40,
                                                    interpolation="bicubic", mean=[0.4, 0.4, 0.4],
                                                    std=[0.2, 0.2, 0.2])),
    ("palette_64x48.gif", "gif-palette-none", dict(channels="rgb", size=[48, 64], resize="none",
                                                    interpolation="bilinear", mean=[0.0, 0.0, 0.0],
                                                    std=[1.0, 1.0, 1.0])),
]


def main():
    write_sources()
    cases = []
    for i, (src, name, r) in enumerate(CASES):
        img = geometry(load(HERE / src, r["channels"]), r)
        out_png = f"ref_{i}_{name.replace(':', '_')}.png"
        img.save(HERE / out_png)
        t = tensor(img, r).reshape(-1)
        idx = rng.choice(t.size, 32, replace=False)
        cases.append(dict(name=name, source=src, recipe=r, expected_pixels=out_png,
                          samples=[[int(j), float(t[j])] for j in sorted(idx)]))
    (HERE / "reference.json").write_text(json.dumps(dict(generator="make_reference.py", cases=cases), indent=1))


if __name__ == "__main__":
    main()
