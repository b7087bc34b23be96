"""The audit trail: one structured event per access to PHI (who, what, when, outcome)."""
