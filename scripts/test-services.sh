#!/usr/bin/env sh
# Installs what the tests start besides dicomd, into .tools/ (git-ignored) unless said otherwise:
# - Azurite (Azure Blob Storage emulator, tests/support/emulators.py) from npm. moto's S3 server comes with
#   the test extras in .venv. GCS has no emulator that obstore can write to (see tests/support/emulators.py).
# - OHIF Viewer 3 (tests/support/ohif.py): the npm package @ohif/app ships its built viewer in dist/, which
#   is all the browser test serves: `npm pack` fetches that one package (integrity-checked) and it is
#   unpacked into .tools/ohif-app/. (A plain `npm install` of it would also resolve its build-time
#   dependencies, hundreds of packages the built dist/ does not use.)
# - From Debian's packages (apt-get needs root: otherwise run the printed command yourself):
#   Chromium and ChromeDriver for the browser test (tests/support/browser.py; /usr/bin/chromium,
#   /usr/bin/chromedriver), DCMTK (echoscu, storescu, findscu, movescu, getscu, storescp) as the DIMSE
#   gateway's peer, and Orthanc with its DICOMweb plugin as a DICOMweb client of dicomd
#   (tests/e2e/test_orthanc_rendered.py).
# Idempotent: a no-op when everything is installed. Each part is tried; the exit status is 1 when any
# failed (the tests of what is missing skip on a developer's machine and fail in CI).
set -u
cd "$(dirname "$0")/.."
AZURITE_VERSION=3.37.0
OHIF_VERSION=3.13.2
failed=""

have_npm() {
  if ! command -v npm >/dev/null 2>&1; then
    echo "test-services: npm (and node) are needed to install $1, e.g. apt-get install npm" >&2
    return 1
  fi
}

install_azurite() {
  if grep -qs "\"version\": \"$AZURITE_VERSION\"" .tools/node_modules/azurite/package.json \
    && [ -x .tools/node_modules/.bin/azurite-blob ]; then
    return 0
  fi
  have_npm Azurite || return 1
  mkdir -p .tools
  npm install --prefix .tools --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION"
}

install_ohif() {
  if grep -qs "\"version\": \"$OHIF_VERSION\"" .tools/ohif-app/package.json \
    && [ -f .tools/ohif-app/dist/index.html ] && [ -f .tools/ohif-app/dist/app-config.js ]; then
    return 0
  fi
  have_npm "OHIF (@ohif/app)" || return 1
  mkdir -p .tools
  work=$(mktemp -d .tools/ohif-download.XXXXXX) || return 1
  # unpack beside the old copy, then swap: an interrupted run never leaves a half-unpacked viewer behind
  if npm pack --pack-destination "$work" --loglevel=error "@ohif/app@$OHIF_VERSION" >/dev/null \
    && tar -xzf "$work/ohif-app-$OHIF_VERSION.tgz" -C "$work" \
    && [ -f "$work/package/dist/index.html" ]; then
    rm -rf .tools/ohif-app && mv "$work/package" .tools/ohif-app && rm -rf "$work"
  else
    rm -rf "$work"
    echo "test-services: could not download @ohif/app@$OHIF_VERSION with npm pack" >&2
    return 1
  fi
}

apt_updated=""

# install_debian NAME FILE PACKAGE...: the packages, unless FILE exists already
install_debian() {
  name=$1 file=$2
  shift 2
  if [ -e "$file" ]; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "test-services: $name is missing; as root run: apt-get install -y $*" >&2
    return 1
  fi
  if [ -z "$apt_updated" ]; then
    apt-get update -qq || return 1
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" || return 1
  # Orthanc's package starts its own service (on 8042/4242); the tests start their own Orthanc
  if [ "$name" = Orthanc ]; then
    service orthanc stop >/dev/null 2>&1 || true
  fi
}

install_chromium() {
  install_debian Chromium /usr/bin/chromium chromium chromium-driver \
    && install_debian ChromeDriver /usr/bin/chromedriver chromium-driver
}

install_azurite || failed="$failed Azurite"
install_ohif || failed="$failed OHIF"
install_chromium || failed="$failed Chromium"
install_debian DCMTK /usr/bin/storescu dcmtk || failed="$failed DCMTK"
install_debian Orthanc /usr/share/orthanc/plugins/libOrthancDicomWeb.so orthanc orthanc-dicomweb \
  || failed="$failed Orthanc"
if [ -n "$failed" ]; then
  echo "test-services: not installed:$failed (their tests skip, and fail in CI)" >&2
  exit 1
fi
