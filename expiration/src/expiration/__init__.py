"""The expiration service: turns each order.created into an expiration.complete at expiresAt.

The timer is a JetStream message schedule, so it lives in the server, not in this process.
"""
