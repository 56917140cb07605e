"""Test support shipped with the package: the loopback OpenAI-compatible server with fault injection.

May import: ``_support``, ``errors``.
"""
