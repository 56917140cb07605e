"""Scoring a program on a dataset and judging the result: ``scoring`` (the one scoring path,
``Evaluate``), ``records`` (one example's record), ``metrics``, ``datasets``, ``stats``,
``comparison`` (paired tests against a golden), ``gates`` (the verdict), ``sharding``.

May import: ``programs``, ``lm``, ``observe``, ``_support``, ``errors``.
"""
