#!/usr/bin/python3
"""Writes the hostile checkpoint and image fixtures of tests/test_hostile.cpp.

Run with Debian's python3 and python3-torch (1.13): /usr/bin/python3 make_hostile.py
Each file is small and committed; this script documents how it was made and proves, for
the TorchScript ones, that torch.jit.load really runs their code (the reader must not).
"""
import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# Written by setstate_writes_file.pt's __setstate__ if anything ever runs it.
MARKER = "/tmp/vlmadapt_hostile_setstate_marker"


def path(name):
    return os.path.join(HERE, name)


# ---- TorchScript archives whose __setstate__ is code -----------------------------------

class WritesFile(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.arange(4, dtype=torch.float32))

    @torch.jit.export
    def __getstate__(self):
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        self.training = state[1]
        # aten::from_file with shared=True creates the file: a side effect of loading. Its
        # (zero) values are used, or the TorchScript compiler would drop the call.
        self.weight = state[0] + torch.from_file("/tmp/vlmadapt_hostile_setstate_marker", shared=True, size=4)

    def forward(self, x):
        return x + self.weight


class Loops(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.arange(4, dtype=torch.float32))

    @torch.jit.export
    def __getstate__(self):
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        self.weight = state[0]
        self.training = state[1]
        i = 0
        while i >= 0:  # forever
            i += 1

    def forward(self, x):
        return x + self.weight


class Outer(torch.nn.Module):
    """A plain module around the hostile one, so the archive also holds ordinary tensors."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.bias = torch.nn.Parameter(torch.tensor([0.5, -1.5]))

    def forward(self, x):
        return self.inner(x)


def torchscript_fixtures():
    torch.jit.save(torch.jit.script(Outer(WritesFile())), path("setstate_writes_file.pt"))
    torch.jit.save(torch.jit.script(Outer(Loops())), path("setstate_loops.pt"))
    # Proof that the fixtures are hostile to torch.jit.load (and so to the old reader).
    if os.path.exists(MARKER):
        os.remove(MARKER)
    torch.jit.load(path("setstate_writes_file.pt"))
    assert os.path.exists(MARKER), "setstate_writes_file.pt did not write its marker"
    os.remove(MARKER)
    load = "import torch; torch.jit.load(%r)" % path("setstate_loops.pt")
    try:
        subprocess.run([sys.executable, "-c", load], timeout=10, check=True)
        raise AssertionError("setstate_loops.pt returned")
    except subprocess.TimeoutExpired:
        pass


# ---- torch.save-format archives with crafted pickles ---------------------------------

class Storage:
    def __init__(self, key, numel, kind=torch.FloatStorage):
        self.key, self.numel, self.kind = key, numel, kind


class Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + MARKER,))


class CratedPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel)
        return None


def write_archive(name, obj, records, compress=False):
    buf = io.BytesIO()
    CratedPickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path(name), "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for key, data in records.items():
            z.writestr("archive/data/" + key, data)
        z.writestr("archive/version", "3\n")


def floats(n):
    return struct.pack("<%df" % n, *range(n))


def pickle_fixtures():
    s = Storage("0", 6)
    six = {"0": floats(6)}
    write_archive("valid_state_dict.bin", {"w": Tensor(s, 0, (2, 3), (3, 1)), "v": Tensor(s, 2, (2,), (2,))}, six)
    write_archive("tensor_larger_than_storage.bin", {"w": Tensor(s, 0, (1000,), (1,))}, six)
    write_archive("stride_outside_storage.bin", {"w": Tensor(s, 0, (2, 2), (100, 1))}, six)
    write_archive("offset_outside_storage.bin", {"w": Tensor(s, 5, (2,), (1,))}, six)
    write_archive("overflowing_shape.bin", {"w": Tensor(s, 0, (2**62, 4), (4, 2**62))}, six)
    # The persistent id promises 1,000,000 floats; the record holds 6.
    write_archive("storage_record_short.bin", {"w": Tensor(Storage("0", 1000000), 0, (1000000,), (1,))}, six)
    write_archive("evil_global.bin", {"w": Evil()}, six)
    # A zip bomb in miniature: a deflated record (PyTorch never compresses records).
    write_archive("compressed_record.bin", {"w": Tensor(Storage("0", 1 << 20), 0, (1 << 20,), (1,))},
                  {"0": bytes(4 << 20)}, compress=True)
    # A valid archive with one byte of a storage record flipped after the CRC was written.
    write_archive("bad_crc.bin", {"w": Tensor(s, 0, (6,), (1,))}, six)
    with zipfile.ZipFile(path("bad_crc.bin")) as z:
        info = z.getinfo("archive/data/0")
    data = bytearray(open(path("bad_crc.bin"), "rb").read())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + 5] ^= 0xFF
    open(path("bad_crc.bin"), "wb").write(bytes(data))


# ---- archives whose central directory lies (found by tests/fuzz/fuzz_torch_save) --------

def central_directory_entries(data):
    """(offset of each central directory header, its name), in order."""
    eocd = data.rfind(b"PK\x05\x06")
    count, _, cd_offset = struct.unpack("<HII", data[eocd + 10:eocd + 20])
    entries, p = [], cd_offset
    for _ in range(count):
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[p + 28:p + 34])
        entries.append((p, data[p + 46:p + 46 + name_len].decode()))
        p += 46 + name_len + extra_len + comment_len
    return entries


def patch_directory(source, name, target, patch):
    """Copies archive `source` to `target` with patch(data, header offset) applied to the
    central directory header of record `name`."""
    data = bytearray(open(path(source), "rb").read())
    header = next(p for p, n in central_directory_entries(bytes(data)) if n == name)
    patch(data, header)
    open(path(target), "wb").write(bytes(data))


def lying_directory_fixtures():
    # A stored record whose directory entry claims 2 GiB (the bytes stay 24): libtorch's
    # reader allocated the claimed size before any check; likewise the version record,
    # which it reads as it opens the archive.
    def uncompressed_size(value):
        return lambda data, h: data.__setitem__(slice(h + 24, h + 28), struct.pack("<I", value))
    patch_directory("valid_state_dict.bin", "archive/data/0", "record_size_over_file.bin", uncompressed_size(1 << 31))
    patch_directory("valid_state_dict.bin", "archive/version", "version_size_over_file.bin",
                    uncompressed_size(0xF8000001))
    # Two storage records whose entries point at the same bytes: with many such entries a
    # small file would make many large storages.
    two = {"0": floats(6), "1": floats(6)}
    write_archive("overlapping_records.bin", {"a": Tensor(Storage("0", 6), 0, (6,), (1,)),
                                              "b": Tensor(Storage("1", 6), 0, (6,), (1,))}, two)
    first = next(p for p, n in central_directory_entries(open(path("overlapping_records.bin"), "rb").read())
                 if n == "archive/data/0")
    def same_bytes(data, h):
        data[h + 42:h + 46] = data[first + 42:first + 46]  # local header offset
        data[h + 16:h + 20] = data[first + 16:first + 20]  # and its CRC-32
    patch_directory("overlapping_records.bin", "archive/data/1", "overlapping_records.bin", same_bytes)
    # Two records whose names differ only in case: libtorch's zip reader (miniz) ignores
    # case, so the name checked and the record read could differ.
    write_archive("duplicate_record.bin", {"w": Tensor(Storage("0", 6), 0, (6,), (1,))}, two)
    patch_directory("duplicate_record.bin", "archive/data/1", "duplicate_record.bin",
                    lambda data, h: data.__setitem__(slice(h + 46, h + 60), b"archive/DATA/0"))


# ---- images --------------------------------------------------------------------------

def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def image_fixtures():
    # A valid 8-bit greyscale PNG of 1 x 1,000,000 pixels that compresses to a few KB.
    ihdr = struct.pack(">IIBBBBB", 1, 1000000, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00\x80" * 1000000, 9)
    png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    open(path("strip_1x1000000.png"), "wb").write(png)


if __name__ == "__main__":
    pickle_fixtures()
    lying_directory_fixtures()
    image_fixtures()
    torchscript_fixtures()
    print("wrote", sorted(f for f in os.listdir(HERE) if not f.endswith(".py")))
