"""resumable.subject against subjects made by Arvo's own codec."""

from __future__ import annotations

import base64
import json
import uuid
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resumable.subject import (
    Subject,
    SubjectError,
    encode_subject,
    is_subject,
    new_subject,
    parse_subject,
    subject_from_parent,
)
from resumable.uri import is_valid_uri

# (subject, Arvo's encoding, node:zlib encoding). Arvo's encoding was made with node 20 as
# arvo-core does it: base64(pako.deflate(TextEncoder.encode(JSON.stringify(content)))).
# node's own zlib (Chromium's fork) picks different matches, so its bytes differ; older
# arvo-core releases used it, so those must still parse.
ARVO_SUBJECTS: list[tuple[Subject, str, str]] = [
    (
        Subject(
            name="com.test.orc",
            version="1.0.0",
            execution_id="3f1c9a52-7d1e-4b0a-9c1e-2f6b8d9e0a11",
            initiator="com.test.init",
            domain=None,
            meta={},
        ),
        (
            "eJxFjUsKwzAMBe+idWzs9OvcRrEVKohtcJRSCL571XbR3WMG5h1QW3zQJg2lNpgOKJgJJog1W1Fu1cMAT2ob"
            "16LCW2cd9AHoRXGXLzyAk6rT4mPAy2huyZM5zw5NiLrG5TrfUyCH3muLCwv/7v43H6gu1YysxbKvq35kEtR8"
            "72/rWzY2"
        ),
        (
            "eJxFzU0KwyAQBtC7fGsVTX/jbSY6oUJUMJNSEO9e2i66fZvXUVt48C6NpDb4jkKZ4RFqNsK7mNoCFJ7c9lQL"
            "PJyxxmIo8IvDIV/sSBEep9WFmS6TvkXH+rxY0nNwrKf1utzjzJacg0IqSdKv+zcfhEKsmVKBL8e2DYXMQvB9"
            "jDfrWzY2"
        ),
    ),
    (
        Subject(
            name="arvo.orc.billing",
            version="2.3.4",
            execution_id="b7e0c2a4-5d6f-4e8a-9b1c-0d2e3f4a5b6c",
            initiator="com.acme.api",
            domain="analytics.eu1",
            meta={"redirectto": "com.acme.api"},
        ),
        (
            "eJxdzd0OgjAMhuF76TFb+Bmo3E3XFW3CNjMG0RDu3aFnnvZJv3eHmOjBS06YY4Jxh4CeYQRMW9TFtJV5lnCH"
            "CjZOi8RQsNWdNnBUwC+mNX+PO4grZC9cU4tG9W6YlOErqpttSNWu5W4y2NuBypYEyfJLAkWvkTxrfEohFz3K"
            "WcGA8zsLLZrX5qx5zniGEjtJTDnH/+/j+AAEFkSC"
        ),
        (
            "eJxdzVsOgjAQRuG9/M/QcFfZzXQ66CS0NaUQDWHvBn3z9SQn346Y+CFLTpRjwrgjkBeMoLRFExMbq/Os4Y4C"
            "m6RFY8CIxrSmw1FAXsJr/sYd6jDCXqTihrqyd8NUdnKl8mZrLivXSDt11NuBUUCDZv2R4OgNsRdDT0UBFz3p"
            "qVCg+Z2VFyNrfWpeMp1QEqdJOOf4fx/HBwQWRII="
        ),
    ),
    (
        Subject(
            name="arvo.orc.i18n",
            version="1.0.0",
            execution_id="exec-42",
            initiator="com.test.init",
            domain=None,
            meta={
                "greeting": "héllo wörld",
                "emoji": "😀🚀",
                "cjk": "漢字かな",
                "tricky": 'a"b\\c\n\td\u2028\u0001\u007f',
            },
        ),
        (
            "eJwljj1uwkAQha8STQ2rdUSBOMs2m/UIBu+PtIwhkWXF1DlAojSWqCBSWio6bhIUao7AOGm/b95700DKboEr"
            "zpZThlkD0QaEGdi8TkqcomIaYQRrzCtKUUyhtNLQjgCf0dX8BxugUtRAxpNHOadITP+V4FJQLBNqgOLKFCxJ"
            "KNbeS01AtkPDPCMyxbkkFueD9+lhcz5mX0oCQ1qS8Fv/0d36z06QW1YCrqfd7/f7Zft22X4J5Eyuehm+N/Bk"
            "jDPRcPnT7U2ttS5eoW3vMbxX/Q=="
        ),
        (
            "eJwlzr1KA0EUhuFbka8eh1mxkLmWacbZQ3KS+YHZs1FZFje1F6DYBKxUsLWyy50YtM4lyMb2KV7eAaWGJXVS"
            "vZQKOyD7RLDwdVN0qUFzc5WhsKHaccmwaLTRBqMC3VLo5YQDuIU9yfnlBRQ4s/B/EqEkLdSJnhEKbUmeM2zu"
            "YxwVEomfC4tKJJwXsFju32IsZzf7zxpbKFAqK4bFcfc0HXfPExTCag2L36+Xn4/Hw/bhsH2HglQO67v53uHa"
            "ueCyk/Z7enW9Maa5xzj+ATG8V/0="
        ),
    ),
    (
        Subject(
            name="com.test.keys",
            version="10.20.30",
            execution_id="keys-1",
            initiator="com.test.init",
            domain="x",
            # Insertion order as written in the JS source; JSON.stringify hoists index keys.
            meta={
                "b": "B",
                "10": "ten",
                "2": "two",
                "01": "zero-one",
                "4294967295": "too-big",
                "4294967294": "max",
                "": "empty",
                "a": "A",
            },
        ),
        (
            "eJxNjcESgjAMRP8lZ2FaRB246Z8UyGjHaeOUqCDDv7vVg16S7dvsdiFJ/YVHTU4lUbtQdIGppV5CqeDlleeR"
            "NvTgNHqJcKwpK1NuDa0b4on7u374Qn6Am88Li4CPXv239FeWIbxBgvO5a8olgdXlfAWgT4FvTZYcIeuqqZv9"
            "ARMouAmogzphGwvx4iSFRP4/3eW0SNH5MzAeHG46Q+IbOtK6vgEjmUg6"
        ),
        (
            "eJxNjMFOwzAQBf9lzk7khADK3uBP3HQFFrIXOS6kjfLvleEAt6fRm9mxsrzrWkuoVpCdHJIiLJb6qmvtP/S6"
            "4vjSskbLCIPvR98/eA6Hbrpc6g/fiWeEdu8GHDHHGn+jf7EGcZwthdhaW4skraH5I0L9NhyDb1Mzjmmcp/np"
            "eZwnhBQ2HCeEVxx+QLhpsc6y/r8+NtusO8U3HAiaPusVR0B44TjuI5lIOg=="
        ),
    ),
    (
        Subject(
            name="com.test.child",
            version="0.0.0",
            execution_id="a" * 40 + "-" + "b" * 40,
            initiator="arvo.orc.parent",
            domain="a.b.c",
            meta={"redirectto": "arvo.orc.parent", "trace": "abc" * 90, "note": "x" * 300},
        ),
        (
            "eJztkEEKw0AIRe/iOpWucxvjCBE6YzE2BELuXqeFrrrIAfJ19T/i0x3MeZYlnMIcxh0aVYER2CpG+sizPgoM"
            "sIovai2jO2bBMYBswq/4mDtoyYhO6jadVC7WpqFfOiBfDZMYn+TSItNilbRTEU7InapKUAdyKerCEfZ3MC/m"
            "fihNfPWv8zHNov9lu3RacBxv0kZRNA=="
        ),
        (
            "eJztkEEKwzAMBP+yZ9fk7N8osqCC2iqKGgIhfy9uoace8oAMexIszGqHOd9lCacwR9nRqQkK2FoOWSLzXR8V"
            "Cav4otZRMOUpTzgSZBN+xee4QysK6CS3+SRI0K6hXzuQr5bNOT/JpQcSqjXSYUV5zjysmgQNIZeqLhxhf4vh"
            "xGMozXzlFyR0i/GX7eI0OI430kZRNA=="
        ),
    ),
    (
        Subject(
            name="a1.b2.c3.d4",
            version="0.1.0",
            execution_id="0",
            initiator="z.z.z",
            domain=None,
            meta={"k": ""},
        ),
        (
            "eJwljEEOgzAMBP+yZ2QB7YnfuImlWiWJFExVEeXvGKq9zc5uQ6nhLZtVtlKxNGROggU80Wum8KD4xICv1E1L"
            "dj7SRCP6APlJ2O2GDRqvykXNavq/wkEeZ7EkVtfyvq4+TGJ8bT6uoPcThmEoxA=="
        ),
        (
            "eJwljEEKwyAQAP8yZ1mStid/Y3Wh0qhgTCmKfy9JrzPMDEr1L91bda1U7CC7pFjcKs+b+LuEB4aP1j2WjGWR"
            "VRamQb/qj3bBQQynwhBzbPG/okuXjiGU5GLG5mPbpiFpc2fzxsKcP4ZhKMQ="
        ),
    ),
]


@pytest.mark.parametrize(("subject", "arvo", "node_zlib"), ARVO_SUBJECTS)
def test_encoding_is_byte_identical_to_arvo(subject: Subject, arvo: str, node_zlib: str) -> None:
    assert encode_subject(subject) == arvo


@pytest.mark.parametrize(("subject", "arvo", "node_zlib"), ARVO_SUBJECTS)
def test_parses_arvo_subjects(subject: Subject, arvo: str, node_zlib: str) -> None:
    assert parse_subject(arvo) == subject
    assert parse_subject(node_zlib) == subject
    assert is_subject(arvo)
    assert is_valid_uri(arvo)


def test_json_key_order() -> None:
    subject = ARVO_SUBJECTS[3][0]
    content = zlib.decompress(base64.b64decode(encode_subject(subject))).decode()
    assert content.startswith('{"orchestrator":{"name":"com.test.keys","version":"10.20.30"},')
    assert '"execution":{"id":"keys-1","initiator":"com.test.init","domain":"x"},' in content
    assert list(json.loads(content)["meta"]) == [
        "2", "10", "4294967294", "b", "01", "4294967295", "", "a"
    ]  # fmt: skip


_NAME = st.from_regex(r"[a-z0-9]{1,6}(\.[a-z0-9]{1,6}){2,4}", fullmatch=True)
_VERSION = st.tuples(*[st.integers(0, 10**6)] * 3).map(lambda v: ".".join(map(str, v)))
_SUBJECTS = st.builds(
    Subject,
    name=_NAME,
    version=_VERSION,
    execution_id=st.text(min_size=1).filter(lambda s: ";" not in s),
    initiator=_NAME,
    domain=st.none() | st.from_regex(r"[a-z0-9.]{1,20}", fullmatch=True),
    meta=st.dictionaries(st.text(), st.text(), max_size=6),
)


@given(_SUBJECTS)
def test_round_trip(subject: Subject) -> None:
    encoded = encode_subject(subject)
    assert parse_subject(encoded) == subject
    assert is_valid_uri(encoded)


@given(_SUBJECTS)
def test_content_is_compact_utf8_json(subject: Subject) -> None:
    raw = zlib.decompress(base64.b64decode(encode_subject(subject)))
    content = json.loads(raw)
    expected = {
        "orchestrator": {"name": subject.name, "version": subject.version},
        "execution": {
            "id": subject.execution_id,
            "initiator": subject.initiator,
            "domain": subject.domain,
        },
        "meta": subject.meta,
    }
    assert content == expected
    assert raw == json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()


_VALID: dict[str, Any] = {
    "name": "com.test.orc",
    "version": "1.0.0",
    "execution_id": "e1",
    "initiator": "com.test.init",
    "domain": None,
    "meta": {},
}

INVALID_FIELDS = [
    ({"name": "user.validate"}, "orchestrator.name"),
    ({"name": "Com.test.orc"}, "orchestrator.name"),
    ({"name": "com.test-x.orc"}, "orchestrator.name"),
    ({"name": "com.test.orc\n"}, "orchestrator.name"),
    ({"name": "com.test.orc;x"}, "orchestrator.name"),
    ({"name": ""}, "orchestrator.name"),
    ({"version": "1.0"}, "orchestrator.version"),
    ({"version": "v1.0.0"}, "orchestrator.version"),
    ({"version": "1.0.0\n"}, "orchestrator.version"),
    ({"version": "\u0661.0.0"}, "orchestrator.version"),
    ({"execution_id": ""}, "execution.id"),
    ({"execution_id": "a;b"}, "execution.id"),
    ({"initiator": "service"}, "execution.initiator"),
    ({"initiator": "com.test.init;"}, "execution.initiator"),
    ({"domain": ""}, "execution.domain"),
    ({"domain": "Upper"}, "execution.domain"),
    ({"domain": "eu-1"}, "execution.domain"),
    ({"meta": {"k": 1}}, "meta"),
    ({"meta": {1: "v"}}, "meta"),
]


@pytest.mark.parametrize(("change", "field"), INVALID_FIELDS)
def test_invalid_fields_are_rejected_on_create(change: dict[str, Any], field: str) -> None:
    with pytest.raises(SubjectError, match=field.replace(".", r"\.")):
        Subject(**{**_VALID, **change})


def _wire(content: object) -> str:
    raw = json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.b64encode(zlib.compress(raw)).decode()


def _content(change: dict[str, Any]) -> dict[str, Any]:
    v = {**_VALID, **change}
    return {
        "orchestrator": {"name": v["name"], "version": v["version"]},
        "execution": {"id": v["execution_id"], "initiator": v["initiator"], "domain": v["domain"]},
        "meta": v["meta"],
    }


@pytest.mark.parametrize(("change", "field"), [c for c in INVALID_FIELDS if c[1] != "meta"])
def test_invalid_fields_are_rejected_on_parse(change: dict[str, Any], field: str) -> None:
    encoded = _wire(_content(change))
    with pytest.raises(SubjectError, match=field.replace(".", r"\.")):
        parse_subject(encoded)
    assert not is_subject(encoded)


BROKEN = [
    ("", "zlib"),
    ("not base64!", "base64"),
    ("eJx", "base64"),
    (base64.b64encode(b"hello").decode(), "zlib"),
    (base64.b64encode(zlib.compress(b"{")).decode(), "JSON"),
    (base64.b64encode(zlib.compress(b'"\xff"')).decode(), "JSON"),
    (base64.b64encode(zlib.compress(b"[]")).decode(), "JSON shape"),
    (_wire({**_content({}), "meta": {"k": 1}}), r"\$\.meta"),
    (_wire({**_content({}), "meta": None}), r"\$\.meta"),
    (_wire({k: v for k, v in _content({}).items() if k != "meta"}), "meta"),
    (
        _wire({**_content({}), "execution": {"id": "e1", "initiator": "com.t.i", "domain": 5}}),
        "domain",
    ),
    (_wire({**_content({}), "orchestrator": {"name": 3, "version": "1.0.0"}}), "name"),
]


@pytest.mark.parametrize(("value", "reason"), BROKEN)
def test_broken_subjects_say_what_is_wrong(value: str, reason: str) -> None:
    with pytest.raises(SubjectError, match=reason):
        parse_subject(value)
    assert not is_subject(value)


def test_non_string_is_not_a_subject() -> None:
    assert not is_subject(None)  # type: ignore[arg-type]
    with pytest.raises(SubjectError, match="str"):
        parse_subject(b"eJx")  # type: ignore[arg-type]


def test_parse_ignores_unknown_keys() -> None:
    content = _content({})
    content["extra"] = {"x": 1}
    content["execution"]["more"] = True
    assert parse_subject(_wire(content)) == Subject(**_VALID)


def test_cached_parse_hands_out_independent_meta() -> None:
    encoded = new_subject(
        orchestrator="com.test.orc", version="1.0.0", initiator="com.test.init", meta={"a": "1"}
    )
    first = parse_subject(encoded)
    first.meta["a"] = "changed"
    assert parse_subject(encoded).meta == {"a": "1"}


def test_new_subject_defaults() -> None:
    meta = {"redirectto": "com.test.back"}
    encoded = new_subject(
        orchestrator="com.test.orc", version=None, initiator="com.test.init", meta=meta
    )
    meta["redirectto"] = "changed"
    subject = parse_subject(encoded)
    assert subject.version == "0.0.0"
    assert uuid.UUID(subject.execution_id).version == 4
    assert subject.domain is None
    assert subject.redirectto == "com.test.back"
    again = new_subject(orchestrator="com.test.orc", version=None, initiator="com.test.init")
    assert parse_subject(again).execution_id != subject.execution_id
    assert parse_subject(again).redirectto is None


def test_new_subject_with_explicit_execution_id() -> None:
    encoded = new_subject(
        orchestrator="com.test.orc",
        version="2.0.0",
        initiator="com.test.init",
        domain="eu",
        execution_id="fixed-id",
    )
    assert parse_subject(encoded) == Subject(
        name="com.test.orc",
        version="2.0.0",
        execution_id="fixed-id",
        initiator="com.test.init",
        domain="eu",
        meta={},
    )


def test_new_subject_validates() -> None:
    with pytest.raises(SubjectError, match=r"orchestrator\.name"):
        new_subject(orchestrator="bad", version=None, initiator="com.test.init")
    with pytest.raises(SubjectError, match=r"execution\.initiator"):
        new_subject(orchestrator="com.test.orc", version=None, initiator="bad")


PARENT = new_subject(
    orchestrator="arvo.orc.parent",
    version="1.2.3",
    initiator="com.test.api",
    domain="eu",
    meta={"redirectto": "com.test.api", "tenant": "t1"},
)


def test_from_parent_inherits() -> None:
    child = parse_subject(
        subject_from_parent(
            orchestrator="arvo.orc.child",
            version="3.0.0",
            parent=PARENT,
            meta={"redirectto": "arvo.orc.parent", "step": "2"},
        )
    )
    parent = parse_subject(PARENT)
    assert child.name == "arvo.orc.child"
    assert child.version == "3.0.0"
    assert child.initiator == "arvo.orc.parent"
    assert child.domain == "eu"
    assert child.meta == {"redirectto": "arvo.orc.parent", "tenant": "t1", "step": "2"}
    assert child.execution_id != parent.execution_id
    assert uuid.UUID(child.execution_id).version == 4


def test_from_parent_overrides_domain_and_keeps_parent_meta() -> None:
    child = parse_subject(
        subject_from_parent(
            orchestrator="arvo.orc.child",
            version=None,
            parent=PARENT,
            domain="us",
            execution_id="child-1",
        )
    )
    assert child.domain == "us"
    assert child.version == "0.0.0"
    assert child.execution_id == "child-1"
    assert child.meta == {"redirectto": "com.test.api", "tenant": "t1"}


def test_from_parent_rejects_invalid_parent_and_name() -> None:
    with pytest.raises(SubjectError, match="parent subject"):
        subject_from_parent(orchestrator="arvo.orc.child", version=None, parent="garbage")
    with pytest.raises(SubjectError, match=r"orchestrator\.name"):
        subject_from_parent(orchestrator="child", version=None, parent=PARENT)
