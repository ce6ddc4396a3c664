"""File input/output: images, label maps, writers and whole-slide readers."""

from ircr.io.image import read_image, read_label_map

__all__ = ["read_image", "read_label_map"]
