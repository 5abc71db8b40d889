"""The redactor's cheap pre-checks only skip work: with or without them, same output."""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_llmops.tracing.config import RedactionConfig
from mlflow_llmops.tracing.redaction import Redactor


def _full_pass(r: Redactor, s: str) -> str:
    """Every pattern over the string, no pre-check (what ``text`` must equal)."""
    for (_kind, pattern, check, _pre), token in zip(r._steps, r._tokens, strict=True):
        if check is None:
            s = pattern.sub(token, s)
        else:
            s = pattern.sub(lambda m, c=check, t=token: t if c(m.group(0)) else m.group(0), s)
    return s


# Digits (ASCII and Arabic-Indic), the separators the patterns know, key and e-mail bits.
# Whitespace other than the space is left out: the 4-digit pre-check has always accepted
# only spaces and dashes between digits.
_PIECES = st.sampled_from(
    [*"0123456789", "\u0663", "\u0667", " ", "-", ".", "+", "(", ")", "@", "a", "Z", "é",
     "sk-", "proj-", "AKIA", "ghp_", "xoxb-", "AIza", "eyJ", "Bearer ", "example.com", '"']
)  # fmt: skip
# Number-like runs: groups of digits joined by separators, maybe after "+" or "(".
_NUMBER = st.builds(
    lambda lead, groups, seps: lead + "".join(g + s for g, s in zip(groups, seps, strict=False)),
    st.sampled_from(["", "+", "(", " 0"]),
    st.lists(st.text("0123456789", min_size=1, max_size=4), min_size=1, max_size=6),
    st.lists(st.sampled_from(["", " ", "-", ".", ") "]), min_size=6, max_size=6),
)
_TEXT = st.lists(st.one_of(_PIECES, _NUMBER), max_size=12).map("".join)
_CONFIGS = [
    RedactionConfig(),
    RedactionConfig(phones=False),
    RedactionConfig(cards=False),
    RedactionConfig(emails=False, api_keys=False),
]


@settings(max_examples=400, deadline=None)
@given(_TEXT, st.sampled_from(range(len(_CONFIGS))))
def test_pre_checks_never_change_the_result(text, i):
    r = Redactor(_CONFIGS[i])
    assert r.text(text) == _full_pass(r, text)


def test_the_shortest_cards_and_phones_are_still_redacted():
    r = Redactor(RedactionConfig())
    # 6 digits: the shortest phone; 13 digits: the shortest card (a Luhn-valid test number)
    for text in ("+122333", "+1 22 333", "tel +1-22-333 ok", "01 22 333", "4222222222222"):
        assert r.text(text) == _full_pass(r, text) != text, text


def test_numbers_too_short_for_a_card_or_phone_are_left_alone_and_long_ones_are_not():
    r = Redactor(RedactionConfig())
    for clean in ('{"q": 1234}', "order 12345", "+1 22 33", "answer 2024-01"):
        assert r.text(clean) is clean
    assert "[REDACTED:phone]" in r.text("call +1 22 333 now")
    assert "[REDACTED:card]" in r.text("card 4111 1111 1111 1111")
    assert re.search(r"\d{4}", r.text("card 4111 1111 1111 1112"))  # fails Luhn: kept


# Text with the characters JSON escapes (quotes, backslashes, control and non-ASCII
# characters) next to values that match.
_ESCAPED = st.lists(
    st.one_of(_PIECES, _NUMBER, st.sampled_from(["\n", "\t", "\\", '"', "é", "\u2028"])),
    max_size=12,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(_ESCAPED, st.dictionaries(_ESCAPED, _ESCAPED, max_size=3), st.lists(_ESCAPED)),
    st.booleans(),
)
def test_redacting_serialized_json_equals_redacting_the_values(value, ascii_only):
    """MLflow stores attributes as JSON; the fast path redacts the serialized text. Same
    result as redacting each string inside, whatever escapes sit next to a match."""
    r = Redactor(RedactionConfig())
    raw = json.dumps(value, ensure_ascii=ascii_only)
    assert json.loads(r.json_text(raw)) == r.value(value)
