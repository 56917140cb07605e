"""Support with no knowledge of LMs or programs: atomic writes, private state files, the event loop
runner, worker threads, sentinels, evaluation-slot lending, DSPy's spellings.

May import: ``pytest_dspex.errors`` only.
"""
