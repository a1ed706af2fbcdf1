"""An applicant's id, as a request token's `applicant` claim and a case's submission carry it:
an 18-character citizen id (GB 11643) or unified social credit code (GB 32100), each with its
check character (`registry`'s checks, the ones the query policy applies to subject ids)."""

from __future__ import annotations

from registry import is_valid_citizen_id, is_valid_uscc

__all__ = ["is_applicant_id"]


def is_applicant_id(value: str) -> bool:
    return is_valid_citizen_id(value) or is_valid_uscc(value)
