"""Shared machinery of the Ticketing services.

Each service imports what it needs from the submodules: ``settings``, ``errors``, ``auth``,
``db``, ``events``, ``messaging``, ``app`` and, in tests, ``testing``.
"""

import sys

# Every model here is a pydantic 2 one, and FastAPI no longer accepts any other. It still
# imports pydantic's v1 layer (1.5 MiB in every process) to look at each route's models, only
# to refuse a v1 one, and takes the layer's absence as "not one". So it is marked absent.
sys.modules.setdefault("pydantic.v1", None)  # type: ignore[arg-type]
