"""The orchestration subject codec, byte-compatible with Arvo's ``ArvoOrchestrationSubject``.

A subject is ``base64(zlib(json(content)))``; it names one workflow execution and travels
on every event of that execution, so Python and TypeScript services must agree on it.
Subjects of arvo-core 3.x carry ``execution.domain``; those of arvo-core 2.x do not, and
parse with domain None (re-encoded without the key, so the string stays the same).
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import re
import uuid
import zlib

import msgspec

from resumable.errors import ResumableError
from resumable.names import WILDCARD_VERSION, domain_match, semver_match, type_match

__all__ = [
    "Subject",
    "SubjectError",
    "encode_subject",
    "instance_name",
    "is_subject",
    "new_subject",
    "parse_subject",
    "subject_from_parent",
]

_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]{0,9}").fullmatch
_MAX_ARRAY_INDEX = 2**32 - 2


class SubjectError(ResumableError, ValueError):
    """An orchestration subject could not be created or parsed; the message says why."""


class _Orchestrator(msgspec.Struct):
    name: str
    version: str


class _Execution(msgspec.Struct):
    id: str
    initiator: str
    domain: str | msgspec.UnsetType | None = msgspec.UNSET
    """Absent (UNSET) in subjects made by arvo-core 2.x, which has no execution domain."""


class _Content(msgspec.Struct):
    """The JSON content in Arvo's key order; struct fields encode in declaration order."""

    orchestrator: _Orchestrator
    execution: _Execution
    meta: dict[str, str]


_decode_content = msgspec.json.Decoder(_Content).decode
_encode_json = msgspec.json.Encoder().encode


def _check_name(path: str, value: object) -> None:
    if not isinstance(value, str) or type_match(value) is None:
        raise SubjectError(
            f"{path} must be 3 or more dot-separated segments of lowercase letters and digits "
            f"(e.g. 'com.acme.billing'), got {value!r}"
        )


def _validate(s: Subject) -> None:
    """Apply Arvo's content schema rules; raise SubjectError naming the failing field."""
    _check_name("orchestrator.name", s.name)
    if not isinstance(s.version, str) or semver_match(s.version) is None:
        raise SubjectError(
            f"orchestrator.version must be a semantic version like '1.0.0', got {s.version!r}"
        )
    if not isinstance(s.execution_id, str) or not s.execution_id or ";" in s.execution_id:
        raise SubjectError(
            f"execution.id must be a non-empty string without ';', got {s.execution_id!r}"
        )
    _check_name("execution.initiator", s.initiator)
    if s.domain is not None and (not isinstance(s.domain, str) or domain_match(s.domain) is None):
        raise SubjectError(
            "execution.domain must be None or only lowercase letters, digits and dots, "
            f"got {s.domain!r}"
        )
    if not isinstance(s.meta, dict):
        raise SubjectError(f"meta must be a dict of str to str, got {type(s.meta).__name__}")
    for key, item in s.meta.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise SubjectError(f"meta must map str to str, got {key!r}: {item!r}")


class Subject(msgspec.Struct, frozen=True):
    """Decoded content of an orchestration subject; validated whenever one is built.

    ``meta`` is a plain dict for wire compatibility: treat it as read-only.
    """

    name: str
    version: str
    execution_id: str
    initiator: str
    domain: str | None = None
    meta: dict[str, str] = {}
    domain_key: bool = True
    """Whether the encoded content has ``execution.domain``. False for a subject made by
    arvo-core 2.x (its content has no such key): re-encoding it then writes none, so the
    subject string comes back byte for byte. A domain that is set is always written."""

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def redirectto(self) -> str | None:
        """Where the workflow's completion goes, if the creator asked (``meta.redirectto``)."""
        return self.meta.get("redirectto")


def _js_key_order(meta: dict[str, str]) -> dict[str, str]:
    """Reorder keys as JS objects do: array-index keys ascending first, then the rest."""
    index_keys = [k for k in meta if _ARRAY_INDEX(k) and int(k) <= _MAX_ARRAY_INDEX]
    if not index_keys:
        return meta
    index_keys.sort(key=int)
    ordered = {k: meta[k] for k in index_keys}
    ordered.update((k, v) for k, v in meta.items() if k not in ordered)
    return ordered


def encode_subject(s: Subject) -> str:
    """Encode ``s`` to the subject string, byte-identical to Arvo's ``create``."""
    _validate(s)
    content = _Content(
        orchestrator=_Orchestrator(name=s.name, version=s.version),
        execution=_Execution(
            id=s.execution_id,
            initiator=s.initiator,
            domain=s.domain if s.domain is not None or s.domain_key else msgspec.UNSET,
        ),
        meta=_js_key_order(s.meta),
    )
    try:
        raw = _encode_json(content)
    except UnicodeEncodeError as exc:
        raise SubjectError(f"subject content contains a lone surrogate: {exc}") from None
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def _describe(value: str) -> str:
    return repr(value) if len(value) <= 80 else repr(value[:77] + "...")


@functools.lru_cache(maxsize=4096)
def _parse_cached(value: str) -> Subject:
    try:
        compressed = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SubjectError(
            f"orchestration subject {_describe(value)} is not valid base64: {exc}"
        ) from None
    try:
        raw = zlib.decompress(compressed)
    except zlib.error as exc:
        raise SubjectError(
            f"orchestration subject {_describe(value)} is not zlib-compressed data: {exc}"
        ) from None
    try:
        content = _decode_content(raw)
    except msgspec.ValidationError as exc:
        raise SubjectError(
            f"orchestration subject {_describe(value)} has the wrong JSON shape: {exc}"
        ) from None
    except msgspec.DecodeError as exc:
        raise SubjectError(
            f"orchestration subject {_describe(value)} does not contain valid UTF-8 JSON: {exc}"
        ) from None
    domain = content.execution.domain
    try:
        return Subject(
            name=content.orchestrator.name,
            version=content.orchestrator.version,
            execution_id=content.execution.id,
            initiator=content.execution.initiator,
            domain=None if domain is msgspec.UNSET else domain,
            meta=content.meta,
            domain_key=domain is not msgspec.UNSET,
        )
    except SubjectError as exc:
        raise SubjectError(f"orchestration subject {_describe(value)}: {exc}") from None


def parse_subject_shared(value: str) -> Subject:
    """Like ``parse_subject`` but returns the cached instance itself: for hot paths that
    only read it (its ``meta`` dict must not be changed)."""
    if not isinstance(value, str):
        raise SubjectError(f"orchestration subject must be a str, got {type(value).__name__}")
    return _parse_cached(value)


def instance_name(value: str) -> str:
    """How logs name the instance a subject stands for: its workflow and its id (the
    execution id, which ``Runtime.start(..., id=...)`` sets to the user's own), e.g.
    ``arvo.orc.order.fulfil 'order-7'``; a value that is no subject, shortened."""
    try:
        parsed = _parse_cached(value)
    except SubjectError:
        return repr(value if len(value) <= 60 else f"{value[:57]}...")
    return f"{parsed.name} {parsed.execution_id!r}"


def parse_subject(value: str) -> Subject:
    """Decode and validate a subject string (cached: workflows re-parse it on every step)."""
    if not isinstance(value, str):
        raise SubjectError(f"orchestration subject must be a str, got {type(value).__name__}")
    cached = _parse_cached(value)
    # A fresh meta dict per caller, so nobody can mutate the cached copy. A copy, not a
    # rebuild: the cached subject was validated when it was parsed.
    fresh = copy.copy(cached)
    msgspec.structs.force_setattr(fresh, "meta", dict(cached.meta))
    return fresh


def is_subject(value: str) -> bool:
    """True when ``value`` parses as a valid orchestration subject."""
    try:
        parse_subject(value)
    except SubjectError:
        return False
    return True


def new_subject(
    *,
    orchestrator: str,
    version: str | None,
    initiator: str,
    domain: str | None = None,
    meta: dict[str, str] | None = None,
    execution_id: str | None = None,
) -> str:
    """Create the subject of a new root execution (Arvo's ``new``); None version is "0.0.0"."""
    return encode_subject(
        Subject(
            name=orchestrator,
            version=WILDCARD_VERSION if version is None else version,
            execution_id=str(uuid.uuid4()) if execution_id is None else execution_id,
            initiator=initiator,
            domain=domain,
            meta={} if meta is None else dict(meta),
        )
    )


def subject_from_parent(
    *,
    orchestrator: str,
    version: str | None,
    parent: str,
    domain: str | None = None,
    meta: dict[str, str] | None = None,
    execution_id: str | None = None,
) -> str:
    """Create a child execution's subject (Arvo's ``from``).

    The initiator is the parent's orchestrator, domain and meta are inherited from the parent
    (``domain`` and ``meta`` given here take precedence).
    """
    try:
        up = parse_subject(parent)
    except SubjectError as exc:
        raise SubjectError(f"invalid parent subject: {exc}") from None
    return new_subject(
        orchestrator=orchestrator,
        version=version,
        initiator=up.name,
        domain=up.domain if domain is None else domain,
        meta={**up.meta, **(meta or {})},
        execution_id=execution_id,
    )
