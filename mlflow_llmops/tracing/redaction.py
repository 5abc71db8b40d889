"""Redaction of PII and secrets in everything a span or a trace carries out of the process.

Runs in the MLflow span processor at span end, before the OpenTelemetry span is frozen:
the redacted span is what both the MLflow exporter and the OTLP copy receive. Covered:
every string attribute (inputs, outputs, ...), every event (exceptions with their
stack traces; a stream's chunk events as one text, so a card number or an e-mail
split over several chunks is found whole), the status message, the span name, and at
the root span the trace's tags, metadata and previews. Card numbers are only redacted
when the digits pass the Luhn check, so order ids and timestamps survive.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from mlflow_llmops.tracing.config import RedactionConfig

#: the local part takes every character RFC 5322 allows unquoted (``j.o'brien``, ``a+b``)
_EMAIL = re.compile(
    r"[\w.!#$%&'*+/=?^`{|}~-]+@[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)*"
    r"\.[^\W\d_]{2,}"
)
#: 13 to 19 digits, single spaces or dashes between them, not inside a longer number
_CARD = re.compile(r"(?<!\d)(?<!\d-)(?:\d[ -]?){12,18}\d(?!\d)(?!-\d)")
#: international (``+44 20 7946 0958``, ``0049 30 901820``, ``+1 (415) 555-2671``), with
#: an area code in brackets (``(020) 7946 0958``), national with a trunk 0 (``03-1234-5678``)
#: and the North American 3-3-4 forms; a match counts 6 to 17 digits (``_phone_ok``)
_PHONE = re.compile(
    r"(?<![\w+.\-])(?>"
    r"(?:\+|00)\d{1,3}(?:[ \-]?\(\d{1,4}\))?(?:[ \-]?\d{1,8}){1,6}"
    r"|\(\d{2,5}\)[ \-]?\d{2,8}(?:[ \-]?\d{2,8}){0,4}"
    r"|0\d{1,4}(?:[ \-]\d{2,8}){1,5}"
    r"|\d{3}([ \-.])\d{3}\1\d{4}"
    r")(?!\d)(?![.\-]\d)"
)
_API_KEY = re.compile(
    r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}"
    r"|AKIA[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|xox[abpors]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}=*"
)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


#: four digits, at most two separators between two of them: every card or phone match has
#: such a run (a phone's groups are joined by at most ``) `` or `` (``)
_DIGITS4 = re.compile(r"\d(?:[ ().\-]{0,2}\d){3}")
_KEY_MARKERS = ("sk-", "AKIA", "gh", "xox", "AIza", "eyJ", "earer", "EARER")


def _maybe_key(s: str) -> bool:
    # ``any(m in s for m in _KEY_MARKERS)``, unrolled (no generator: this runs per string)
    return (
        "sk-" in s
        or "AKIA" in s
        or "gh" in s
        or "xox" in s
        or "AIza" in s
        or "eyJ" in s
        or "earer" in s
        or "EARER" in s
    )


def _maybe_email(s: str) -> bool:
    return "@" in s


def _maybe_digits(s: str) -> bool:
    # An ASCII string without a digit cannot hold a run of four (``\d`` matches other
    # digits only outside ASCII): ten substring scans instead of a regex pass.
    if s.isascii() and not (
        "0" in s
        or "1" in s
        or "2" in s
        or "3" in s
        or "4" in s
        or "5" in s
        or "6" in s
        or "7" in s
        or "8" in s
        or "9" in s
    ):
        return False
    return _DIGITS4.search(s) is not None


_DIGIT = re.compile(r"\d")


def _phone_ok(match: str) -> bool:
    """E.164 numbers have at most 15 digits; a ``00`` or trunk prefix adds two."""
    return _PHONE_DIGITS <= len(_DIGIT.findall(match)) <= 17


#: digits a match holds at least: a card 13 (``(?:\d[ -]?){12,18}\d``), a phone 6 (its
#: shortest form, ``+`` then 1 + 2 + 3 digits)
_CARD_DIGITS = 13
_PHONE_DIGITS = 6


def _maybe_card(s: str) -> bool:
    return _maybe_digits(s) and len(_DIGIT.findall(s)) >= _CARD_DIGITS


def _maybe_phone(s: str) -> bool:
    return _maybe_digits(s) and len(_DIGIT.findall(s)) >= _PHONE_DIGITS


class Redactor:
    """Replaces matches in every string of a nested value (dicts, lists, tuples).

    Each built-in pattern has a cheap pre-check (a substring or a 4-digit run), so
    clean text costs a few hundred nanoseconds instead of one full regex pass each.
    """

    def __init__(self, config: RedactionConfig) -> None:
        self.config = config
        Step = tuple[str, re.Pattern[str], Callable[[str], bool] | None, Callable[[str], bool]]
        self._steps: list[Step] = []
        if config.api_keys:
            self._steps.append(("api_key", _API_KEY, None, _maybe_key))
        if config.cards:
            self._steps.append(
                ("card", _CARD, lambda m: luhn_ok(re.sub(r"\D", "", m)), _maybe_card)
            )
        if config.emails:
            self._steps.append(("email", _EMAIL, None, _maybe_email))
        if config.phones:
            self._steps.append(("phone", _PHONE, _phone_ok, _maybe_phone))
        for i, p in enumerate(config.patterns):
            self._steps.append((f"pattern{i}", re.compile(p), None, _always))
        self._tokens = [config.replacement.format(kind=k) for k, *_ in self._steps]
        #: the distinct pre-checks, cheapest first; when none passes, no step can change
        #: the string (a custom pattern has none: then every string takes the full pass)
        #: ``clean(s)`` True means ``text(s)`` returns ``s`` itself (None: no quick test)
        self.clean = _clean_check({pre for _k, _p, _c, pre in self._steps})

    @property
    def active(self) -> bool:
        return self.config.enabled and bool(self._steps)

    def text(self, s: str) -> str:
        """Redact one string."""
        clean = self.clean
        if clean is not None and clean(s):  # the common case: a few substring scans
            return s
        for (_kind, pattern, check, pre), token in zip(self._steps, self._tokens, strict=True):
            if not pre(s):
                continue
            if check is None:
                s = pattern.sub(token, s)
            else:
                s = pattern.sub(lambda m, c=check, t=token: t if c(m.group(0)) else m.group(0), s)
        return s

    def value(self, v: Any) -> Any:
        """Redact every string inside ``v``; other values are returned unchanged."""
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {self.text(k) if isinstance(k, str) else k: self.value(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return type(v)(self.value(x) for x in v)
        if hasattr(v, "model_dump"):  # pydantic objects (OpenAI responses)
            try:
                return self.value(v.model_dump(mode="json"))
            except Exception:  # noqa: BLE001 - keep the original when it cannot be dumped
                return v
        return v

    def json_text(self, raw: str) -> str:
        """Redact a JSON-serialized value (MLflow's span attributes, chunk events) or any
        string. Without escapes, one regex pass over the serialized text equals a pass over
        each string inside (no pattern crosses a quote). An escape next to a value hides
        or fakes its boundary (``\\t+44 20 ...`` reads as a word before the number,
        ``\\u00e9`` inside an address cuts it), so text with escapes is decoded, redacted
        and serialized again; so is a result that no longer parses (a custom pattern)."""
        clean = self.clean
        if clean is not None and clean(raw):
            return raw
        if "\\" not in raw:
            new = self.text(raw)
            if new == raw:
                return raw
            try:
                json.loads(new)
                return new
            except ValueError:
                pass
        try:
            decoded = json.loads(raw)
        except ValueError:
            return self.text(raw)  # not JSON: the text pass is the whole answer
        redacted = self.value(decoded)
        return raw if redacted == decoded else json.dumps(redacted, ensure_ascii=False)

    def pieces(self, parts: list[str]) -> list[str]:
        """Redact text that arrives cut in consecutive parts (a stream's chunks) as one
        text: a match across parts leaves its token in the part where it starts and
        removes its characters from the others."""
        joined = "".join(parts)
        clean = self.clean
        if clean is not None and clean(joined):
            return parts
        for (_kind, pattern, check, pre), token in zip(self._steps, self._tokens, strict=True):
            if not pre(joined):
                continue
            found = [
                (m.start(), m.end())
                for m in pattern.finditer(joined)
                if m.end() > m.start() and (check is None or check(m.group(0)))
            ]
            if found:
                parts = _cut(parts, joined, found, token)
                joined = "".join(parts)
        return parts

    def redact_span(self, otel: Any, attributes: Any) -> None:
        """Redact an OpenTelemetry SDK span before it ends (``attributes``: its attribute
        mapping, read only; writes go through ``set_attribute``)."""
        clean = self.clean
        for key, v in list(attributes.items()):
            if key in _KEEP_ATTRIBUTES:
                continue
            new = self._attribute(v, clean)
            if new is not v:
                otel.set_attribute(key, new)
        events = getattr(otel, "_events", None)
        if events:
            self._redact_events(events)
        status = getattr(otel, "_status", None)
        desc = getattr(status, "description", None)
        if desc and (clean is None or not clean(desc)):
            new_desc = self.text(desc)
            if new_desc != desc:
                from opentelemetry.trace import Status

                otel._status = Status(status.status_code, new_desc)
        name = getattr(otel, "_name", None)
        if isinstance(name, str) and (clean is None or not clean(name)):
            new_name = self.text(name)
            if new_name != name:
                otel.update_name(new_name)

    def redact_trace_info(self, info: Any) -> None:
        """Redact an MLflow ``TraceInfo`` in place: tag and metadata values (identifiers
        MLflow needs are kept), the request and response previews."""
        clean = self.clean
        for mapping, keep in ((info.tags, _KEEP_TAGS), (info.trace_metadata, _KEEP_METADATA)):
            for key, v in list(mapping.items()):
                if (
                    key in keep
                    or key.startswith("mlflow.source.")  # git commit, entry point: not PII
                    or not isinstance(v, str)
                    or (clean is not None and clean(v))
                ):
                    continue
                new = self.json_text(v)
                if new != v:
                    mapping[key] = new
        for field in ("request_preview", "response_preview"):
            v = getattr(info, field, None)
            if isinstance(v, str) and v and (clean is None or not clean(v)):
                new = self.json_text(v)
                if new != v:
                    setattr(info, field, new)

    def _attribute(self, v: Any, clean: Callable[[str], bool] | None) -> Any:
        """A redacted attribute value (OpenTelemetry allows strings and their sequences),
        or ``v`` itself when nothing changes."""
        if type(v) is str:
            if clean is not None and clean(v):
                return v
            new = self.json_text(v)
            return v if new == v else new
        if isinstance(v, tuple | list) and any(type(x) is str for x in v):
            out = [self._attribute(x, clean) for x in v]
            return v if all(a is b for a, b in zip(out, v, strict=True)) else tuple(out)
        return v

    def _redact_events(self, events: Any) -> None:
        from opentelemetry.sdk.trace import Event

        items = list(events)
        replaced: dict[int, dict[str, Any]] = {}
        chunks = [
            i
            for i, e in enumerate(items)
            if e.name.startswith(CHUNK_EVENT_PREFIX)
            and isinstance((e.attributes or {}).get(CHUNK_VALUE_KEY), str)
        ]
        if chunks:
            values = self._stream_chunks([items[i].attributes[CHUNK_VALUE_KEY] for i in chunks])
            for i, v in zip(chunks, values, strict=True):
                if v is not items[i].attributes[CHUNK_VALUE_KEY]:
                    replaced[i] = {**items[i].attributes, CHUNK_VALUE_KEY: v}
        clean = self.clean
        for i, e in enumerate(items):
            attrs = replaced.get(i, e.attributes) or {}
            changed = None
            for key, v in attrs.items():
                new = self._attribute(v, clean)
                if new is not v:
                    changed = changed or dict(attrs)
                    changed[key] = new
            if changed is not None:
                replaced[i] = changed
        if not replaced:
            return
        dq = getattr(events, "_dq", None)
        lock = getattr(events, "_lock", None)
        if dq is None or lock is None:  # not the SDK's BoundedList: cannot rewrite
            return
        with lock:
            for i, attrs in replaced.items():
                e = items[i]
                if i < len(dq) and dq[i] is e:
                    dq[i] = Event(e.name, attrs, e.timestamp)

    def _stream_chunks(self, raws: list[str]) -> list[str]:
        """The chunk values (JSON) with the streamed text redacted as one text."""
        found = [list(_STREAM_TEXT.finditer(raw)) for raw in raws]
        literals = [m.group(1) for ms in found for m in ms]
        if not literals:
            return raws
        parts = [_decode_literal(lit) for lit in literals]
        new_parts = self.pieces(parts)
        if new_parts is parts or new_parts == parts:
            return raws
        out: list[str] = []
        k = 0
        for raw, ms in zip(raws, found, strict=True):
            pieces: list[str] = []
            pos = 0
            changed = False
            for m in ms:
                if new_parts[k] != parts[k]:
                    literal = json.dumps(new_parts[k], ensure_ascii=raw.isascii())[1:-1]
                    pieces += [raw[pos : m.start(1)], literal]
                    pos = m.end(1)
                    changed = True
                k += 1
            out.append("".join([*pieces, raw[pos:]]) if changed else raw)
        return out


def _always(_s: str) -> bool:
    return True


_ASCII_DIGITS = b"0123456789"
#: MLflow's stream chunk events: ``mlflow.chunk.item.<n>`` holding the chunk as JSON
CHUNK_EVENT_PREFIX = "mlflow.chunk.item."
CHUNK_VALUE_KEY = "mlflow.chunk.value"
#: the streamed text inside a chunk's JSON (OpenAI chat and responses, Anthropic deltas)
_STREAM_TEXT = re.compile(
    r'"(?:content|text|delta|arguments|partial_json|refusal|reasoning_content|thinking)"'
    r'\s*:\s*"((?:[^"\\]|\\.)*)"'
)
#: identifiers MLflow needs intact (trace id, span type; artifact location; metadata it
#: parses), never PII
_KEEP_ATTRIBUTES = frozenset({"mlflow.traceRequestId", "mlflow.spanType"})
_KEEP_TAGS = frozenset({"mlflow.artifactLocation"})
_KEEP_METADATA = frozenset(
    {
        "mlflow.trace_schema.version",
        "mlflow.sourceRun",
        "mlflow.modelId",
        "mlflow.trace.tokenUsage",
        "mlflow.trace.cost",
        "mlflow.trace.sizeBytes",
        "mlflow.trace.sizeStats",
    }
)


def _decode_literal(literal: str) -> str:
    """The text of a JSON string literal's inside (no quotes)."""
    if "\\" not in literal:
        return literal
    try:
        return json.loads(f'"{literal}"')
    except ValueError:
        return literal


def _cut(parts: list[str], joined: str, spans: list[tuple[int, int]], token: str) -> list[str]:
    """``parts`` with the characters of ``spans`` (positions in ``joined``, their
    concatenation) removed, ``token`` put where each span starts."""
    out: list[str] = []
    pos = i = 0
    n = len(spans)
    for p in parts:
        start, end = pos, pos + len(p)
        buf: list[str] = []
        cur = start
        while cur < end:
            while i < n and spans[i][1] <= cur:
                i += 1
            if i < n and spans[i][0] < end:
                a, b = spans[i]
                if a > cur:
                    buf.append(joined[cur:a])
                if a >= start:
                    buf.append(token)
                cur = min(b, end)
            else:
                buf.append(joined[cur:end])
                cur = end
        out.append("".join(buf))
        pos = end
    return out


def _clean_check(pres: set[Callable[[str], bool]]) -> Callable[[str], bool] | None:
    """One flat function telling that no step's pre-check passes on a string, so that no
    step can change it; None when a step has no pre-check (a custom pattern)."""
    if _always in pres:
        return None
    email = _maybe_email in pres
    # the fewest digits a card or phone step needs (the phone's check covers the card's)
    need = _PHONE_DIGITS if _maybe_phone in pres else _CARD_DIGITS if _maybe_card in pres else 0
    key = _maybe_key in pres
    search4 = _DIGITS4.search
    strip_digits = _ASCII_DIGITS

    def clean(s: str) -> bool:
        if email and "@" in s:
            return False
        if need:
            if s.isascii():  # count the digits first: most strings have too few
                b = s.encode()
                if len(b) - len(b.translate(None, strip_digits)) >= need and search4(s):
                    return False
            elif search4(s) and len(_DIGIT.findall(s)) >= need:
                return False
        return not (key and _maybe_key(s))

    return clean
