"""Local mode: the whole Ticketing platform on one machine, with one command.

``python -m ticketing_local`` starts an embedded PostgreSQL (one database per service) and NATS
JetStream server, migrates and starts every service as its own process, and serves them all on
one origin through an edge (Caddy) that routes by the same table as the Kubernetes Ingress.
"""
