"""Output formats of ``ircr segment``, one module each; every module registers itself with
:func:`ircr.engine.outputs.register_output` on import."""
