#!/usr/bin/env sh
# Installs everything the tests need into .venv and runs the whole suite (lint, types, tests).
# PostgreSQL tests run when DICOMD_TEST_POSTGRES_URL is set (and fail if it is set but unreachable).
set -eu
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"
