"""Authentication (who is calling: OIDC bearer tokens, API keys) and authorisation (what they may do)."""
