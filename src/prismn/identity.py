"""Keys and signatures: a peer's Ed25519 identity, the coordinator's signing key, canonical signed bytes.

One key pair per process that must prove who it is. A peer's public key (64 hex characters) is what
its id is bound to at first join; the same 32-byte seed is the secret key of its Iroh endpoint, so
"accept only the signed upstream" means the same thing on both transports. Key files hold the seed as
hex, private to their owner (0600), created atomically.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from prismn.errors import PrismnError

PUBLIC_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
SIGNATURE_RE = re.compile(r"^[0-9a-f]{128}$")


class IdentityError(PrismnError):
    """A key file is unreadable, malformed or too open."""


class Identity:
    """An Ed25519 key pair; ``public`` is its public key as 64 lowercase hex characters."""

    def __init__(self, seed: bytes):
        if len(seed) != 32:
            raise IdentityError("an Ed25519 seed is 32 bytes")
        self._seed = bytes(seed)
        self._key = Ed25519PrivateKey.from_private_bytes(self._seed)
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    @classmethod
    def generate(cls) -> Identity:
        return cls(secrets.token_bytes(32))

    @classmethod
    def load_or_create(cls, path: str | Path) -> Identity:
        """The key kept at ``path``; a new one written there (0600, atomically) when none exists."""
        p = Path(path).expanduser()
        if p.exists():
            return cls._load(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        ident = cls.generate()
        write_private(p, ident._seed.hex() + "\n")
        return ident

    @classmethod
    def _load(cls, p: Path) -> Identity:
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            raise IdentityError(f"key file {p} is readable by others (mode {mode:o}): chmod 600 {p}")
        text = p.read_text().strip()
        if not re.fullmatch(r"[0-9a-f]{64}", text):
            raise IdentityError(f"key file {p} is not a 64-hex-character Ed25519 seed: remove it to make a new key")
        return cls(bytes.fromhex(text))

    def seed(self) -> bytes:
        """The 32 secret bytes (for a transport whose endpoint key is this identity, e.g. Iroh)."""
        return self._seed

    def sign(self, data: bytes) -> str:
        return self._key.sign(data).hex()

    def sign_json(self, obj: Any) -> str:
        return self.sign(canonical_bytes(obj))

    def __repr__(self) -> str:  # never the seed
        return f"Identity({self.public[:12]}…)"


def canonical_bytes(obj: Any) -> bytes:
    """The bytes a JSON object is signed as: sorted keys, no spaces, UTF-8 (both ends compute the same)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def verify(public: str, signature: str, data: bytes) -> bool:
    """True when ``signature`` (hex) is ``public``'s (hex) Ed25519 signature of ``data``."""
    if not (isinstance(public, str) and PUBLIC_KEY_RE.match(public)
            and isinstance(signature, str) and SIGNATURE_RE.match(signature)):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)).verify(bytes.fromhex(signature), data)
    except InvalidSignature:
        return False
    return True


def verify_json(public: str, signature: str, obj: Any) -> bool:
    try:
        data = canonical_bytes(obj)
    except (TypeError, ValueError):
        return False
    return verify(public, signature, data)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
