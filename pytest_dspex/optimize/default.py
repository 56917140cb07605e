"""The optimizer ``--dspex-compile`` runs when none is named.

Its own module: the plugin's option check reads it (through ``optimize.registry``) in every process,
and ``optimize.protocol``'s classes are needed only by a compile.
"""

from __future__ import annotations

__all__ = ["DEFAULT_OPTIMIZER"]

#: today's candidate search
DEFAULT_OPTIMIZER = "random-search"
