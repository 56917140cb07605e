"""Watching a run: progress events (``events``) and OpenTelemetry spans (``tracing``).

Tracing takes attributes and objects by shape; it knows no LM, program or record class.
May import: ``_support``, ``errors``.
"""
