#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets: tests/fuzz/corpus/<target>/.

Run with Debian's python3, python3-torch (1.13) and python3-pil from the checkout:
    /usr/bin/python3 tests/fuzz/make_corpus.py
Seeds are small valid files of each format (a few edge cases too), so that the fuzzer starts
from inputs that pass the first checks; each is under 64 KB. The corpora are committed; this
script documents how they were made. Inputs that crashed a target once are kept beside the
seeds (named regression-*) and are not written here.
"""
import collections
import gzip
import io
import json
import os
import shutil
import struct
import zipfile

import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
MAX_SEED = 64 * 1024


def write(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    assert len(data) < MAX_SEED, (target, name, len(data))
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def clear(target):
    """Removes the generated seeds of a target, keeping regression-* inputs."""
    folder = os.path.join(HERE, "corpus", target)
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if not name.startswith("regression-"):
                os.remove(os.path.join(folder, name))


# ---- safetensors ---------------------------------------------------------------------

def safetensors(tensors, metadata=None):
    """The format by hand (8-byte length, JSON header, data), as core/safetensors.h reads it."""
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
             torch.uint8: "U8", torch.bool: "BOOL"}
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for key, t in tensors.items():
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[key] = {"dtype": names[t.dtype], "shape": list(t.shape),
                       "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    head = json.dumps(header).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    return struct.pack("<Q", len(head)) + head + data


def make_safetensors():
    clear("safetensors")
    torch.manual_seed(0)
    write("safetensors", "open_clip_keys", safetensors(collections.OrderedDict([
        ("logit_scale", torch.tensor(4.6052)),
        ("positional_embedding", torch.randn(4, 8)),
        ("text_projection", torch.randn(8, 4).half()),
        ("token_embedding.weight", torch.randn(6, 8).bfloat16()),
        ("visual.proj", torch.randn(8, 4))]), {"format": "open_clip", "architecture": "tiny"}))
    write("safetensors", "every_dtype", safetensors(collections.OrderedDict(
        (str(dt).split(".")[1], torch.arange(3).to(dt)) for dt in
        [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
         torch.int16, torch.int8, torch.uint8, torch.bool])))
    write("safetensors", "empty_and_scalar", safetensors(collections.OrderedDict([
        ("empty", torch.zeros(0, 5)), ("scalar", torch.tensor(1.5)), ("dims4", torch.ones(1, 2, 1, 2))])))
    write("safetensors", "no_tensors", safetensors({}, {"note": "metadata only"}))
    # The first tensors of a real checkpoint's header, cut down to a few small ones.
    golden = os.path.join(SHARED, "fixtures", "clip", "tiny_vit", "golden.safetensors")
    if os.path.exists(golden):
        with open(golden, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            body = f.read()
        small = collections.OrderedDict()
        for key, info in header.items():
            if key == "__metadata__" or len(small) == 3:
                continue
            begin, end = info["data_offsets"]
            if end - begin <= 4096:
                dtype = {"F32": torch.float32, "F16": torch.float16, "I64": torch.int64}.get(info["dtype"])
                if dtype is not None:
                    small[key] = torch.frombuffer(bytearray(body[begin:end]), dtype=dtype).reshape(info["shape"])
        write("safetensors", "golden_pieces", safetensors(small))


# ---- torch.save, TorchScript and their pickles -----------------------------------------

def torch_save(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)
        self.ln = torch.nn.LayerNorm(2)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        return self.ln(self.proj(x)) * self.scale


def data_pkl(archive):
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return next(z.read(n) for n in z.namelist() if n.endswith("/data.pkl"))


def make_archives():
    for t in ("torch_save", "torchscript", "torch_pickle"):
        clear(t)
    torch.manual_seed(0)
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    saves = {
        "state_dict": collections.OrderedDict([("token_embedding.weight", torch.randn(4, 3)),
                                               ("text_projection", torch.randn(3, 2).half()),
                                               ("visual.proj", torch.randn(3, 2))]),
        # Views sharing one storage: a transpose, a row with an offset, a scalar.
        "shared_storage_views": collections.OrderedDict([("full", base), ("transposed", base.t()),
                                                         ("row", base[1]), ("scalar", base[2, 3])]),
        "nested_state_dict": {"epoch": 3, "state_dict": collections.OrderedDict([
            ("module.visual.proj", torch.ones(2, 2, dtype=torch.float64)),
            ("module.ids", torch.arange(5)), ("module.mask", torch.tensor([True, False]))])},
        "parameters": collections.OrderedDict((k, torch.nn.Parameter(v, requires_grad=False))
                                              for k, v in Tiny().state_dict().items()),
        "empty_tensor": collections.OrderedDict([("empty", torch.zeros(0, 3)), ("byte", torch.arange(4).byte())]),
    }
    for name, obj in saves.items():
        archive = torch_save(obj)
        write("torch_save", name, archive)
        write("torch_pickle", "save_" + name, data_pkl(archive))
    shutil.copy(os.path.join(ROOT, "tests", "data", "hostile", "valid_state_dict.bin"),
                os.path.join(HERE, "corpus", "torch_save", "valid_state_dict"))

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Tiny()), buf)
    write("torchscript", "scripted_module", buf.getvalue())
    write("torch_pickle", "script_module", data_pkl(buf.getvalue()))
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())), buf)
    write("torchscript", "scripted_sequential", buf.getvalue())
    write("torch_pickle", "script_sequential", data_pkl(buf.getvalue()))
    # A torch.save file is no TorchScript module, but the archive reading is shared.
    write("torchscript", "torch_save_archive", torch_save(saves["state_dict"]))


# ---- text formats ------------------------------------------------------------------

def make_hf_config():
    clear("hf_config")
    with open(os.path.join(SHARED, "fixtures", "clip", "tiny_vit", "model_hf.config.json")) as f:
        config = json.load(f)
    write("hf_config", "tiny_vit", json.dumps(config, indent=1))
    config["text_config"]["hidden_act"] = "gelu"
    config["vision_config"]["num_attention_heads"] = 4
    write("hf_config", "gelu_4_heads", json.dumps(config))
    write("hf_config", "minimal", '{"text_config": {"num_attention_heads": 8, "hidden_size": 512}, '
                                  '"vision_config": {"num_attention_heads": 12, "hidden_size": 768}}')


def make_recipes():
    clear("recipe")
    recipes = os.path.join(ROOT, "recipes")
    for rel in ["coop/coop.ini", "datasets/fashion_mnist.ini", "datasets/caltech101.ini", "tda/tda.ini",
                "tpt/tpt.ini", "dmn/dmn.ini", "linear_probe/linear_probe.ini"]:
        with open(os.path.join(recipes, rel)) as f:
            write("recipe", rel.replace("/", "_"), f.read())
    write("recipe", "with_overrides",
          "method = coop\n[data]\ndataset = fashion_mnist\nshots = 4\n[coop]\nn_ctx = 4\n"
          "--set\ntrain.epochs_by_shots=1:5,4:10\neval.order=dirichlet\neval.dirichlet=0.01\n"
          "coop.csc=true\nname=run_a\ndata.severity=3\ndata.corruption=gaussian_noise")
    write("recipe", "only_overrides", "\n--set\nmethod=tda\ntda.shot_capacity=3\nmodel.half=yes\ntrain.lr=+1e-3")
    write("recipe", "include_missing", "include = missing.ini|other.ini\nmethod = zeroshot\n")


def make_coop_split():
    clear("coop_split")
    # The first byte picks the dataset of fuzz_coop_split.cpp: 0 oxford_pets, 1 caltech101, 3 eurosat.
    pets = {"train": [["Abyssinian_1.jpg", 0, "abyssinian"], ["beagle_2.jpg", 1, "beagle"]],
            "val": [["Abyssinian_3.jpg", 0, "abyssinian"]],
            "test": [["beagle_4.jpg", 1, "beagle"], ["great_pyrenees_5.jpg", 2, "great_pyrenees"]]}
    write("coop_split", "oxford_pets", b"\x00" + json.dumps(pets).encode())
    caltech = {"train": [["airplanes/image_0001.jpg", 0, "airplanes"], ["Faces_easy/image_0001.jpg", 1, "Faces_easy"],
                         ["BACKGROUND_Google/image_0001.jpg", 2, "BACKGROUND_Google"]],
               "val": [["Leopards/image_0002.jpg", 3, "Leopards"]],
               "test": [["yin_yang/image_0003.jpg", 4, "yin_yang"]]}
    write("coop_split", "caltech101", b"\x01" + json.dumps(caltech).encode())
    eurosat = {"train": [["AnnualCrop/AnnualCrop_1.jpg", 0, "AnnualCrop"]],
               "val": [["SeaLake/SeaLake_2.jpg", 9, "SeaLake"]], "test": []}
    write("coop_split", "eurosat", b"\x03" + json.dumps(eurosat, indent=2).encode())


def make_tokenizer():
    clear("tokenizer")
    with open(os.path.join(SHARED, "fixtures", "tokenizer", "encode.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    # Every 200th text (plain English, diacritics, html entities, CJK, emoji, numbers), plus
    # hand-made edge cases; the first byte sets the context length and truncation.
    picked = texts[::200] + ["&amp;lt; &#x41;&#65 &notit; &NotAnEntity", "<|startoftext|> it's <|endoftext|>",
                             "İSTANBUL ΣΟΦΟΣ ß ﬁ", "a\u00a0b\u2028c\tcafe\u0301", "x" * 300, "!!!???...",
                             "0123456789", ""]
    for i, text in enumerate(picked):
        write("tokenizer", "text_%02d" % i, bytes([(i * 37) % 256]) + text.encode("utf-8"))


# ---- binary formats ------------------------------------------------------------------

def make_merges():
    """Merges files: the first byte 0 = a head continued by the built-in merges, 1 = whole."""
    clear("merges")
    with gzip.open(os.path.join(ROOT, "third_party", "clip", "bpe_simple_vocab_16e6.txt.gz"), "rb") as f:
        lines = f.read().split(b"\n")
    header, head = lines[0] + b"\n", b"\n".join(lines[1:21]) + b"\n"
    write("merges", "head_20", b"\x00" + header + head)
    write("merges", "head_crlf", b"\x00" + (header + head).replace(b"\n", b"\r\n"))
    write("merges", "head_repeated", b"\x00" + header + lines[1] + b"\n" + lines[1] + b"\n")
    write("merges", "head_three_symbols", b"\x00" + header + b"i n x\n")
    write("merges", "head_outside_alphabet", b"\x00" + header + "\u4e00 n\n".encode("utf-8"))
    write("merges", "head_not_utf8", b"\x00" + header + b"\xff n\n")
    write("merges", "whole_header_only", b"\x01" + header)
    gz = gzip.compress(header + b"\n".join(lines[1:101]) + b"\n", mtime=0)
    write("merges", "whole_gzip_100_lines", b"\x01" + gz)
    write("merges", "whole_gzip_truncated", b"\x01" + gz[:-12])


def make_idx():
    clear("idx")
    # The first byte of fuzz_idx.cpp: bit 0 labels, bit 1 gzip'ed, bit 2 label count agrees.
    root = "/usr/share/datasets/fashion-mnist"
    with gzip.open(os.path.join(root, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = f.read()[8:8 + 6]
    with gzip.open(os.path.join(root, "t10k-images-idx3-ubyte.gz")) as f:
        images = f.read()[16:16 + 3 * 28 * 28]
    idx1 = struct.pack(">II", 0x801, len(labels)) + labels
    idx3 = struct.pack(">IIII", 0x803, 3, 28, 28) + images
    write("idx", "labels", b"\x01" + idx1)
    write("idx", "labels_gz", b"\x03" + gzip.compress(idx1, mtime=0))
    write("idx", "images", b"\x04" + idx3)
    write("idx", "images_gz", b"\x06" + gzip.compress(idx3, mtime=0))
    write("idx", "images_2x3", b"\x04" + struct.pack(">IIII", 0x803, 2, 2, 3) + bytes(range(12)))


def image_bytes(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def big_endian_tiff(width, height, pixels):
    """A minimal uncompressed 8-bit greyscale TIFF in Motorola byte order ("MM"), which
    Pillow does not write: header, one IFD of 8 entries, then the pixels."""
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 8 + 4), (278, 3, 1, height), (279, 4, 1, len(pixels))]
    ifd = struct.pack(">H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack(">HHI", tag, kind, count) + (struct.pack(">HH", value, 0) if kind == 3 else struct.pack(">I", value))
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0) + pixels


def make_images():
    clear("image")
    for name in sorted(os.listdir(os.path.join(ROOT, "tests", "data", "images"))):
        with open(os.path.join(ROOT, "tests", "data", "images", name), "rb") as f:
            write("image", name, f.read())
    with open(os.path.join(ROOT, "tests", "data", "hostile", "strip_1x1000000.png"), "rb") as f:
        write("image", "strip_1x1000000.png", f.read())
    rgb = Image.new("RGB", (13, 9))
    rgb.putdata([(x * 19 % 256, y * 27 % 256, (x * y) % 256) for y in range(9) for x in range(13)])
    write("image", "rgb_13x9.webp", image_bytes(rgb, "WEBP", lossless=True))
    write("image", "rgb_13x9_lossy.webp", image_bytes(rgb, "WEBP", quality=50))
    write("image", "rgba_13x9.webp", image_bytes(rgb.convert("RGBA"), "WEBP", lossless=True))
    write("image", "rgb_13x9.ppm", image_bytes(rgb, "PPM"))
    write("image", "l_13x9.pgm", image_bytes(rgb.convert("L"), "PPM"))
    write("image", "rgb_13x9_progressive.jpg", image_bytes(rgb, "JPEG", progressive=True, quality=80))
    write("image", "cmyk_13x9.jpg", image_bytes(rgb.convert("CMYK"), "JPEG"))
    write("image", "rgb_13x9.tif", image_bytes(rgb, "TIFF", compression=None))
    write("image", "l_3x2_big_endian.tif", big_endian_tiff(3, 2, bytes(range(0, 240, 40))))
    write("image", "rgb_13x9_lzw.tif", image_bytes(rgb, "TIFF", compression="tiff_lzw"))
    write("image", "p_13x9.bmp", image_bytes(rgb.convert("P"), "BMP"))
    write("image", "bit1_13x9.png", image_bytes(rgb.convert("1"), "PNG"))


if __name__ == "__main__":
    make_safetensors()
    make_archives()
    make_hf_config()
    make_recipes()
    make_coop_split()
    make_tokenizer()
    make_merges()
    make_idx()
    make_images()
