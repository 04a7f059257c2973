"""Master keys and authenticated encryption for secrets at rest.

AES-256-GCM with a random 96-bit nonce; the record's id is the associated data, so a
ciphertext copied onto another record fails to decrypt. The keyring lives in
``DATA_DIR/master.keys`` (created on first run, mode 0600) or comes from
``TETHER_MASTER_KEY`` (base64 of 32 bytes). Rotation adds a new active key; old keys stay
until every secret has been re-encrypted under the new one.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "tv1"


class DecryptionFailed(Exception):
    """The ciphertext was altered, moved to another record, or its key is gone."""


@dataclass
class KeyRing:
    keys: dict[str, bytes]
    active: str
    path: Path | None = None
    _ciphers: dict[str, AESGCM] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._ciphers = {key_id: AESGCM(key) for key_id, key in self.keys.items()}

    @classmethod
    def load(cls, path: Path, env_key: str | None = None) -> KeyRing:
        if env_key:
            raw = base64.b64decode(env_key)
            if len(raw) != 32:
                raise ValueError("TETHER_MASTER_KEY must be base64 of exactly 32 bytes")
            return cls({"env": raw}, "env")
        if path.exists():
            data = json.loads(path.read_text())
            keys = {key_id: base64.b64decode(value) for key_id, value in data["keys"].items()}
            return cls(keys, data["active"], path)
        ring = cls({}, "", path)
        ring.add_key()
        return ring

    def add_key(self) -> str:
        """Make a fresh key active (and persist the ring); returns its id."""
        key_id = "k" + secrets.token_hex(4)
        self.keys[key_id] = AESGCM.generate_key(bit_length=256)
        self._ciphers[key_id] = AESGCM(self.keys[key_id])
        self.active = key_id
        self._save()
        return key_id

    def drop_unused(self, used: set[str]) -> None:
        for key_id in [k for k in self.keys if k not in used and k != self.active]:
            del self.keys[key_id]
            del self._ciphers[key_id]
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        payload = json.dumps(
            {"active": self.active, "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()}}
        )
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(payload)
        os.replace(temporary, self.path)

    def encrypt(self, plaintext: bytes, record_id: str) -> str:
        nonce = os.urandom(12)
        sealed = self._ciphers[self.active].encrypt(nonce, plaintext, record_id.encode())
        return f"{PREFIX}:{self.active}:{base64.b64encode(nonce + sealed).decode()}"

    def _reload(self) -> None:
        """Pick up a rotation done by another process (``tether vault rotate-key``)."""
        if self.path is not None and self.path.exists():
            fresh = KeyRing.load(self.path)
            self.keys, self.active, self._ciphers = fresh.keys, fresh.active, fresh._ciphers

    def decrypt(self, token: str, record_id: str) -> bytes:
        try:
            prefix, key_id, payload = token.split(":", 2)
            raw = base64.b64decode(payload)
            if key_id not in self._ciphers:
                self._reload()
            cipher = self._ciphers[key_id]
            if prefix != PREFIX:
                raise ValueError
            return cipher.decrypt(raw[:12], raw[12:], record_id.encode())
        except (ValueError, KeyError, InvalidTag):
            raise DecryptionFailed(f"cannot decrypt the secret of {record_id}") from None

    def derive(self, purpose: str) -> bytes:
        """A separate key for another job (token signing, placeholders), from the active key."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
            self.keys[self.active]
        )
