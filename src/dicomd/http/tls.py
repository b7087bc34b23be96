"""TLS on the listener: a server SSLContext from the certificate and key files, rebuilt when they change.

Each worker holds one `CertificateFiles`; every new connection asks it for the current context, and it
looks at the files (one stat each) at most once per `CHECK_INTERVAL`. A certificate renewed on disk (in
place or by renaming a new file over the old one) is served to new connections within about a second,
without a restart; connections already open keep the certificate they began with. A pair that does not
load (a renewal half done: the new certificate beside the old key) leaves the previous context in use
until the pair loads.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from dataclasses import dataclass

from dicomd.config import ConfigError, Settings

log = logging.getLogger("dicomd.http.tls")

CHECK_INTERVAL = 1.0  # seconds between looks at the certificate files


@dataclass(frozen=True)
class _Version:
    """What changes when a file is rewritten in place or replaced by a rename."""

    cert: tuple[int, int, int]
    key: tuple[int, int, int]


def _file_version(path: str) -> tuple[int, int, int]:
    status = os.stat(path)
    return status.st_ino, status.st_size, status.st_mtime_ns


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for HTTP/1.1 over TLS 1.2 or later (raises OSError / ssl.SSLError)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert_file, key_file)
    return context


class CertificateFiles:
    """The current server context for a certificate and key file pair, reloaded when they change."""

    def __init__(self, cert_file: str, key_file: str, check_interval: float = CHECK_INTERVAL) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.check_interval = check_interval
        self._version = self._current_version()
        self._context = server_context(cert_file, key_file)  # start-up: a bad pair is an error
        self._checked = time.monotonic()
        self._failing = False  # a reload has failed: log once until one succeeds

    def _current_version(self) -> _Version:
        return _Version(_file_version(self.cert_file), _file_version(self.key_file))

    def context(self) -> ssl.SSLContext:
        """The context for a new connection: the files' newest loadable version."""
        now = time.monotonic()
        if now - self._checked >= self.check_interval:
            self._checked = now
            self._reload_if_changed()
        return self._context

    def _reload_if_changed(self) -> None:
        try:
            version = self._current_version()
            if version == self._version:
                return
            context = server_context(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:  # SSLError is an OSError; named for the reader
            if not self._failing:
                log.warning("TLS certificate files changed but do not load (%s); keeping the old ones", exc)
                self._failing = True
            return
        self._context, self._version, self._failing = context, version, False
        log.info("TLS certificate reloaded")


def tls_enabled(settings: Settings) -> bool:
    return bool(settings.tls_cert_file or settings.tls_key_file)


def check_tls_settings(settings: Settings) -> None:
    """Start-up check: both files or neither, and they load as a pair; ConfigError otherwise."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if not cert and not key:
        return
    if not cert or not key:
        given, missing = ("tls_cert_file", "tls_key_file") if cert else ("tls_key_file", "tls_cert_file")
        raise ConfigError(f"setting '{given}' needs '{missing}' as well (TLS takes both files)")
    source = settings.sources.get("tls_cert_file", "settings")
    try:
        server_context(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"settings 'tls_cert_file' and 'tls_key_file' (from {source}): not a certificate chain and its "
            f"private key in PEM ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"settings 'tls_cert_file' and 'tls_key_file' (from {source}): cannot read "
            f"{exc.filename or 'a file'}: {exc.strerror}"
        ) from None


def certificate_files(settings: Settings) -> CertificateFiles | None:
    """A worker's certificate files, or None without TLS."""
    if not tls_enabled(settings):
        return None
    return CertificateFiles(settings.tls_cert_file, settings.tls_key_file)
