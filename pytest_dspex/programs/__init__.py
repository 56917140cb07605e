"""LM programs: examples and predictions, signatures, adapters (prompt layouts), constrained decoding,
calibration, ``Module``/``Predict``/``ChainOfThought`` (``modules``) and the process-wide settings.

May import: ``lm``, ``observe``, ``_support``, ``errors``.
"""
