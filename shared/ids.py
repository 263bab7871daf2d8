"""Identifiers: a readable prefix plus a time-ordered, unguessable body."""

import base64
import functools
import os
import re
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


# RFC 4648 base32 spells 10 bytes as 16 digits, most significant first, as `_base32` does.
_FROM_RFC4648 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET)


def new_id(prefix: str) -> str:
    """`prefix_` + 10 chars of milliseconds + 16 random chars (ULID layout), 26 chars of body.

    Ids sort by creation time, so "newest first" never needs a second clock.
    """
    randomness = base64.b32encode(os.urandom(10)).decode().translate(_FROM_RFC4648)
    return f"{prefix}_{_millis_digits(time.time_ns() // 1_000_000)}{randomness}"


def new_ids(prefix: str, count: int) -> list[str]:
    """`count` ids as `new_id` makes them, their randomness drawn and spelt at once."""
    digits = base64.b32encode(os.urandom(10 * count)).decode().translate(_FROM_RFC4648)
    head = f"{prefix}_{_millis_digits(time.time_ns() // 1_000_000)}"
    return [head + digits[start : start + 16] for start in range(0, 16 * count, 16)]


@functools.lru_cache(maxsize=4)
def _millis_digits(millis: int) -> str:
    return _base32(millis, 10)


_BODY = re.compile(f"[{_ALPHABET}]{{26}}")


def is_id(prefix: str, value: str) -> bool:
    """Whether `value` has the shape of an id `new_id(prefix)` makes (exactly: no padding,
    no other case), so malformed ids are refused before any database compares them."""
    head, underscore, body = value.partition("_")
    return head == prefix and bool(underscore) and _BODY.fullmatch(body) is not None


def new_token() -> str:
    """An unguessable URL-safe secret (256 bits)."""
    return secrets.token_urlsafe(32)


def first_id_at(prefix: str, millis: int) -> str:
    """The smallest id `new_id(prefix)` makes at or after `millis` (ms since the epoch): ids
    made since a moment are those `>=` this one."""
    return f"{prefix}_{_base32(millis, 10)}{'0' * 16}"
