"""resumable.uri against JavaScript's encodeURI/decodeURI and Arvo's validateURI; redact_url."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resumable.uri import decode_uri, encode_uri, is_valid_uri, redact_url

# (input, encodeURI(input), decodeURI(input), validateURI(input)) recorded once with node 20;
# None means JS threw URIError.
JS_CASES: list[tuple[str, str | None, str | None, bool]] = [
    ("", "", "", True),
    ("hello world", "hello%20world", "hello world", False),
    ("a%20b", "a%2520b", "a b", True),
    ("a%2Fb", "a%252Fb", "a%2Fb", False),
    ("a%2fb", "a%252fb", "a%2fb", False),
    ("%41", "%2541", "A", False),
    ("%c3%a9", "%25c3%25a9", "é", False),
    ("%C3%A9", "%25C3%25A9", "é", True),
    ("é", "%C3%A9", "é", False),
    ("café au lait", "caf%C3%A9%20au%20lait", "café au lait", False),
    ("😀", "%F0%9F%98%80", "😀", False),
    ("emoji %F0%9F%98%80", "emoji%20%25F0%259F%2598%2580", "emoji 😀", False),
    ("%f0%9f%98%80", "%25f0%259f%2598%2580", "😀", False),
    (
        "eJyrVkrLz1eyUkpKLFKqBQAc3QQy",
        "eJyrVkrLz1eyUkpKLFKqBQAc3QQy",
        "eJyrVkrLz1eyUkpKLFKqBQAc3QQy",
        True,
    ),
    ("eJx+b/c==", "eJx+b/c==", "eJx+b/c==", True),
    ("#/contracts/x/1.0.0", "#/contracts/x/1.0.0", "#/contracts/x/1.0.0", True),
    ("%", "%25", None, False),
    ("%2", "%252", None, False),
    ("%zz", "%25zz", None, False),
    ("%%", "%25%25", None, False),
    ("100%", "100%25", None, False),
    ("a%2", "a%252", None, False),
    ("%E9", "%25E9", None, False),
    ("%C3", "%25C3", None, False),
    ("%C3%28", "%25C3%2528", None, False),
    ("%C3%", "%25C3%25", None, False),
    ("%ED%A0%80", "%25ED%25A0%2580", None, False),
    ("%F4%90%80%80", "%25F4%2590%2580%2580", None, False),
    ("%C0%AF", "%25C0%25AF", None, False),
    ("%E0%80%AF", "%25E0%2580%25AF", None, False),
    ("%80", "%2580", None, False),
    ("%FF", "%25FF", None, False),
    ("%F8%88%80%80%80", "%25F8%2588%2580%2580%2580", None, False),
    ("%E2%82", "%25E2%2582", None, False),
    ("%e2%82%ac", "%25e2%2582%25ac", "€", False),
    ("%23", "%2523", "%23", False),
    (
        "%3B%2C%2F%3F%3A%40%26%3D%2B%24%23",
        "%253B%252C%252F%253F%253A%2540%2526%253D%252B%2524%2523",
        "%3B%2C%2F%3F%3A%40%26%3D%2B%24%23",
        False,
    ),
    ("%2c", "%252c", "%2c", False),
    ("%25", "%2525", "%", True),
    ("%2525", "%252525", "%25", True),
    ("a%20b%25", "a%2520b%2525", "a b%", True),
    (
        "http://example.com/p?q=1&r=2#frag",
        "http://example.com/p?q=1&r=2#frag",
        "http://example.com/p?q=1&r=2#frag",
        True,
    ),
    ("[::1]", "%5B::1%5D", "[::1]", False),
    ("tab\there\nnl", "tab%09here%0Anl", "tab\there\nnl", False),
    ("\x00\x7f", "%00%7F", "\x00\x7f", False),
    ("~user/!*'()", "~user/!*'()", "~user/!*'()", True),
    ('<>"{}|\\^`', "%3C%3E%22%7B%7D%7C%5C%5E%60", '<>"{}|\\^`', False),
    ("\x80߿ࠀ\uffff", "%C2%80%DF%BF%E0%A0%80%EF%BF%BF", "\x80߿ࠀ\uffff", False),
    ("𐀀\U0010ffff", "%F0%90%80%80%F4%8F%BF%BF", "𐀀\U0010ffff", False),
    ("\ud800", None, "\ud800", False),
    ("a\udc00b", None, "a\udc00b", False),
    ("%uD800", "%25uD800", None, False),
    ("com.test.service", "com.test.service", "com.test.service", True),
    ("a b%20c", "a%20b%2520c", "a b c", False),
    ("%F0%9F%98", "%25F0%259F%2598", None, False),
    ("%41%", "%2541%25", None, False),
    ("%4G", "%254G", None, False),
]


@pytest.mark.parametrize(("value", "encoded", "decoded", "valid"), JS_CASES)
def test_encode_uri_matches_js(
    value: str, encoded: str | None, decoded: str | None, valid: bool
) -> None:
    if encoded is None:
        with pytest.raises(ValueError, match="surrogate"):
            encode_uri(value)
    else:
        assert encode_uri(value) == encoded


@pytest.mark.parametrize(("value", "encoded", "decoded", "valid"), JS_CASES)
def test_decode_uri_matches_js(
    value: str, encoded: str | None, decoded: str | None, valid: bool
) -> None:
    if decoded is None:
        with pytest.raises(ValueError):
            decode_uri(value)
    else:
        assert decode_uri(value) == decoded


@pytest.mark.parametrize(("value", "encoded", "decoded", "valid"), JS_CASES)
def test_is_valid_uri_matches_js(
    value: str, encoded: str | None, decoded: str | None, valid: bool
) -> None:
    assert is_valid_uri(value) is valid


def _full_check(value: str) -> bool:
    try:
        return value == encode_uri(decode_uri(value))
    except ValueError:
        return False


@given(st.text())
def test_encoded_text_is_valid_and_decodes_back(text: str) -> None:
    encoded = encode_uri(text)
    assert is_valid_uri(encoded)
    assert decode_uri(encoded) == text


# Strings dense in escapes and reserved characters, to hit both the fast and the slow path.
_URI_ALPHABET = st.sampled_from(
    [*"%%%%0123456789abcdefABCDEFxZ;/?:@&=+$,#-_.!~*'() [é", "%C3%A9", "%F0%9F%98%80"]
)


@given(st.lists(_URI_ALPHABET, max_size=12).map("".join))
def test_fast_path_agrees_with_full_check(value: str) -> None:
    assert is_valid_uri(value) is _full_check(value)


@pytest.mark.parametrize("value", ["\ud800", "a\udfffb", "\udc00\ud800"])
def test_lone_surrogates_are_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="surrogate"):
        encode_uri(value)
    assert not is_valid_uri(value)


def test_decode_error_names_position() -> None:
    with pytest.raises(ValueError, match="index 3"):
        decode_uri("abc%zz")


# ---------------------------------------------------------------------------------------------
# redact_url: one redaction for every server URL shown in a message, log or repr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://alice:secret@db:5432/app", "postgresql://alice:***@db:5432/app"),
        ("redis://:secret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("nats://s3cr3t-token@queue:4222", "nats://***@queue:4222"),
        ("nats://u:p@one:4222,two:4222", "nats://u:***@one:4222,two:4222"),
        ("postgresql://a:p@ss@db/app", "postgresql://a:***@db/app"),  # an unescaped @
        (
            "postgresql://db/app?user=a&password=secret&sslmode=require",
            "postgresql://db/app?user=a&password=***&sslmode=require",
        ),
        ("redis://cache?auth_token=secret&db=1", "redis://cache?auth_token=***&db=1"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("sqlite:///relative.db", "sqlite:///relative.db"),
        ("http://[::1", "<unparseable URL>"),
    ],
)
def test_redact_url_hides_passwords_and_tokens_and_keeps_hosts_and_ports(
    url: str, shown: str
) -> None:
    assert redact_url(url) == shown
    assert "secret" not in redact_url(url) and "s3cr3t" not in redact_url(url)
