"""The headers every page carries: a nonce-based Content-Security-Policy and the rest.

Scripts run only from our origin and only with the page's nonce (no inline handlers anywhere);
Stripe's origins are allowed only when its publishable key is set.
"""

from __future__ import annotations

import secrets

from client.settings import ClientSettings

STRIPE_SCRIPT = "https://js.stripe.com"
STRIPE_FRAMES = "https://js.stripe.com https://hooks.stripe.com"
STRIPE_API = "https://api.stripe.com"
HSTS = "max-age=63072000; includeSubDomains"


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def content_security_policy(nonce: str, settings: ClientSettings) -> str:
    stripe = settings.stripe_publishable_key is not None
    directives = {
        "default-src": "'self'",
        "script-src": f"'self' 'nonce-{nonce}'" + (f" {STRIPE_SCRIPT}" if stripe else ""),
        "style-src": "'self'",
        "img-src": "'self' data:",
        "connect-src": "'self'" + (f" {STRIPE_API}" if stripe else ""),
        "frame-src": STRIPE_FRAMES if stripe else "'none'",
        "form-action": "'self'",
        "base-uri": "'none'",
        "object-src": "'none'",
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def security_headers(nonce: str, settings: ClientSettings) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": content_security_policy(nonce, settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "strict-origin-when-cross-origin",
        "X-Frame-Options": "DENY",
    }
    if settings.cookie_secure:
        # Secure cookies mean the site is served over HTTPS: keep browsers on it.
        headers["Strict-Transport-Security"] = HSTS
    return headers
