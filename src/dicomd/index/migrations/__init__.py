"""Alembic migrations of the dicomd index (run by Index.migrate(); a package so it ships in wheels)."""
