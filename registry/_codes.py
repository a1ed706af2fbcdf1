"""National code standards the registry validates against.

- GB/T 2260 administrative divisions: the province-level codes (the regions of Tongban).
- GB 11643 citizen identity numbers: 17 digits and an ISO 7064 MOD 11-2 check character.
- GB 32100 unified social credit codes: 18 characters, a MOD 31 check character, with the
  GB 11714 organisation code (and its own check character) in positions 9-17.

And the registry's own grammar for the ids it publishes (agencies, datasets, fields, purposes,
agreements): 1 to `MAX_REGISTRY_ID_CHARS` ASCII letters, digits, '.', '_' or '-', starting with
a letter. The leading letter is what keeps a citizen id (18 digits, or 17 and an X), a credit
code (it starts with a digit) or any other number out of every id field by grammar alone.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "MAX_REGISTRY_ID_CHARS",
    "PROVINCES",
    "citizen_id_check_char",
    "contains_citizen_id",
    "is_region_code",
    "is_registry_id",
    "is_valid_citizen_id",
    "is_valid_uscc",
    "org_code_check_char",
    "province_name",
    "uscc_check_char",
]

# GB/T 2260 province-level divisions (省级行政区划代码).
PROVINCES: dict[str, str] = {
    "110000": "北京市",
    "120000": "天津市",
    "130000": "河北省",
    "140000": "山西省",
    "150000": "内蒙古自治区",
    "210000": "辽宁省",
    "220000": "吉林省",
    "230000": "黑龙江省",
    "310000": "上海市",
    "320000": "江苏省",
    "330000": "浙江省",
    "340000": "安徽省",
    "350000": "福建省",
    "360000": "江西省",
    "370000": "山东省",
    "410000": "河南省",
    "420000": "湖北省",
    "430000": "湖南省",
    "440000": "广东省",
    "450000": "广西壮族自治区",
    "460000": "海南省",
    "500000": "重庆市",
    "510000": "四川省",
    "520000": "贵州省",
    "530000": "云南省",
    "540000": "西藏自治区",
    "610000": "陕西省",
    "620000": "甘肃省",
    "630000": "青海省",
    "640000": "宁夏回族自治区",
    "650000": "新疆维吾尔自治区",
    "710000": "台湾省",
    "810000": "香港特别行政区",
    "820000": "澳门特别行政区",
}


MAX_REGISTRY_ID_CHARS = 64  # characters of a registry id (agency, dataset, field, purpose...)
_REGISTRY_ID = re.compile(rf"[A-Za-z][A-Za-z0-9._-]{{0,{MAX_REGISTRY_ID_CHARS - 1}}}")
_REGION_CODE = re.compile(r"[0-9]{6}")


def is_registry_id(value: str) -> bool:
    """True for an id in the registry's grammar (see the module docstring)."""
    return _REGISTRY_ID.fullmatch(value) is not None


def is_region_code(value: str) -> bool:
    """True for a GB/T 2260 code in shape (six digits); `province_name` says if it is one."""
    return _REGION_CODE.fullmatch(value) is not None


def province_name(code: str) -> str | None:
    """The name of a province-level division, or None if the code is not one."""
    return PROVINCES.get(code)


_CITIZEN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CITIZEN_CHECK = "10X98765432"
_CITIZEN_RE = re.compile(r"[0-9]{17}[0-9X]")  # ASCII only: fullmatch, never `$`


def citizen_id_check_char(first17: str) -> str:
    """The GB 11643 check character for the first 17 digits of a citizen id."""
    if len(first17) != 17 or not (first17.isascii() and first17.isdigit()):
        raise ValueError("a citizen id body is 17 digits")
    total = sum(int(d) * w for d, w in zip(first17, _CITIZEN_WEIGHTS, strict=True))
    return _CITIZEN_CHECK[total % 11]


def is_valid_citizen_id(value: str) -> bool:
    """True for an 18-character GB 11643 id whose check character is right."""
    if _CITIZEN_RE.fullmatch(value) is None:
        return False
    return citizen_id_check_char(value[:17]) == value[17]


# 18 characters standing alone (no digit either side): 17 digits and a check character.
_CITIZEN_ID_IN_TEXT = re.compile(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9])")


def contains_citizen_id(value: str) -> bool:
    """True if `value` holds a valid GB 11643 number anywhere in it (a lower-case x counts, and
    so do full-width digits: the value is compared in Unicode NFKC form): such a value is
    personal data, whatever field it was sent in."""
    return any(
        is_valid_citizen_id(found.group().upper())
        for found in _CITIZEN_ID_IN_TEXT.finditer(unicodedata.normalize("NFKC", value))
    )


_ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_ORG_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def org_code_check_char(first8: str) -> str:
    """The GB 11714 check character of an organisation code body (8 characters)."""
    if len(first8) != 8 or any(c not in _ORG_ALPHABET for c in first8):
        raise ValueError("an organisation code body is 8 digits or capital letters")
    total = sum(_ORG_ALPHABET.index(c) * w for c, w in zip(first8, _ORG_WEIGHTS, strict=True))
    check = 11 - total % 11
    return {10: "X", 11: "0"}.get(check, str(check))


_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def uscc_check_char(first17: str) -> str:
    """The GB 32100 check character for the first 17 characters of a credit code."""
    if len(first17) != 17 or any(c not in _USCC_ALPHABET for c in first17):
        raise ValueError("a credit code body is 17 characters of the GB 32100 alphabet")
    total = sum(_USCC_ALPHABET.index(c) * w for c, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return _USCC_ALPHABET[(31 - total % 31) % 31]


def is_valid_uscc(value: str) -> bool:
    """True for an 18-character unified social credit code with both check characters right."""
    if len(value) != 18 or any(c not in _USCC_ALPHABET for c in value):
        return False
    if uscc_check_char(value[:17]) != value[17]:
        return False
    org = value[8:17]
    if any(c not in _ORG_ALPHABET for c in org):
        return False
    return org_code_check_char(org[:8]) == org[8]
