"""The pytest plugin (entry point ``dspex``)."""
