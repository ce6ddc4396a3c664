"""Issue 28 point 14: every TIFF/PNG colour mode is read as the RGB a viewer shows, or refused.

Each file is a few pixels written here with tifffile or Pillow; the expected RGB values are
worked out by hand from the mode's definition (CMYK: R = 255 (1 - C)(1 - K), G and B alike;
palette: the colour map's entry, 16-bit entries keep the top byte; gray + alpha composited on
white: out = g a/255 + 255 (1 - a/255); 16-bit: the top byte).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from ircr.errors import IrcrError
from ircr.io.image import read_image, read_label_map


def test_cmyk_tiff_is_converted_not_blank(tmp_path: Path) -> None:
    cmyk = np.zeros((1, 5, 4), np.uint8)
    cmyk[0, 0] = (255, 0, 0, 0)      # cyan ink only -> (0, 255, 255)
    cmyk[0, 1] = (0, 0, 0, 255)      # black ink -> (0, 0, 0)
    cmyk[0, 2] = (0, 0, 0, 0)        # no ink -> white
    cmyk[0, 3] = (0, 255, 255, 0)    # magenta + yellow -> red
    cmyk[0, 4] = (0, 0, 0, 51)       # 20 % black -> 255 * 0.8 = 204 grey
    path = tmp_path / "cmyk.tif"
    tifffile.imwrite(path, cmyk, photometric="separated")
    rgb = read_image(path)
    assert rgb[0].tolist() == [[0, 255, 255], [0, 0, 0], [255, 255, 255], [255, 0, 0],
                               [204, 204, 204]]


def test_palette_tiff_uses_its_colour_map(tmp_path: Path) -> None:
    idx = np.array([[0, 1, 2, 3]], np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 0] = (65535, 65535, 65535)  # white
    cmap[:, 1] = (65535, 0, 0)
    cmap[:, 2] = (0, 65535, 0)
    cmap[:, 3] = (0, 0, 32768)          # top byte 128
    path = tmp_path / "palette.tif"
    tifffile.imwrite(path, idx, photometric="palette", colormap=cmap)
    assert read_image(path)[0].tolist() == [[255, 255, 255], [255, 0, 0], [0, 255, 0],
                                            [0, 0, 128]]
    # a palette label map keeps its indices (they are the ids)
    assert read_label_map(path)[0].tolist() == [0, 1, 2, 3]


def test_palette_png(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    im.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    path = tmp_path / "palette.png"
    im.save(path)
    assert read_image(path)[0].tolist() == [[10, 20, 30], [200, 100, 0]]


def test_min_is_white_tiff_is_inverted(tmp_path: Path) -> None:
    path = tmp_path / "miniswhite.tif"
    tifffile.imwrite(path, np.array([[0, 255, 55]], np.uint8), photometric="miniswhite")
    assert read_image(path)[0, :, 0].tolist() == [255, 0, 200]


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_gray_alpha_is_composited_on_white(tmp_path: Path, suffix: str) -> None:
    la = np.zeros((1, 3, 2), np.uint8)
    la[0, :, 0] = (10, 100, 40)
    la[0, :, 1] = (255, 0, 128)
    path = tmp_path / f"la{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, la, photometric="minisblack", extrasamples=["unassalpha"])
    else:
        Image.fromarray(la, mode="LA").save(path)
    # 100 at alpha 0 -> white; 40 at 128: 40 * 128/255 + 255 * 127/255 = 147.08 -> 147
    assert read_image(path)[0].tolist() == [[10] * 3, [255] * 3, [147] * 3]


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_16_bit_keeps_the_top_byte(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"deep{suffix}"
    if suffix == ".tif":
        rgb16 = np.array([[[65535, 256, 0], [32768, 4660, 300]]], np.uint16)
        tifffile.imwrite(path, rgb16, photometric="rgb")
        expect = [[255, 1, 0], [128, 18, 1]]  # 4660 = 0x1234 -> 0x12 = 18
    else:
        Image.fromarray(np.array([[65535, 4660]], np.uint16)).save(path)  # I;16 gray
        expect = [[255] * 3, [18] * 3]
    assert read_image(path)[0].tolist() == expect


def test_unsupported_colour_space_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "lab.tif"
    tifffile.imwrite(path, np.zeros((2, 2, 3), np.uint8), photometric="cielab")
    with pytest.raises(IrcrError, match=r"lab\.tif: TIFF colour space CIELAB .* save the image "
                                        r"as RGB"):
        read_image(path)
    with pytest.raises(IrcrError, match="colour"):
        read_label_map(path)


def test_text_file_named_png_has_no_python_names(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_text("not an image\n")
    with pytest.raises(IrcrError) as info:
        read_image(path)
    assert "Error" not in str(info.value) and "not an image file" in str(info.value)
