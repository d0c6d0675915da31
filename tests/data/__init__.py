"""Helpers shared by the data tests."""


def _flip_byte(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


# Damage done to a cache file (pytest.mark.parametrize's values and ids): the loader must read the source again.
CACHE_DAMAGE = {"garbage": lambda d: b"garbage", "truncated": lambda d: d[: len(d) // 2], "empty": lambda d: b"",
                "flipped-byte": _flip_byte}
