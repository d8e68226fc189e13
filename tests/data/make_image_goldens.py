#!/usr/bin/python3
"""Regenerates tests/data/image_goldens.{json,safetensors} and tests/data/images/.

Run with Debian's python3-pil (Pillow 9.4, the reference's library):
    /usr/bin/python3 tests/data/make_image_goldens.py
Small odd-sized images in every mode Pillow distinguishes (L, RGB, RGBA, LA, P,
bilevel, 16-bit) so that the decoder's mode detection, each resize path
(bicubic / bilinear / nearest / premultiplied / 32-bit) and the rounding of the
centre crop are checked against Pillow pixel by pixel.
"""
import io
import json
import os
import struct

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = os.path.join(HERE, "images")
rng = np.random.default_rng(20240601)


def texture(h, w, c=None, lo=0, hi=256, dtype=np.uint8):
    """Smooth gradients plus noise: compresses well yet exercises every tap."""
    shape = (h, w) if c is None else (h, w, c)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 7 + yy * 3) % (hi - lo)
    if c is not None:
        base = np.stack([(base + 60 * i) % (hi - lo) for i in range(c)], axis=-1)
    noise = rng.integers(-20, 21, shape)
    return np.clip(base + lo + noise, lo, hi - 1).astype(dtype)


def save(name, image, **kw):
    image.save(os.path.join(IMAGES, name), **kw)
    return name


def make_sources():
    os.makedirs(IMAGES, exist_ok=True)
    files = {}
    files["rgb_37x23.png"] = save("rgb_37x23.png", Image.fromarray(texture(23, 37, 3)))
    files["rgb_21x16.png"] = save("rgb_21x16.png", Image.fromarray(texture(16, 21, 3)))
    files["rgb_16x19.png"] = save("rgb_16x19.png", Image.fromarray(texture(19, 16, 3)))
    files["rgb_3x50.png"] = save("rgb_3x50.png", Image.fromarray(texture(50, 3, 3)))
    files["rgb_1x1.png"] = save("rgb_1x1.png", Image.fromarray(texture(1, 1, 3)))
    files["gray_31x45.png"] = save("gray_31x45.png", Image.fromarray(texture(45, 31)))
    rgba = texture(29, 40, 4)
    rgba[..., 3][::3, ::2] = 0  # fully transparent and opaque pixels take other paths
    rgba[..., 3][1::4, 1::3] = 255
    files["rgba_40x29.png"] = save("rgba_40x29.png", Image.fromarray(rgba, "RGBA"))
    la = np.dstack([texture(27, 33), texture(27, 33)])
    files["la_33x27.png"] = save("la_33x27.png", Image.fromarray(la, "LA"))
    pal = Image.fromarray(texture(30, 41) // 16, "L").convert("P")
    pal.putpalette([int(v) for v in rng.integers(0, 256, 768)])
    files["p_trns_41x30.png"] = save("p_trns_41x30.png", pal, transparency=3)
    files["bit1_30x41.png"] = save("bit1_30x41.png", Image.fromarray(texture(41, 30) > 128))
    files["g16_29x35.png"] = save(
        "g16_29x35.png", Image.fromarray(texture(35, 29, lo=0, hi=700, dtype=np.uint16)))
    rgb16 = texture(29, 35, 3, hi=65536, dtype=np.uint16)
    # Pillow cannot write 16-bit RGB itself.
    files["rgb16_35x29.png"] = write_png16_rgb("rgb16_35x29.png", rgb16)
    files["rgb_trns_30x26.png"] = save(
        "rgb_trns_30x26.png", Image.fromarray(texture(26, 30, 3)), transparency=(1, 2, 3))
    files["gray_trns_26x30.png"] = save(
        "gray_trns_26x30.png", Image.fromarray(texture(30, 26)), transparency=17)
    bmp = Image.fromarray(texture(31, 45) // 8, "L").convert("P")
    bmp.putpalette([int(v) for v in rng.integers(0, 256, 768)])
    files["p8_45x31.bmp"] = save("p8_45x31.bmp", bmp)
    files["l8_31x45.bmp"] = save("l8_31x45.bmp", Image.fromarray(texture(45, 31)))
    files["gray_40x30.jpg"] = save("gray_40x30.jpg", Image.fromarray(texture(30, 40)), quality=90)
    files["rgb_33x21.jpg"] = save("rgb_33x21.jpg", Image.fromarray(texture(21, 33, 3)), quality=85)
    # OpenCV reads RGBA TIFFs premultiplied (libtiff's RGBA interface).
    files["rgba_20x17.tif"] = save("rgba_20x17.tif", Image.fromarray(texture(17, 20, 4), "RGBA"))
    return files


def write_png16_rgb(name, rgb16):
    import zlib
    h, w, _ = rgb16.shape
    raw = b"".join(b"\0" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(os.path.join(IMAGES, name), "wb") as f:
        f.write(png)
    return name


def clip_reference(path, n):
    """openai/CLIP _transform up to the uint8 crop (torchvision on PIL)."""
    im = Image.open(path)
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(n * long / short)
    size = (n, new_long) if w <= h else (new_long, n)
    if size != (w, h):
        im = im.resize(size, Image.BICUBIC)
    top = int(round((size[1] - n) / 2.0))
    left = int(round((size[0] - n) / 2.0))
    return np.asarray(im.crop((left, top, left + n, top + n)).convert("RGB"))


FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def resize_reference(path, size, filt, box, crop):
    im = Image.open(path)
    if crop:
        im = im.crop(tuple(crop))
    return np.asarray(im.resize(tuple(size), FILTERS[filt], box=box).convert("RGB"))


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for key in sorted(tensors):
        a = np.ascontiguousarray(tensors[key], dtype=np.uint8)
        header[key] = {"dtype": "U8", "shape": list(a.shape),
                       "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    files = make_sources()
    modes = {f: Image.open(os.path.join(IMAGES, f)).mode for f in files}
    clip_cases = {f: [16] for f in files}
    clip_cases["rgb_37x23.png"] = [8, 16, 23, 50]
    clip_cases["rgb_21x16.png"] = [16, 7]  # crop offsets round(2.5) = 2, round(1.5) = 2
    clip_cases["rgb_16x19.png"] = [16]
    clip_cases["rgb_3x50.png"] = [8, 3]
    clip_cases["gray_31x45.png"] = [16, 40]
    clip_cases["rgba_40x29.png"] = [16, 32]
    clip_cases["p_trns_41x30.png"] = [16, 40]
    resize_cases = [
        ("rgb_37x23.png", [20, 30], "bilinear", None, None),
        ("rgb_37x23.png", [20, 30], "bicubic", None, None),
        ("rgb_37x23.png", [13, 11], "bicubic", [3.5, 2.25, 30.75, 20.0], None),
        ("rgb_37x23.png", [16, 16], "bilinear", None, [5, 3, 25, 18]),
        ("rgb_37x23.png", [16, 16], "bicubic", None, [5, 3, 25, 18]),
        ("rgb_37x23.png", [20, 15], "bicubic", None, [5, 3, 25, 18]),
        ("rgba_40x29.png", [17, 9], "bilinear", None, None),
        ("rgba_40x29.png", [40, 12], "bicubic", None, None),
        ("p_trns_41x30.png", [13, 17], "bicubic", [1.5, 2.0, 30.0, 25.5], None),
        ("gray_31x45.png", [31, 20], "bilinear", None, None),
        ("g16_29x35.png", [11, 50], "bilinear", None, None),
    ]
    tensors, cases = {}, {"clip": [], "resize": [], "modes": modes}
    for f in files:
        for n in clip_cases[f]:
            key = f"{f}@{n}:u8"
            tensors[key] = clip_reference(os.path.join(IMAGES, f), n)
            cases["clip"].append({"file": f, "n_px": n, "key": key})
    for i, (f, size, filt, box, crop) in enumerate(resize_cases):
        key = f"resize{i}:{f}"
        tensors[key] = resize_reference(os.path.join(IMAGES, f), size, filt, box, crop)
        cases["resize"].append({"file": f, "size": size, "filter": filt, "box": box,
                                "crop": crop, "key": key})
    write_safetensors(os.path.join(HERE, "image_goldens.safetensors"), tensors)
    with open(os.path.join(HERE, "image_goldens.json"), "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
