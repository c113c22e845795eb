"""Condition forms (boolean operators, parentheses, ``1 of``/``all of`` selectors), keyword searches, and the
errors a rule that cannot be compiled raises."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from sigma.collection import SigmaCollection

from security.sigma import CompiledRule, SigmaCompileError, compile_collection, compile_yaml

RULE_ID = "00000000-0000-4000-8000-000000000002"


def rule_yaml(detection: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {"title": "condition test", "id": RULE_ID, "logsource": {"product": "test"}, "detection": detection}
    )


def detect(detection: dict[str, Any]) -> CompiledRule:
    return compile_yaml(rule_yaml(detection))


SELECTIONS = {
    "selection_a": {"A": "1"},
    "selection_b": {"B": "1"},
    "filter": {"C": "1"},
}

CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    # condition, matching event, near-miss event
    ("selection_a and selection_b", {"A": "1", "B": "1"}, {"A": "1", "B": "2"}),
    ("selection_a or selection_b", {"B": "1"}, {"C": "1"}),
    ("selection_a and not filter", {"A": "1"}, {"A": "1", "C": "1"}),
    ("not (selection_a or selection_b)", {"C": "1"}, {"B": "1"}),
    ("selection_a and (selection_b or filter)", {"A": "1", "C": "1"}, {"B": "1", "C": "1"}),
    ("(selection_a and selection_b) or filter", {"C": "1"}, {"A": "1"}),
    ("1 of selection_*", {"B": "1"}, {"C": "1"}),
    ("any of selection_*", {"A": "1"}, {"C": "1"}),
    ("all of selection_*", {"A": "1", "B": "1"}, {"A": "1", "C": "1"}),
    ("all of them", {"A": "1", "B": "1", "C": "1"}, {"A": "1", "B": "1"}),
    ("1 of them", {"C": "1"}, {"D": "1"}),
    ("1 of selection_* and not filter", {"A": "1"}, {"A": "1", "C": "1"}),
    ("not 1 of selection_*", {"C": "1"}, {"A": "1"}),
]


@pytest.mark.parametrize(("condition", "hit", "miss"), CASES, ids=[c[0] for c in CASES])
def test_condition_matches_and_near_miss(condition: str, hit: dict[str, Any], miss: dict[str, Any]) -> None:
    rule = detect({**SELECTIONS, "condition": condition})
    assert rule.matches(hit)
    assert not rule.matches(miss)


def test_fields_of_one_map_are_and_and_maps_in_a_list_are_or() -> None:
    rule = detect({"selection": [{"A": "1", "B": "1"}, {"C": "1"}], "condition": "selection"})
    assert rule.matches({"A": "1", "B": "1"})
    assert rule.matches({"C": "1"})
    assert not rule.matches({"A": "1"})


def test_several_conditions_are_or() -> None:
    rule = detect({**SELECTIONS, "condition": ["selection_a", "selection_b"]})
    assert rule.matches({"B": "1"})
    assert not rule.matches({"C": "1"})


def test_keywords_search_every_string_value_as_substrings() -> None:
    rule = detect({"keywords": ["mimikatz", "sekurlsa::*"], "condition": "keywords"})
    assert rule.matches({"CommandLine": "run MIMIKATZ.exe", "Other": 4})
    assert rule.matches({"Tags": ["x", "Sekurlsa::logonpasswords"]})
    assert not rule.matches({"CommandLine": "mimi katz", "sekurlsa": "field names are not searched"})


def test_keywords_with_all_need_every_keyword() -> None:
    rule = detect({"keywords": {"|all": ["alpha", "beta"]}, "condition": "keywords"})
    assert rule.matches({"A": "alpha", "B": "beta"})
    assert not rule.matches({"A": "alpha"})


def test_keywords_combine_with_field_selections() -> None:
    rule = detect({"keywords": ["evil"], "selection": {"EventID": 1}, "condition": "selection and keywords"})
    assert rule.matches({"EventID": 1, "Msg": "so evil"})
    assert not rule.matches({"EventID": 2, "Msg": "so evil"})


def expect_error(detection: dict[str, Any], reason: str) -> SigmaCompileError:
    with pytest.raises(SigmaCompileError) as caught:
        detect(detection)
    assert RULE_ID in str(caught.value)
    assert reason in caught.value.reason
    return caught.value


def test_regex_outside_re2_is_refused_with_the_rule_named() -> None:
    expect_error({"selection": {"F|re": "(a)\\1"}, "condition": "selection"}, "RE2")


def test_unknown_modifier_is_refused_with_the_rule_named() -> None:
    expect_error({"selection": {"F|frobnicate": "x"}, "condition": "selection"}, "frobnicate")


def test_expand_without_configured_placeholder_is_refused() -> None:
    expect_error({"selection": {"U|expand": "%admins%"}, "condition": "selection"}, "%admins%")


def test_undefined_identifier_in_condition_is_refused() -> None:
    expect_error({"selection": {"A": "1"}, "condition": "selection and missing_sel"}, "missing_sel")


def test_malformed_yaml_is_refused_not_raised_raw() -> None:
    with pytest.raises(SigmaCompileError) as caught:
        compile_yaml("title: broken\ndetection: [unclosed\n")
    assert "invalid Sigma rule" in caught.value.reason


def test_a_collection_compiles_the_good_rules_and_reports_the_bad() -> None:
    good = rule_yaml({"selection": {"A": "1"}, "condition": "selection"})
    bad = rule_yaml({"selection": {"F|re": "(?<=x)y"}, "condition": "selection"}).replace(
        RULE_ID, RULE_ID[:-1] + "3"
    )
    compiled, errors = compile_collection(SigmaCollection.from_yaml(good + "---\n" + bad))
    assert [c.id for c in compiled] == [RULE_ID]
    assert [e.rule.split()[0] for e in errors] == [RULE_ID[:-1] + "3"]
