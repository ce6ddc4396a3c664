"""Model families, one module each; every module here registers itself on import
(:func:`ircr.inference.family.register_family`). See :mod:`ircr.inference.family` for the
contract."""
