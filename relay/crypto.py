"""Encryption at rest for tenant secrets stored in Redis.

Values are sealed with AES-256-GCM under a key from ``RELAY_ENCRYPTION_KEYS``.
That setting lists one or more keys as ``ID:BASE64``, separated by commas. The
first key seals new values, and every listed key can open old ones. An
operator therefore rotates by putting a new key first, running ``relay
tenants reencrypt``, and then removing the old key.

A sealed value reads ``v1.<key ID>.<base64url of nonce and ciphertext>``. The
associated data names what the value is and whose (for example
``signing-secret:acme``), so a value copied into another field or another
tenant's hash does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.errors import SettingsError

NONCE_BYTES = 12
KEY_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class SealError(Exception):
    """A sealed value could not be opened: unknown key, or tampered with."""


@dataclass(frozen=True)
class Keyring:
    """The encryption keys from configuration, the sealing key first."""

    keys: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def parse(cls, text: str, name: str = "RELAY_ENCRYPTION_KEYS") -> Keyring:
        """Read ``ID:BASE64,ID:BASE64``; raise SettingsError naming what is wrong."""
        keys: list[tuple[str, bytes]] = []
        for index, item in enumerate(
            filter(None, (p.strip() for p in text.split(",")))
        ):
            key_id, sep, encoded = item.partition(":")
            if not sep or not _KEY_ID.match(key_id):
                raise SettingsError(
                    f"{name} entry {index + 1} must read ID:BASE64 with an ID of "
                    "letters, digits, '-' or '_' (at most 32)"
                )
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != KEY_BYTES:
                raise SettingsError(
                    f"{name} key {key_id!r} must be the base64 of exactly "
                    f"{KEY_BYTES} random bytes; make one with `relay secret "
                    "--encryption-key`"
                )
            if any(known == key_id for known, _ in keys):
                raise SettingsError(f"{name} lists key {key_id!r} twice")
            keys.append((key_id, raw))
        return cls(tuple(keys))

    def __repr__(self) -> str:
        return f"Keyring(ids={[key_id for key_id, _ in self.keys]})"

    def __bool__(self) -> bool:
        return bool(self.keys)

    @property
    def sealing_id(self) -> str:
        """The ID of the key that seals new values."""
        return self._require()[0]

    def seal(self, plaintext: str, context: str) -> str:
        """Encrypt ``plaintext``, bound to ``context``, with the first key."""
        key_id, key = self._require()
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), context.encode())
        payload = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"v1.{key_id}.{payload}"

    def open(self, value: str, context: str) -> str:
        """Decrypt a value that ``seal`` made with any configured key."""
        version, _, rest = value.partition(".")
        key_id, _, payload = rest.partition(".")
        if version != "v1" or not payload:
            raise SealError("not a sealed value")
        key = dict(self.keys).get(key_id)
        if key is None:
            raise SealError(
                f"sealed with key {key_id!r}, which RELAY_ENCRYPTION_KEYS does not list"
            )
        try:
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            opened = AESGCM(key).decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode()
            )
        except (binascii.Error, ValueError, InvalidTag):
            raise SealError(f"value does not open with key {key_id!r}") from None
        return opened.decode()

    def key_id_of(self, value: str) -> str:
        """Return the ID of the key a sealed value was made with."""
        return value.partition(".")[2].partition(".")[0]

    def _require(self) -> tuple[str, bytes]:
        if not self.keys:
            raise SettingsError(
                "RELAY_ENCRYPTION_KEYS must be set to store tenant secrets; make a "
                "key with `relay secret --encryption-key`"
            )
        return self.keys[0]


def new_key_text(key_id: str) -> str:
    """Return a fresh ``ID:BASE64`` entry for ``RELAY_ENCRYPTION_KEYS``."""
    return f"{key_id}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"
