"""Synthetic provincial data for demos and tests: citizens and businesses that do not exist.

Everything is derived from HMAC-SHA256 keyed with the seed, so the same seed, region, dataset and
subject always give the same record, on any machine, without storing anything:

- the *person* (name; gender and birth date come from the citizen id itself) is drawn from
  `HMAC(seed, "person|" + subject)`, so one synthetic citizen has the same name in every region;
- the person's *life in the region* (district, employment, employer) from
  `HMAC(seed, region + "|person|" + subject)`, so the region's datasets agree with each other
  (the employer in si.participation decides the medical insurance type; the hukou district is
  where the marriage was registered);
- each dataset's record from `HMAC(seed, region + "|" + dataset + "|" + subject)`.

Existence: any well-formed subject id (GB 11643 citizen id, or GB 32100 credit code for
market.business_licence) is found in a dataset with probability about 0.9, decided by
`HMAC(seed, region + "|" + dataset + "|" + subject + "|held")`; besides, a person younger than 16
has no social insurance record. The id need not carry a division of the region: a province holds
records of people born elsewhere. When its first six digits are one of the region's districts
below, that district is where the person lives; otherwise one is drawn.

Records describe the state on `AS_OF`, a fixed date, so that they do not change with the clock.
Values are JSON: strings, integers, lists, and null for a field that does not apply (a single
person's spouse, a resident's employer).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from types import MappingProxyType

from gateway.demo._synthetic import (
    AS_OF,
    BACKGROUNDS,
    BANK_BINS,
    BRANDS,
    COMPANY_SUFFIXES,
    COMPOUNDS,
    CONDITIONS,
    DEMO_PROVINCES,
    DEMO_REGIONS,
    INDUSTRIES,
    MOBILE_PREFIXES,
    POLICE_CASES,
    ROADS,
    District,
    Draw,
    Person,
    Resident,
    add_years,
    birth_from_id,
    full_name,
    luhn,
    make_citizen_id,
    portrait,
    surname_of,
)
from registry._codes import (
    is_valid_citizen_id,
    is_valid_uscc,
    org_code_check_char,
    uscc_check_char,
)

__all__ = ["AS_OF", "DATASET_FIELDS", "DEFAULT_SEED", "DEMO_REGIONS", "DemoData", "Record"]

DEFAULT_SEED = "tongban-demo"
FOUND_PERCENT = 90

Record = dict[str, object]

# The fields of each demo dataset, as conf/registry/datasets.toml lists them.
DATASET_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "si.participation": (
            "name",
            "citizen_id",
            "gender",
            "insured_since",
            "insurance_types",
            "contribution_months",
            "monthly_base",
            "employer_name",
            "status",
            "bank_account",
        ),
        "medical.insurance": (
            "name",
            "citizen_id",
            "insurance_type",
            "insured_region",
            "status",
            "filing_status",
            "chronic_conditions",
        ),
        "hukou.household": (
            "name",
            "citizen_id",
            "gender",
            "ethnicity",
            "birth_date",
            "address",
            "household_head",
            "relation_to_head",
            "photo",
        ),
        "market.business_licence": (
            "uscc",
            "company_name",
            "legal_representative",
            "registered_capital",
            "established_on",
            "business_scope",
            "address",
            "status",
            "contact_phone",
        ),
        "civil.marriage": (
            "name",
            "citizen_id",
            "marital_status",
            "registered_on",
            "registration_office",
            "spouse_name",
            "spouse_citizen_id",
        ),
        "police.case_records": ("name", "citizen_id", "records"),
    }
)
_BUSINESS_DATASETS = frozenset({"market.business_licence"})


class DemoData:
    """Synthetic records of one demo region (330000 浙江, 510000 四川 or 500000 重庆)."""

    def __init__(self, region: str, seed: str = DEFAULT_SEED) -> None:
        if region not in DEMO_PROVINCES:
            raise ValueError(
                f"no demo data for region {region!r}: the demo regions are {', '.join(DEMO_REGIONS)}"
            )
        self.region = region
        self.seed = seed
        self._key = seed.encode()
        self._province = DEMO_PROVINCES[region]
        self._by_code = {d.code: d for d in self._province.districts}

    # Catalogue ---------------------------------------------------------------------------------
    @property
    def datasets(self) -> frozenset[str]:
        return frozenset(DATASET_FIELDS)

    @property
    def divisions(self) -> Mapping[str, str]:
        """The county-level divisions people and businesses are drawn in: code → full name."""
        return {d.code: self._place(d) for d in self._province.districts}

    def fields(self, dataset: str) -> tuple[str, ...]:
        """The dataset's fields; KeyError for a dataset this data system does not hold."""
        return DATASET_FIELDS[dataset]

    def is_valid_subject(self, dataset: str, subject_id: str) -> bool:
        """A credit code for market.business_licence, a citizen id for the other datasets."""
        if dataset in _BUSINESS_DATASETS:
            return is_valid_uscc(subject_id)
        return is_valid_citizen_id(subject_id)

    # Records -----------------------------------------------------------------------------------
    def record(self, dataset: str, subject_id: str) -> Record | None:
        """The subject's full record in `dataset`, or None when the region holds none.

        KeyError for an unknown dataset, ValueError for a malformed subject id.
        """
        fields = self.fields(dataset)
        if not self.is_valid_subject(dataset, subject_id):
            raise ValueError(f"not a well-formed subject id for {dataset}")
        label = f"{self.region}|{dataset}|{subject_id}"
        if not Draw(self._key, label + "|held").chance(FOUND_PERCENT):
            return None
        draw = Draw(self._key, label)
        if dataset in _BUSINESS_DATASETS:
            record = self._business_licence(draw, subject_id)
        else:
            person = self._person(subject_id)
            make = {
                "si.participation": self._si_participation,
                "medical.insurance": self._medical_insurance,
                "hukou.household": self._hukou_household,
                "civil.marriage": self._civil_marriage,
                "police.case_records": self._police_case_records,
            }[dataset]
            generated = make(draw, person, self._resident(person))
            if generated is None:
                return None
            record = {"name": person.name, "citizen_id": person.citizen_id, **generated}
        return {name: record[name] for name in fields}  # in catalogue order

    def population(self, n: int) -> list[str]:
        """`n` distinct synthetic citizen ids of people born in the region's districts, aged
        18 to 80 on AS_OF, with real birth dates and valid check characters; always the same
        list for the same seed and region (the first `n` of one sequence)."""
        ids: list[str] = []
        seen: set[str] = set()
        i = 0
        while len(ids) < n:
            draw = Draw(self._key, f"{self.region}|population|{i}")
            i += 1
            district = draw.choice(self._province.districts)
            birth = draw.date_between(add_years(AS_OF, -80), add_years(AS_OF, -18))
            citizen_id = make_citizen_id(district.code, birth, draw.chance(50), draw)
            if citizen_id not in seen:
                seen.add(citizen_id)
                ids.append(citizen_id)
        return ids

    def businesses(self, n: int) -> list[str]:
        """`n` distinct synthetic unified social credit codes of enterprises (登记管理部门 9,
        机构类别 1) registered in the region's districts, with valid GB 11714 and GB 32100 check
        characters; always the same list for the same seed and region."""
        codes: list[str] = []
        seen: set[str] = set()
        i = 0
        alphabet = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # in both the GB 11714 and GB 32100 sets
        while len(codes) < n:
            draw = Draw(self._key, f"{self.region}|business|{i}")
            i += 1
            district = draw.choice(self._province.districts)
            if draw.chance(60):  # codes issued since 2015 start with "MA"
                body = "MA" + "".join(draw.choice(alphabet) for _ in range(6))
            else:
                body = draw.digits(8)
            first17 = f"91{district.code}{body}{org_code_check_char(body)}"
            uscc = first17 + uscc_check_char(first17)
            if uscc not in seen:
                seen.add(uscc)
                codes.append(uscc)
        return codes

    # Building blocks ---------------------------------------------------------------------------
    def _place(self, district: District) -> str:
        return f"{self._province.name}{district.city}{district.name}"

    def _district_of(self, code: str, draw: Draw) -> District:
        return self._by_code.get(code) or draw.choice(self._province.districts)

    def _person(self, citizen_id: str) -> Person:
        draw = Draw(self._key, f"person|{citizen_id}")
        male = int(citizen_id[16]) % 2 == 1
        birth = birth_from_id(citizen_id) or draw.date_between(
            add_years(AS_OF, -80), add_years(AS_OF, -18)
        )
        return Person(citizen_id, full_name(draw, male), male, birth)

    def _resident(self, person: Person) -> Resident:
        draw = Draw(self._key, f"{self.region}|person|{person.citizen_id}")
        district = self._district_of(person.citizen_id[:6], draw)
        employment = draw.weighted((("employee", 70), ("flexible", 15), ("resident", 15)))
        if person.age < 16:
            employment = "resident"
        employer = self._company_name(draw, district)[0] if employment == "employee" else None
        if employment == "flexible":
            employer = "灵活就业人员"
        low, high = self._province.base_range
        base = None if employment == "resident" else draw.between(low // 10, high // 10) * 10
        return Resident(district, employment, employer, base)

    def _company_name(self, draw: Draw, district: District) -> tuple[str, str]:
        """A company name and its business scope."""
        city = (district.city or self._province.name).removesuffix("市")
        industry, scope = draw.choice(INDUSTRIES)
        suffix = draw.weighted(COMPANY_SUFFIXES)
        return f"{city}{draw.choice(BRANDS)}{industry}{suffix}", scope

    def _home_address(self, draw: Draw, district: District) -> str:
        return (
            f"{self._place(district)}{draw.choice(ROADS)}{draw.between(1, 399)}号"
            f"{draw.choice(COMPOUNDS)}{draw.between(1, 30)}幢{draw.between(1, 4)}单元"
            f"{draw.between(1, 28)}{draw.between(1, 4):02d}室"
        )

    def _office_address(self, draw: Draw, district: District) -> str:
        return (
            f"{self._place(district)}{draw.choice(ROADS)}{draw.between(1, 999)}号"
            f"{draw.between(1, 30)}层{draw.between(1, 30):02d}室"
        )

    def _insured_region(self, district: District) -> str:
        return district.city or self._province.name  # 重庆 pools at the municipal level

    def _civil_office(self, district: District) -> str:
        return f"{self._insured_region(district)}{district.name}民政局"

    # Datasets ----------------------------------------------------------------------------------
    def _si_participation(self, draw: Draw, person: Person, home: Resident) -> Record | None:
        if person.age < 16:
            return None
        start = max(add_years(person.birth, 18), date(1995, 1, 1))
        insured_since = draw.date_between(min(start, AS_OF - timedelta(days=31)), AS_OF)
        months = (AS_OF.year - insured_since.year) * 12 + AS_OF.month - insured_since.month
        months = max(1, months - draw.below(months // 5 + 1))
        if home.employment == "employee":
            types = ["企业职工基本养老保险"]
            types += ["失业保险"] if draw.chance(90) else []
            types += ["工伤保险"] if draw.chance(80) else []
        elif home.employment == "flexible":
            types = ["企业职工基本养老保险"]
        else:
            types = ["城乡居民基本养老保险"]
        retired = person.age >= (60 if person.male else 55)
        if retired and draw.chance(85):
            status = "领取待遇"
        else:
            status = draw.weighted((("参保缴费", 80), ("暂停缴费", 12), ("终止参保", 8)))
        bank = draw.choice(BANK_BINS) + draw.digits(12)
        return {
            "gender": "男" if person.male else "女",
            "insured_since": insured_since.isoformat(),
            "insurance_types": types,
            "contribution_months": months,
            "monthly_base": home.monthly_base,
            "employer_name": home.employer,
            "status": status,
            "bank_account": bank + luhn(bank),
        }

    def _medical_insurance(self, draw: Draw, person: Person, home: Resident) -> Record:
        employed = home.employment in ("employee", "flexible")
        conditions: list[str] = []
        if draw.chance(35 if person.age >= 50 else 8):
            conditions = sorted(draw.sample(CONDITIONS, draw.between(1, 2)))
        return {
            "insurance_type": "职工基本医疗保险" if employed else "城乡居民基本医疗保险",
            "insured_region": self._insured_region(home.district),
            "status": draw.weighted((("参保缴费", 88), ("暂停缴费", 8), ("终止参保", 4))),
            "filing_status": draw.weighted(
                (
                    ("未备案", 80),
                    ("已备案（异地长期居住）", 8),
                    ("已备案（常驻异地工作）", 6),
                    ("已备案（异地转诊）", 3),
                    ("已备案（临时外出就医）", 3),
                )
            ),
            "chronic_conditions": conditions,
        }

    def _hukou_household(self, draw: Draw, person: Person, home: Resident) -> Record:
        surname = surname_of(person.name)
        if person.age < 18:
            relation = "子" if person.male else "女"
        else:
            options = [("户主", 50), ("配偶", 25), ("子" if person.male else "女", 15)]
            if person.age >= 50:
                options.append(("父亲" if person.male else "母亲", 10))
            relation = draw.weighted(options)
        if relation == "户主":
            head = person.name
        elif relation == "配偶":
            head = full_name(draw, not person.male)
        elif relation in ("子", "女", "父亲"):
            head = full_name(draw, draw.chance(50), surname)
        else:  # 母亲: her child usually carries the father's surname
            head = full_name(draw, draw.chance(50))
        ethnicity = draw.choice(self._province.minorities) if draw.chance(8) else "汉族"
        tone = draw.choice(((62, 62, 70), (90, 80, 72), (48, 44, 44)))
        return {
            "gender": "男" if person.male else "女",
            "ethnicity": ethnicity,
            "birth_date": person.birth.isoformat(),
            "address": self._home_address(draw, home.district),
            "household_head": head,
            "relation_to_head": relation,
            "photo": portrait(draw.choice(BACKGROUNDS), tone),
        }

    def _civil_marriage(self, draw: Draw, person: Person, home: Resident) -> Record:
        legal_age = 22 if person.male else 20
        single: Record = {
            "marital_status": "未婚",
            "registered_on": None,
            "registration_office": None,
            "spouse_name": None,
            "spouse_citizen_id": None,
        }
        if person.age < legal_age:
            return single
        options: tuple[tuple[str, int], ...]
        if person.age < 30:
            options = (("未婚", 55), ("已婚", 42), ("离婚", 3))
        elif person.age <= 50:
            options = (("未婚", 10), ("已婚", 78), ("离婚", 10), ("丧偶", 2))
        else:
            options = (("未婚", 3), ("已婚", 80), ("离婚", 7), ("丧偶", 10))
        status = draw.weighted(options)
        if status == "未婚":
            return single
        married_on = draw.date_between(add_years(person.birth, legal_age), AS_OF)
        registered_on = married_on
        if status == "离婚":  # the latest registration is the divorce
            registered_on = draw.date_between(married_on + timedelta(days=180), AS_OF)
        spouse_birth = draw.date_between(add_years(person.birth, -6), add_years(person.birth, 6))
        spouse_birth = min(spouse_birth, add_years(married_on, -(20 if person.male else 22)))
        spouse_district = draw.choice(self._province.districts)
        return {
            "marital_status": status,
            "registered_on": min(registered_on, AS_OF).isoformat(),
            "registration_office": self._civil_office(home.district),
            "spouse_name": full_name(draw, not person.male),
            "spouse_citizen_id": make_citizen_id(
                spouse_district.code, spouse_birth, not person.male, draw
            ),
        }

    def _police_case_records(self, draw: Draw, person: Person, home: Resident) -> Record:
        records: list[dict[str, str]] = []
        if person.age >= 16 and draw.chance(12):
            for _ in range(draw.between(1, 2)):
                case_type, disposition = draw.choice(POLICE_CASES)
                decided = draw.date_between(add_years(person.birth, 16), AS_OF)
                district = home.district
                city = self._insured_region(district)
                records.append(
                    {
                        "case_no": f"{district.code}{decided.year}{draw.digits(6)}",
                        "case_type": case_type,
                        "decided_on": decided.isoformat(),
                        "authority": f"{city}公安局{district.name}分局",
                        "disposition": disposition,
                    }
                )
            records.sort(key=lambda r: r["decided_on"])
        return {"records": records}

    def _business_licence(self, draw: Draw, uscc: str) -> Record:
        district = self._district_of(uscc[2:8], draw)
        company, scope = self._company_name(draw, district)
        mobile = draw.choice(MOBILE_PREFIXES) + draw.digits(8)
        return {
            "uscc": uscc,
            "company_name": company,
            "legal_representative": full_name(draw, draw.chance(65)),
            "registered_capital": draw.choice((10, 50, 100, 200, 300, 500, 1000, 2000, 5000)),
            "established_on": draw.date_between(date(1995, 1, 1), AS_OF).isoformat(),
            "business_scope": scope,
            "address": self._office_address(draw, district),
            "status": draw.weighted(
                (("存续（在营、开业、在册）", 85), ("注销", 8), ("吊销，未注销", 4), ("迁出", 3))
            ),
            "contact_phone": mobile,
        }
