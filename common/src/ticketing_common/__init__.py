"""Shared machinery of the Ticketing services.

Each service imports what it needs from the submodules: ``settings``, ``errors``, ``auth``,
``db``, ``events``, ``messaging``, ``app`` and, in tests, ``testing``.
"""
