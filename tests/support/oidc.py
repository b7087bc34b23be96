"""A real OpenID Connect issuer for the tests: an HTTP server on an ephemeral 127.0.0.1 port (a thread of
the test process) publishing discovery metadata and a JWKS, and signing real tokens with RSA and EC keys
made by `cryptography`. Keys can be added and withdrawn (rotation); the issuer can be made to fail."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "dicomd-tests"


@dataclass
class SigningKey:
    kid: str
    algorithm: str  # RS256 or ES256
    private: Any  # rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(
            jwt.algorithms.get_default_algorithms()[self.algorithm].to_jwk(self.private.public_key())
        )
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def make_key(algorithm: str = "RS256", kid: str | None = None) -> SigningKey:
    if algorithm == "RS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(algorithm)
    return SigningKey(kid or uuid.uuid4().hex[:12], algorithm, private)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """The issuer at `url`; `keys` are published in its JWKS (the first signs by default)."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = list(keys)
        self.failing = False  # answer 500 to everything (an issuer that is down)
        self.requests: list[str] = []  # paths asked for, in order
        self._lock = threading.Lock()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with issuer._lock:
                    issuer.requests.append(self.path)
                    failing, published = issuer.failing, [k.public_jwk() for k in issuer.keys]
                if failing:
                    self._send(500, {"error": "down"})
                elif self.path == "/.well-known/openid-configuration":
                    self._send(200, {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"})
                elif self.path == "/jwks":
                    self._send(200, {"keys": published})
                else:
                    self._send(404, {"error": "not found"})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def jwks_fetches(self) -> int:
        with self._lock:
            return self.requests.count("/jwks")

    def rotate(self, new: SigningKey, *, withdraw: str | None = None) -> None:
        """Publish `new` first (it signs by default from now on); withdraw the key `withdraw` names."""
        with self._lock:
            self.keys = [new, *(k for k in self.keys if k.kid != withdraw)]

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "user-1",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "roles": ["Data Owner"],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}  # None removes a claim

    def token(self, key: SigningKey | None = None, *, kid: str | None = None, **claims: Any) -> str:
        """A token signed by `key` (default: the first published key) with `claims` over the defaults;
        `kid` overrides the header's key id."""
        key = key or self.keys[0]
        headers = {"kid": kid or key.kid}
        return jwt.encode(self.claims(**claims), key.private, algorithm=key.algorithm, headers=headers)

    def unsigned_token(self, **claims: Any) -> str:
        """alg none, no signature."""
        header = {"alg": "none", "typ": "JWT", "kid": self.keys[0].kid}
        return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(self.claims(**claims)).encode())}."

    def hs256_with_public_key(self, **claims: Any) -> str:
        """HS256 with the published RSA key's PEM as the HMAC secret (the classic key-confusion attack)."""
        key = self.keys[0]
        header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
        signing_input = (
            f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(self.claims(**claims)).encode())}"
        )
        signature = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"


@contextlib.contextmanager
def running_issuer(*keys: SigningKey) -> Iterator[Issuer]:
    issuer = Issuer(list(keys) or [make_key("RS256")])
    try:
        yield issuer
    finally:
        issuer.close()
