"""Channel passwords: the log keeps a salted PBKDF2 hash, never the password (decision 11)."""

from __future__ import annotations

import hashlib
import hmac

PASSWORD_HASH_ITERATIONS = 2_000  # a join is on the hot path of a join storm
SALT_BYTES = 16


def hash_password(password: str, salt: bytes) -> bytes:
    """salt + PBKDF2-SHA256(password): what the log keeps instead of the password."""
    if len(salt) != SALT_BYTES:
        # password_matches reads the salt back as the first SALT_BYTES bytes; any other length
        # would store a hash that no password ever matches again.
        raise ValueError(f"the salt must be {SALT_BYTES} bytes, not {len(salt)}")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PASSWORD_HASH_ITERATIONS)
    return salt + digest


def password_matches(password: str, stored: bytes) -> bool:
    return hmac.compare_digest(hash_password(password, stored[:SALT_BYTES]), stored)
