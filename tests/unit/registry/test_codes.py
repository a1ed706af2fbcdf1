from __future__ import annotations

import pytest

from registry import (
    MAX_REGISTRY_ID_CHARS,
    PROVINCES,
    contains_citizen_id,
    is_region_code,
    is_registry_id,
    is_valid_citizen_id,
    is_valid_uscc,
    province_name,
)
from registry._codes import citizen_id_check_char, org_code_check_char, uscc_check_char


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("11010519491231002X", True),  # the GB 11643 standard's own example
        ("110105194912310021", False),  # same body, wrong check character
        ("11010519491231002x", False),  # lower-case x is not the check character
        ("1101051949123100", False),  # too short
        ("A1010519491231002X", False),
        # ASCII digits only, and nothing after: `$` would pass a trailing newline, and `\d`
        # (and str.isdigit) digits of any script, some of which int() cannot read
        ("11010519491231002X\n", False),
        ("１１０１０５１９４９１２３１００２X", False),  # full-width
        ("١١٠١٠٥١٩٤٩١٢٣١٠٠٢X", False),  # Arabic-Indic
        ("²1010519491231002X", False),  # a superscript: isdigit() but not int()
    ],
)
def test_citizen_id(value: str, valid: bool) -> None:
    assert is_valid_citizen_id(value) is valid


@pytest.mark.parametrize("body", ["1101051949123100²", "١١٠١٠٥١٩٤٩١٢٣١٠٠", "11010519491231002\n"])
def test_a_check_character_is_asked_of_ascii_digits_only(body: str) -> None:
    with pytest.raises(ValueError, match="17 digits"):
        citizen_id_check_char(body)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("91350100M000100Y43", True),  # the GB 32100 standard's example
        ("91350100M000100Y44", False),  # wrong final check character
        ("91350100M000101Y43", False),  # body changed
        ("9135010OM000100Y43", False),  # 'O' is outside the alphabet
        ("91350100M000100Y4", False),
    ],
)
def test_unified_social_credit_code(value: str, valid: bool) -> None:
    assert is_valid_uscc(value) is valid


def test_check_characters_reject_bad_bodies() -> None:
    with pytest.raises(ValueError, match="17 digits"):
        citizen_id_check_char("123")
    with pytest.raises(ValueError, match="8 digits"):
        org_code_check_char("1234567")
    with pytest.raises(ValueError, match="17 characters"):
        uscc_check_char("I" * 17)


def test_org_code_check_values() -> None:
    # A body whose weighted sum gives the special cases 10 -> X and 11 -> 0 exists for each.
    seen = {org_code_check_char(f"{n:08d}") for n in range(0, 2000)}
    assert {"X", "0"} <= seen


def test_provinces_are_the_34_province_level_divisions() -> None:
    assert len(PROVINCES) == 34
    assert province_name("330000") == "浙江省"
    assert province_name("510000") == "四川省"
    assert province_name("500000") == "重庆市"
    assert province_name("330100") is None  # a prefecture, not a province


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("si.participation", True),
        ("SI-TRANSFER", True),
        ("sc.hrss", True),
        ("citizen_id", True),
        ("a" * MAX_REGISTRY_ID_CHARS, True),
        ("a" * (MAX_REGISTRY_ID_CHARS + 1), False),
        ("", False),
        ("11010519491231002X", False),  # a citizen id is no id: ids start with a letter
        ("91350100M000100Y43", False),  # nor is a credit code
        ("1a", False),
        (".a", False),
        ("a b", False),
        ("a\n", False),
        ("ａbc", False),  # full-width letter
        ("数据", False),
    ],
)
def test_registry_id_grammar(value: str, valid: bool) -> None:
    assert is_registry_id(value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("330000", True), ("990000", True), ("33000", False), ("3300000", False), ("33000A", False)],
)
def test_region_code_grammar(value: str, valid: bool) -> None:
    assert is_region_code(value) is valid


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("11010519491231002X", True),
        ("11010519491231002x", True),
        ("case 11010519491231002X of 2026", True),
        ("A11010519491231002XB", True),
        ("１１０１０５１９４９１２３１００２Ｘ", True),  # full-width
        ("办件１１０１０５１９４９１２３１００２x号", True),
        ("110105194912310021", False),  # wrong check character
        ("911010519491231002X", False),  # 19 digits: part of a longer number
        ("11010519491231002X7", False),
        ("CASE-2026-0001", False),
        ("", False),
    ],
)
def test_a_citizen_id_is_found_anywhere_in_a_value(value: str, found: bool) -> None:
    assert contains_citizen_id(value) is found
