#!/usr/bin/env sh
# Installs the object store emulators the tests start (tests/support/emulators.py) into .tools/ (git-ignored):
# Azurite (Azure Blob Storage) from npm. moto's S3 server comes with the test extras in .venv. GCS has no
# emulator that obstore can write to (see tests/support/emulators.py). Idempotent: a no-op when installed.
set -eu
cd "$(dirname "$0")/.."
AZURITE_VERSION=3.37.0
if ! grep -qs "\"version\": \"$AZURITE_VERSION\"" .tools/node_modules/azurite/package.json \
  || [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "test-services: npm (and node) are needed to install Azurite, e.g. apt-get install npm" >&2
    exit 1
  fi
  mkdir -p .tools
  npm install --prefix .tools --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION"
fi
