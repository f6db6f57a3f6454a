"""The auth service: users, sign-up, sign-in and the session cookie every service trusts."""
