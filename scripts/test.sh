#!/usr/bin/env sh
# Installs everything the tests need into .venv and runs the whole suite (lint, types, tests).
# PostgreSQL tests run when DICOMD_TEST_POSTGRES_URL is set (and fail if it is set but unreachable); the
# object store tests start their own S3 (moto) and Azure Blob (Azurite) emulators.
set -eu
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# what the tests start besides dicomd (scripts/test-services.sh: Azurite, OHIF, Chromium, DCMTK, Orthanc).
# What cannot be installed here skips its tests on a developer's machine; in CI (CI=true) they fail instead
./scripts/test-services.sh || echo "test.sh: some test services are not installed (see above); their tests skip (and fail in CI)" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"
