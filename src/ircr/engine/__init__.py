"""Engines: inference, evaluation, segmentation and model folders (they own all I/O).

Import the submodules directly (``ircr.inference.predict``, ``ircr.inference.model_folder``, ...);
this package imports nothing so that ``import ircr.engine.x`` stays light.
"""
