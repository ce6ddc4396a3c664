"""read_image / read_label_map: conversion rules and one-line errors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from ircr.errors import IrcrError
from ircr.io.image import read_image, read_label_map


def _err(fn, path: Path) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(IrcrError) as info:
        fn(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


@pytest.fixture()
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)


def test_png_jpeg_rgb(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (7, 9, 3)
    np.testing.assert_array_equal(out, rgb)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    assert read_image(tmp_path / "a.jpg").shape == (7, 9, 3)


def test_lzw_and_planar_tiff(tmp_path: Path, rgb: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "lzw.tif", rgb, compression="lzw", photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "lzw.tif"), rgb)
    planar = np.moveaxis(rgb, -1, 0)
    tifffile.imwrite(tmp_path / "planar.tiff", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tiff"), rgb)


def test_grayscale_replicated(tmp_path: Path) -> None:
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(g).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_rgba_opaque_dropped_and_transparent_composited_on_white(tmp_path: Path) -> None:
    px = np.zeros((1, 3, 4), dtype=np.uint8)
    px[0, :, :3] = (100, 50, 0)
    px[0, :, 3] = (255, 128, 0)
    Image.fromarray(px, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    # hand computed: rgb*a/255 + 255*(1-a/255), rounded
    # a=128: 100*128/255 + 127 = 177.2 -> 177; 50*128/255 + 127 = 152.1 -> 152; 0 + 127 = 127
    np.testing.assert_array_equal(out[0], [[100, 50, 0], [177, 152, 127], [255, 255, 255]])
    opaque = px.copy()
    opaque[..., 3] = 255
    Image.fromarray(opaque, mode="RGBA").save(tmp_path / "o.png")
    np.testing.assert_array_equal(read_image(tmp_path / "o.png"), opaque[..., :3])


def test_16bit_rule(tmp_path: Path) -> None:
    true16 = np.array([[0x1234, 0xFFFF], [0x00FF, 0x0100]], dtype=np.uint16)
    Image.fromarray(true16).save(tmp_path / "t.png")  # Pillow writes mode I;16
    out = read_image(tmp_path / "t.png")
    np.testing.assert_array_equal(out[..., 0], [[0x12, 0xFF], [0x00, 0x01]])  # >> 8
    small = np.array([[3, 200], [255, 0]], dtype=np.uint16)  # 8-bit data in 16-bit container
    Image.fromarray(small).save(tmp_path / "s.png")
    np.testing.assert_array_equal(read_image(tmp_path / "s.png")[..., 1], small)
    rgb16 = np.full((2, 2, 3), 0xABCD, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    assert (read_image(tmp_path / "rgb16.tif") == 0xAB).all()


def test_float_images(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "unit.tif", np.full((2, 2, 3), 0.5, np.float32), photometric="rgb")
    assert (read_image(tmp_path / "unit.tif") == 128).all()  # 0.5*255 = 127.5 -> 128
    tifffile.imwrite(tmp_path / "int.tif", np.full((2, 2, 3), 200.0, np.float32), photometric="rgb")
    assert (read_image(tmp_path / "int.tif") == 200).all()
    tifffile.imwrite(tmp_path / "bad.tif", np.full((2, 2, 3), 300.5, np.float32), photometric="rgb")
    assert "range unknown" in _err(read_image, tmp_path / "bad.tif")


def test_bad_files(tmp_path: Path, rgb: np.ndarray) -> None:
    assert "not found" in _err(read_image, tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in _err(read_image, tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("not an image")
    assert "cannot read" in _err(read_image, tmp_path / "text.png")
    big = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    _err(read_image, tmp_path / "trunc.png")
    tifffile.imwrite(tmp_path / "trunc.tif", big, compression="lzw", photometric="rgb")
    tdata = (tmp_path / "trunc.tif").read_bytes()
    (tmp_path / "trunc.tif").write_bytes(tdata[: len(tdata) // 3])
    _err(read_image, tmp_path / "trunc.tif")
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((4, 4, 5), np.uint8), photometric="rgb",
                     planarconfig="contig")
    assert "5 channels" in _err(read_image, tmp_path / "five.tif")


def test_label_maps(tmp_path: Path) -> None:
    lab = np.array([[0, 1, 1000], [65535, 2, 0]], dtype=np.uint16)
    Image.fromarray(lab).save(tmp_path / "l.png")
    out = read_label_map(tmp_path / "l.png")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, lab.astype(np.int32))
    np.save(tmp_path / "l.npy", lab.astype(np.float64))  # integer-valued floats are fine
    np.testing.assert_array_equal(read_label_map(tmp_path / "l.npy"), lab)
    tifffile.imwrite(tmp_path / "l.tif", lab.astype(np.int32) * 100)
    np.testing.assert_array_equal(read_label_map(tmp_path / "l.tif"), lab.astype(np.int32) * 100)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert "colour image" in _err(read_label_map, tmp_path / "rgb.png")
    np.save(tmp_path / "neg.npy", np.array([[0, -1]], np.int32))
    assert "negative" in _err(read_label_map, tmp_path / "neg.npy")
    np.save(tmp_path / "frac.npy", np.array([[0, 1.5]], np.float32))
    assert "non-integer" in _err(read_label_map, tmp_path / "frac.npy")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    _err(read_label_map, tmp_path / "bad.npy")
    _err(read_label_map, tmp_path / "nothere.png")
