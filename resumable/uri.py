"""Exact ports of JavaScript's ``encodeURI``/``decodeURI`` and Arvo's ``validateURI``; and
``redact_url``, which hides the secrets of a server URL before it is shown.

Arvo checks event fields (source, subject, to, dataschema, ...) with
``v === encodeURI(decodeURI(v))``; matching JS to the byte keeps both sides agreeing on
which strings are valid.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

__all__ = ["decode_uri", "encode_uri", "is_valid_uri", "redact_url"]

# Characters encodeURI leaves alone; urllib's quote always keeps A-Za-z0-9 and "_.-~".
_SAFE = ";,/?:@&=+$!*'()#"
# Reserved characters whose escapes decodeURI keeps as they are.
_RESERVED = frozenset(";/?:@&=+$,#")
_UNESCAPED = re.compile(r"[A-Za-z0-9;,/?:@&=+$\-_.!~*'()#]*").fullmatch
_HEX = frozenset("0123456789abcdefABCDEF")


def encode_uri(value: str) -> str:
    """Percent-encode ``value`` exactly as JS ``encodeURI`` does (UTF-8, uppercase hex).

    Raises ValueError for a surrogate code point, where JS throws URIError.
    """
    try:
        return quote(value, safe=_SAFE)
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"cannot URI-encode a lone surrogate {value[exc.start]!r} at index {exc.start}"
        ) from None


def _byte_at(value: str, i: int) -> int:
    """The byte of the ``%XX`` escape at ``value[i]``; ValueError if it is not one."""
    if i + 3 > len(value):
        raise ValueError(f"truncated percent-escape at index {i} in {value!r}")
    if value[i] != "%" or value[i + 1] not in _HEX or value[i + 2] not in _HEX:
        raise ValueError(f"malformed percent-escape at index {i} in {value!r}")
    return int(value[i + 1 : i + 3], 16)


def decode_uri(value: str) -> str:
    """Decode ``%XX`` escapes exactly as JS ``decodeURI`` does.

    Escapes of reserved characters (``;/?:@&=+$,#``) stay as written. Raises ValueError on a
    malformed escape or bytes that are not valid UTF-8, where JS throws URIError.
    """
    if "%" not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        pct = value.find("%", i)
        if pct < 0:
            out.append(value[i:])
            break
        out.append(value[i:pct])
        first = _byte_at(value, pct)
        if first < 0x80:
            char = chr(first)
            out.append(value[pct : pct + 3] if char in _RESERVED else char)
            i = pct + 3
            continue
        # Leading byte: count the high one bits to know the sequence length (2..4).
        if first >= 0xF8 or first < 0xC0:
            raise ValueError(f"invalid UTF-8 lead byte %{first:02X} at index {pct} in {value!r}")
        length = 2 if first < 0xE0 else 3 if first < 0xF0 else 4
        octets = bytearray((first,))
        for k in range(1, length):
            byte = _byte_at(value, pct + 3 * k)
            if byte & 0xC0 != 0x80:
                raise ValueError(
                    f"invalid UTF-8 continuation byte %{byte:02X} at index {pct + 3 * k} "
                    f"in {value!r}"
                )
            octets.append(byte)
        try:
            out.append(octets.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(
                f"percent-escapes at index {pct} in {value!r} are not valid UTF-8"
            ) from None
        i = pct + 3 * length
    return "".join(out)


def is_valid_uri(value: str) -> bool:
    """Arvo's ``validateURI``: true when ``encode_uri(decode_uri(value)) == value``."""
    if _UNESCAPED(value) is not None:
        return True
    try:
        return value == encode_uri(decode_uri(value))
    except ValueError:
        return False


_SECRET_PARAMETERS = ("password", "token", "secret")
"""A query parameter whose name holds one of these has its value hidden."""


def redact_url(url: str) -> str:
    """``url`` fit for messages, logs and reprs: its password and token replaced by ``***``.

    ``user:password@`` becomes ``user:***@``; a lone ``name@`` (NATS puts a token there) is
    hidden whole, ``***@``; query parameters named like a password, token or secret keep
    only their name. Scheme, hosts, ports, path and the other parameters stay as written.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon else f"***@{hosts}"
    query = "&".join(
        f"{pair.partition('=')[0]}=***" if _is_secret(pair.partition("=")[0]) else pair
        for pair in parts.query.split("&")
        if pair
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _is_secret(name: str) -> bool:
    lowered = unquote_plus(name).lower()
    return any(word in lowered for word in _SECRET_PARAMETERS)
