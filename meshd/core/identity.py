"""Node identity: one Ed25519 key per node, and the libp2p peer id derived from it.

Rules:
- Pure computation (no files, no clock, no randomness except where a caller
  passes it in). Key *files* are handled in ``meshd.config``.
- The peer id is the libp2p peer id of the Ed25519 public key: the protobuf
  ``PublicKey{Type=Ed25519, Data=<32 bytes>}`` wrapped in an identity multihash,
  base58btc-encoded (``12D3KooW...``). ``specs/PROTOCOL.md`` states this so a
  third party can derive it.
- Verification never raises on bad input: it returns False.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# protobuf: field 1 (KeyType) varint = 1 (Ed25519); field 2 (Data) length 32.
_PB_ED25519_PREFIX = b"\x08\x01\x12\x20"
# identity multihash: code 0x00, length 36.
_MH_IDENTITY_PREFIX = b"\x00\x24"
KEY_MEMO_ENTRIES = 4_096
"""Public keys whose peer id and parsed key object are remembered (each
received message derives both from its signer's key; a mesh repeats the
same few keys). Pure functions of the key, so a memo never changes a result."""


def b58encode(data: bytes) -> str:
    """Base58btc (Bitcoin alphabet) encoding."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\x00"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; raises ValueError on a foreign character."""
    n = 0
    for ch in text:
        idx = _B58_ALPHABET.find(ch)
        if idx < 0:
            raise ValueError(f"invalid base58 character {ch!r}")
        n = n * 58 + idx
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\x00" * pad + body


@lru_cache(maxsize=KEY_MEMO_ENTRIES)
def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id (base58 string) of a raw 32-byte Ed25519 public key
    (remembered for the last :data:`KEY_MEMO_ENTRIES` keys)."""
    if len(public_key) != PUBLIC_KEY_LEN:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return b58encode(_MH_IDENTITY_PREFIX + _PB_ED25519_PREFIX + public_key)


def public_key_from_peer_id(peer_id: str) -> bytes | None:
    """Recover the Ed25519 public key embedded in a peer id, or None if it has none."""
    try:
        raw = b58decode(peer_id)
    except ValueError:
        return None
    prefix = _MH_IDENTITY_PREFIX + _PB_ED25519_PREFIX
    if len(raw) != len(prefix) + PUBLIC_KEY_LEN or not raw.startswith(prefix):
        return None
    return raw[len(prefix) :]


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data`` by ``public_key``."""
    if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        _public_key(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@lru_cache(maxsize=KEY_MEMO_ENTRIES)
def _public_key(public_key: bytes) -> Ed25519PublicKey:
    """The key object of 32 raw bytes (remembered; an invalid key raises
    ValueError, which is not)."""
    return Ed25519PublicKey.from_public_bytes(public_key)


@dataclass(frozen=True, eq=False)
class Identity:
    """A node's signing identity. Build with :meth:`generate` or :meth:`from_private_bytes`."""

    _key: Ed25519PrivateKey
    public_key: bytes
    peer_id: str

    @classmethod
    def from_private_bytes(cls, seed: bytes) -> Identity:
        """From the raw 32-byte Ed25519 private key (seed). ValueError if malformed."""
        if len(seed) != 32:
            raise ValueError("an Ed25519 private key is 32 bytes")
        key = Ed25519PrivateKey.from_private_bytes(seed)
        pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(key, pub, peer_id_from_public_key(pub))

    @classmethod
    def generate(cls) -> Identity:
        """A fresh key from the OS CSPRNG."""
        return cls.from_private_bytes(
            Ed25519PrivateKey.generate().private_bytes(
                Encoding.Raw, PrivateFormat.Raw, NoEncryption()
            )
        )

    @classmethod
    def from_seed_int(cls, n: int) -> Identity:
        """Deterministic identity for simulations and tests (never for real nodes)."""
        return cls.from_private_bytes(n.to_bytes(32, "big"))

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"Identity({self.peer_id})"
