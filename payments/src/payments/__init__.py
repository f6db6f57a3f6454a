"""The payments service: charges for orders through a payment provider, never twice, and
refunds any payment whose order ends cancelled."""
