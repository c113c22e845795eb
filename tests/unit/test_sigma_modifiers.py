"""Every Sigma value modifier and value form, each with a match and a near miss."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from security.sigma import CompiledRule, compile_yaml


def detect(selection: dict[str, Any], placeholders: dict[str, list[str]] | None = None) -> CompiledRule:
    """A rule whose only selection is ``selection``."""
    rule = {
        "title": "modifier test",
        "id": "00000000-0000-4000-8000-000000000001",
        "logsource": {"product": "test"},
        "detection": {"selection": selection, "condition": "selection"},
    }
    return compile_yaml(yaml.safe_dump(rule), placeholders)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    # id, selection, matching event, near-miss event
    ("plain-case-insensitive", {"Image": "C:\\Cmd.exe"}, {"Image": "c:\\CMD.EXE"}, {"Image": "c:\\cmd.exe "}),
    ("wildcard-star-question", {"F": "a?c*z"}, {"F": "ABCxyz"}, {"F": "acxyz"}),
    ("escaped-wildcard", {"F": "a\\*b"}, {"F": "a*b"}, {"F": "axb"}),
    ("contains", {"F|contains": "evil"}, {"F": "so EVIL here"}, {"F": "ev il"}),
    ("startswith", {"F|startswith": "pre"}, {"F": "PREfix"}, {"F": "xprefix"}),
    ("endswith", {"F|endswith": ".exe"}, {"F": "a.EXE"}, {"F": "a.exe.txt"}),
    ("list-is-or", {"F": ["a", "b"]}, {"F": "B"}, {"F": "c"}),
    ("contains-all", {"F|contains|all": ["one", "two"]}, {"F": "two and one"}, {"F": "one only"}),
    ("re-case-sensitive", {"F|re": "ab+c"}, {"F": "xabbbcx"}, {"F": "ABBC"}),
    ("re-i", {"F|re|i": "ab+c"}, {"F": "xABBC"}, {"F": "ac"}),
    ("re-m", {"F|re|m": "^foo$"}, {"F": "x\nfoo\ny"}, {"F": "x\nfoox\ny"}),
    ("re-lone-surrogate", {"F|re": "a.b"}, {"F": "a\ud800b"}, {"F": "a\ud800\ud800b"}),
    ("wildcard-lone-surrogate", {"F": "a?b"}, {"F": "a\ud800b"}, {"F": "ab"}),
    ("re-s", {"F|re|s": "a.b"}, {"F": "a\nb"}, {"F": "a\n\nb"}),
    ("cidr-v4", {"Ip|cidr": "10.0.0.0/8"}, {"Ip": "10.200.1.1"}, {"Ip": "11.0.0.1"}),
    ("cidr-v6", {"Ip|cidr": "2001:db8::/32"}, {"Ip": "2001:db8:1::5"}, {"Ip": "2001:db9::5"}),
    ("cidr-not-an-address", {"Ip|cidr": "10.0.0.0/8"}, {"Ip": "10.0.0.1"}, {"Ip": "10.0.0.1.example"}),
    ("base64", {"F|base64": "abc"}, {"F": b64(b"abc")}, {"F": b64(b"abd")}),
    ("base64-contains", {"F|base64|contains": "abc"}, {"F": "x" + b64(b"abc")}, {"F": b64(b"ab")}),
    ("base64offset-1", {"F|base64offset|contains": "abc"}, {"F": b64(b"xabc")}, {"F": b64(b"xabd")}),
    ("base64offset-2", {"F|base64offset|contains": "abc"}, {"F": b64(b"xyabc")}, {"F": b64(b"xyab")}),
    (
        "utf16le",
        {"F|utf16le|base64offset|contains": "cmd"},
        {"F": b64("run cmd".encode("utf-16-le"))},
        {"F": b64("run cmd".encode("utf-16-be"))},
    ),
    (
        "utf16be",
        {"F|utf16be|base64": "cmd"},
        {"F": b64("cmd".encode("utf-16-be"))},
        {"F": b64("cmd".encode("utf-16-le"))},
    ),
    (
        "wide",
        {"F|wide|base64offset|contains": "cmd"},
        {"F": b64("xcmd".encode("utf-16-le"))},
        {"F": b64(b"xcmd")},
    ),
    ("windash-slash", {"F|windash|contains": " -enc "}, {"F": "ps /enc x"}, {"F": "ps enc x"}),
    ("windash-en-dash", {"F|windash|contains": " -enc "}, {"F": "ps \u2013enc x"}, {"F": "ps _enc x"}),
    ("exists-true", {"F|exists": True}, {"F": ""}, {"G": "x"}),
    ("exists-counts-null-as-present", {"F|exists": True}, {"F": None}, {}),
    ("exists-false", {"F|exists": False}, {"G": "x"}, {"F": "x"}),
    ("fieldref", {"A|fieldref": "B"}, {"A": "Same", "B": "same"}, {"A": "one", "B": "two"}),
    ("fieldref-missing-other", {"A|fieldref": "B"}, {"A": "x", "B": "x"}, {"A": "x"}),
    ("gt", {"N|gt": 5}, {"N": 6}, {"N": 5}),
    ("gte", {"N|gte": 5}, {"N": "5"}, {"N": 4.9}),
    ("lt", {"N|lt": 5}, {"N": 4}, {"N": 5}),
    ("lte", {"N|lte": 5}, {"N": 5}, {"N": "six"}),
    ("neq-number", {"N|neq": 5}, {"N": 4}, {"N": "5"}),
    ("neq-string", {"F|neq": "abc"}, {"F": "abd"}, {"F": "ABC"}),
    ("fieldref-neq", {"A|fieldref|neq": "B"}, {"A": "x", "B": "y"}, {"A": "x", "B": "X"}),
    ("minute", {"T|minute": 7}, {"T": "2025-01-02T03:07:09Z"}, {"T": "2025-01-02T03:08:07Z"}),
    ("hour", {"T|hour": 3}, {"T": "2025-01-02 03:07:09"}, {"T": "2025-01-02 13:07:09"}),
    ("day", {"T|day": 2}, {"T": "2025-01-02T03:07:09+05:00"}, {"T": "2025-01-03T02:00:00+05:00"}),
    ("week-iso", {"T|week": 1}, {"T": "2024-12-30T00:00:00Z"}, {"T": "2024-12-29T00:00:00Z"}),
    ("month", {"T|month": 1}, {"T": 1735787229}, {"T": "not a date"}),
    # Timestamp text as logs write it (RFC 3339, lower-case t/z included, or a space), nothing looser.
    ("hour-rfc3339-lower-case", {"T|hour": 10}, {"T": "2026-11-25t10:30:00z"}, {"T": "2026-11-25x10:30:00"}),
    ("hour-basic-format-refused", {"T|hour": 10}, {"T": "2026-11-25 10:30"}, {"T": "20261125T103000"}),
    ("day-week-date-refused", {"T|day": 25}, {"T": "2026-11-25"}, {"T": "2026-W48-3"}),
    ("year", {"T|year": 2025}, {"T": 1735787229000}, {"T": "2024-12-31T23:59:59Z"}),
    ("cased", {"F|cased": "Evil"}, {"F": "Evil"}, {"F": "evil"}),
    ("cased-contains", {"F|cased|contains": "Evil"}, {"F": "xEvilx"}, {"F": "xEVILx"}),
    ("null-absent", {"F": None}, {"G": "x"}, {"F": "x"}),
    ("null-none", {"F": None}, {"F": None}, {"F": ""}),
    ("empty-string", {"F": ""}, {"F": ""}, {"G": ""}),
    ("number-int", {"EventID": 4688}, {"EventID": 4688}, {"EventID": 4689}),
    ("number-as-text", {"EventID": 4688}, {"EventID": "4688"}, {"EventID": "4688x"}),
    ("bool", {"Flag": True}, {"Flag": True}, {"Flag": False}),
    ("bool-as-text", {"Flag": True}, {"Flag": "True"}, {"Flag": "yes"}),
    ("event-list-value", {"Tags|contains": "admin"}, {"Tags": ["user", "Admins"]}, {"Tags": ["user"]}),
]


@pytest.mark.parametrize(("selection", "hit", "miss"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_modifier_matches_and_near_miss(
    selection: dict[str, Any], hit: dict[str, Any], miss: dict[str, Any]
) -> None:
    rule = detect(selection)
    assert rule.matches(hit)
    assert not rule.matches(miss)


def test_expand_uses_configured_placeholders() -> None:
    rule = detect({"User|expand": "%admins%"}, {"admins": ["root", "Admin*"]})
    assert rule.matches({"User": "ROOT"})
    assert rule.matches({"User": "administrator"})
    assert not rule.matches({"User": "guest"})


def test_expand_inside_a_larger_string() -> None:
    rule = detect({"Path|expand": "/home/%user%/tmp"}, {"user": ["alice", "bob"]})
    assert rule.matches({"Path": "/HOME/Bob/tmp"})
    assert not rule.matches({"Path": "/home/carol/tmp"})


def test_expand_in_a_regular_expression_takes_values_literally() -> None:
    rule = detect({"Host|re|expand": "^%dcs%[0-9]+$"}, {"dcs": ["dc.", "ad"]})
    assert rule.matches({"Host": "dc.12"})
    assert not rule.matches({"Host": "dcx12"})


@pytest.mark.parametrize(
    ("value", "hit"),
    [
        ("EXACT", True),
        ("prefix-x", True),
        ("x-suffix", True),
        ("a mid b", True),
        ("5", True),
        ("exactly", False),
    ],
)
def test_one_field_list_mixing_shapes_and_types(value: str, hit: bool) -> None:
    rule = detect({"F": ["exact", "pre*", "*suffix", "*mid*", 5]})
    assert rule.matches({"F": value}) is hit


def test_cased_and_uncased_alternatives_on_one_field_keep_their_own_casing() -> None:
    rule = compile_yaml(
        yaml.safe_dump(
            {
                "title": "mixed casing",
                "logsource": {"product": "test"},
                "detection": {"selection": [{"F|cased": "Upper"}, {"F": "lower"}], "condition": "selection"},
            }
        )
    )
    assert rule.matches({"F": "Upper"})
    assert rule.matches({"F": "LOWER"})
    assert not rule.matches({"F": "upper"})
