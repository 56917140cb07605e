"""The embedded model: a llama.cpp server process per machine (``embedded``) and its entry point
(``python -m pytest_dspex.lm.local._llama_server``).

May import: ``lm``, ``_support``, ``errors``.
"""
