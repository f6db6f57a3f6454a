"""The chaos run: steady load on the local platform while a driver kills its processes.

``python -m ticketing_chaos`` (``make chaos``) starts the platform as ``make up`` does, drives
sign-ups, listings, edits, orders, payments, cancels and expiries over HTTP while it SIGKILLs
services and crashes NATS and PostgreSQL, lets the platform settle, then runs the invariant
checker (``python -m ticketing_chaos.check``) over every database and the event stream.
"""
