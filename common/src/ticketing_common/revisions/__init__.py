"""Revisions whose body every service's chain shares.

Each module here is the ``upgrade``/``downgrade`` of one such revision; a service's migration
imports both and keeps only its own ``revision`` and ``down_revision``, so the body is written once.
"""
