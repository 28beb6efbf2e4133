"""broker: a self-hostable, Plaid-compatible multi-party token exchange broker."""

__version__ = "0.1.0"
