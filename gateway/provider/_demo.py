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

import base64
import hashlib
import hmac
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from types import MappingProxyType
from typing import TypeVar

from registry._codes import (
    PROVINCES,
    citizen_id_check_char,
    is_valid_citizen_id,
    is_valid_uscc,
    org_code_check_char,
    uscc_check_char,
)

__all__ = ["AS_OF", "DATASET_FIELDS", "DEFAULT_SEED", "DEMO_REGIONS", "DemoData", "Record"]

DEFAULT_SEED = "tongban-demo"
AS_OF = date(2025, 6, 30)
FOUND_PERCENT = 90

Record = dict[str, object]
T = TypeVar("T")

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


# Geography ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _District:
    code: str  # GB/T 2260 county-level code
    city: str  # prefecture-level city; "" for Chongqing's districts (the municipality is the city)
    name: str


@dataclass(frozen=True, slots=True)
class _Province:
    code: str
    districts: tuple[_District, ...]
    minorities: tuple[str, ...]
    base_range: tuple[int, int]  # monthly contribution base, yuan

    @property
    def name(self) -> str:
        return PROVINCES[self.code]


def _districts(city: str, *pairs: tuple[str, str]) -> tuple[_District, ...]:
    return tuple(_District(code, city, name) for code, name in pairs)


_PROVINCES: dict[str, _Province] = {
    "330000": _Province(
        "330000",
        (
            *_districts(
                "杭州市",
                ("330102", "上城区"),
                ("330105", "拱墅区"),
                ("330106", "西湖区"),
                ("330108", "滨江区"),
                ("330109", "萧山区"),
                ("330110", "余杭区"),
            ),
            *_districts(
                "宁波市",
                ("330203", "海曙区"),
                ("330205", "江北区"),
                ("330206", "北仑区"),
                ("330212", "鄞州区"),
            ),
            *_districts("温州市", ("330302", "鹿城区"), ("330303", "龙湾区"), ("330304", "瓯海区")),
            *_districts("嘉兴市", ("330402", "南湖区")),
            *_districts("绍兴市", ("330602", "越城区")),
            *_districts("金华市", ("330702", "婺城区")),
        ),
        ("畲族", "回族", "土家族", "苗族"),
        (4_500, 24_000),
    ),
    "510000": _Province(
        "510000",
        (
            *_districts(
                "成都市",
                ("510104", "锦江区"),
                ("510105", "青羊区"),
                ("510106", "金牛区"),
                ("510107", "武侯区"),
                ("510108", "成华区"),
            ),
            *_districts("绵阳市", ("510703", "涪城区"), ("510704", "游仙区")),
            *_districts("德阳市", ("510603", "旌阳区")),
            *_districts("南充市", ("511302", "顺庆区")),
            *_districts("乐山市", ("511102", "市中区")),
            *_districts("宜宾市", ("511502", "翠屏区")),
        ),
        ("彝族", "藏族", "羌族", "回族"),
        (4_000, 20_000),
    ),
    "500000": _Province(
        "500000",
        _districts(
            "",
            ("500101", "万州区"),
            ("500103", "渝中区"),
            ("500104", "大渡口区"),
            ("500105", "江北区"),
            ("500106", "沙坪坝区"),
            ("500107", "九龙坡区"),
            ("500108", "南岸区"),
            ("500109", "北碚区"),
            ("500112", "渝北区"),
            ("500113", "巴南区"),
        ),
        ("土家族", "苗族", "回族"),
        (4_000, 21_000),
    ),
}
DEMO_REGIONS: tuple[str, ...] = tuple(_PROVINCES)

# Names and words -------------------------------------------------------------------------------
_SURNAMES: tuple[str, ...] = (
    *"王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程"
    "魏苏吕丁任沈姚卢傅钟姜崔谭廖范汪陆金石戴贾韦夏邱方侯邹熊孟秦白江薛尹段雷黎史龙陶贺顾毛"
    "郝龚邵万钱严覃武莫孔向汤",
    "欧阳",
    "上官",
    "司马",
)
_MALE_CHARS = (
    "伟强磊军勇杰涛斌超明刚平辉鹏华飞鑫波宇浩凯健俊帆旭宁龙林阳晨博文志建国东海峰诚睿轩然泽"
)
_FEMALE_CHARS = "芳娜敏静丽艳娟霞燕玲英秀梅兰琳婷雪慧颖倩洁萍红晶佳欣悦瑶怡蕾璐琪雯丹妍雨涵萱思"
_ROADS = (
    "人民路",
    "解放路",
    "中山路",
    "建设路",
    "新华路",
    "文化路",
    "和平路",
    "民主路",
    "胜利路",
    "青年路",
    "学院路",
    "光明路",
    "朝阳路",
    "东风路",
    "长江路",
    "滨江路",
    "健康路",
    "公园路",
)
_COMPOUNDS = (
    "阳光花园",
    "锦绣家园",
    "翠苑小区",
    "金色家园",
    "和谐小区",
    "幸福里",
    "丽都花园",
    "春晓苑",
    "湖畔人家",
    "书香名邸",
    "东方明珠苑",
    "桂花城",
)
_BRANDS = (
    "恒达",
    "华信",
    "众创",
    "鼎盛",
    "天成",
    "远航",
    "新元",
    "博远",
    "瑞丰",
    "嘉禾",
    "同辉",
    "启明",
    "宏图",
    "汇通",
    "卓越",
    "青禾",
    "云帆",
    "锦程",
)
_INDUSTRIES: tuple[tuple[str, str], ...] = (
    ("信息技术", "软件开发；信息系统集成服务；信息技术咨询服务；数据处理和存储支持服务"),
    ("电子科技", "电子元器件制造；电子产品销售；技术服务、技术开发、技术咨询、技术转让"),
    ("机械制造", "通用设备制造（不含特种设备制造）；机械零件、零部件加工；机械设备销售"),
    ("商贸", "日用百货销售；五金产品零售；食品销售（仅销售预包装食品）；货物进出口"),
    ("建筑工程", "建设工程施工；住宅室内装饰装修；建筑材料销售"),
    ("物流", "道路货物运输（不含危险货物）；普通货物仓储服务；国内货物运输代理"),
    ("餐饮管理", "餐饮服务；餐饮管理；食品销售"),
    ("文化传媒", "广告设计、代理；组织文化艺术交流活动；会议及展览服务"),
    ("生物医药", "医学研究和试验发展；第一类医疗器械销售；技术服务、技术开发"),
    ("食品", "食品生产；农副产品销售；食品销售"),
    ("农业开发", "蔬菜种植；水果种植；农业专业及辅助性活动"),
    ("家政服务", "家政服务；养老服务；物业管理"),
)
_COMPANY_SUFFIXES = (("有限公司", 75), ("有限责任公司", 15), ("股份有限公司", 10))
_BANK_BINS = ("621700", "622848", "621226", "621661", "622908", "623668")
_MOBILE_PREFIXES = ("138", "139", "150", "158", "177", "186", "189", "199")
_CONDITIONS = (
    "高血压",
    "糖尿病",
    "冠心病",
    "慢性阻塞性肺疾病",
    "类风湿性关节炎",
    "帕金森病",
    "慢性肾脏病",
)
_POLICE_CASES: tuple[tuple[str, str], ...] = (
    ("违反治安管理（扰乱公共秩序）", "警告"),
    ("违反治安管理（殴打他人）", "罚款500元"),
    ("违反治安管理（盗窃）", "行政拘留5日"),
    ("违反治安管理（寻衅滋事）", "行政拘留10日"),
    ("违反治安管理（故意损毁财物）", "罚款200元"),
)
_BACKGROUNDS = ((255, 255, 255), (67, 142, 219), (216, 0, 15))  # white, blue, red (证件照底色)


# Deterministic draws ---------------------------------------------------------------------------
class _Draw:
    """A stream of numbers from HMAC-SHA256(seed, label || counter)."""

    def __init__(self, key: bytes, label: str) -> None:
        self._key = key
        self._label = label.encode()
        self._counter = 0
        self._buffer = b""

    def _bytes(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = self._label if self._counter == 0 else self._label + b"#%d" % self._counter
            self._buffer += hmac.new(self._key, block, hashlib.sha256).digest()
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def below(self, n: int) -> int:
        return int.from_bytes(self._bytes(8), "big") % n

    def between(self, low: int, high: int) -> int:
        """An integer in [low, high]."""
        return low + self.below(high - low + 1)

    def chance(self, percent: int) -> bool:
        return self.below(100) < percent

    def choice(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def weighted(self, options: Sequence[tuple[T, int]]) -> T:
        pick = self.below(sum(weight for _, weight in options))
        for value, weight in options:
            if pick < weight:
                return value
            pick -= weight
        raise AssertionError("unreachable")  # pragma: no cover

    def sample(self, options: Sequence[T], k: int) -> list[T]:
        pool = list(options)
        return [pool.pop(self.below(len(pool))) for _ in range(min(k, len(pool)))]

    def date_between(self, start: date, end: date) -> date:
        if end <= start:
            return start
        return start + timedelta(days=self.below((end - start).days + 1))

    def digits(self, n: int) -> str:
        return "".join(str(self.below(10)) for _ in range(n))


def _add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def _age(birth: date, on: date = AS_OF) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _luhn(body: str) -> str:
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def _citizen_id(division: str, birth: date, male: bool, draw: _Draw) -> str:
    sequence = draw.below(50) * 10 + draw.choice((1, 3, 5, 7, 9) if male else (0, 2, 4, 6, 8))
    body = f"{division}{birth:%Y%m%d}{sequence:03d}"
    return body + citizen_id_check_char(body)


def _png(width: int, height: int, pixel: Callable[[int, int], tuple[int, int, int]]) -> bytes:
    """An RGB PNG, stored uncompressed so that its bytes never depend on the zlib build."""
    rows = b"".join(
        b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height)
    )

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data)
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 0))
        + chunk(b"IEND", b"")
    )


def _portrait(background: tuple[int, int, int], tone: tuple[int, int, int]) -> str:
    """A 24x32 ID-photo placeholder (head and shoulders on a coloured ground), as a data URI."""

    def pixel(x: int, y: int) -> tuple[int, int, int]:
        head = (x - 12) ** 2 + (y - 12) ** 2 <= 36
        shoulders = y >= 22 and (x - 12) ** 2 <= (y - 16) * 9
        return tone if head or shoulders else background

    return "data:image/png;base64," + base64.b64encode(_png(24, 32, pixel)).decode("ascii")


# People ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Person:
    citizen_id: str
    name: str
    male: bool
    birth: date

    @property
    def age(self) -> int:
        return _age(self.birth)


@dataclass(frozen=True, slots=True)
class _Resident:
    """A person's life in one region."""

    district: _District
    employment: str  # "employee", "flexible" or "resident"
    employer: str | None
    monthly_base: int | None


def _given_name(draw: _Draw, male: bool) -> str:
    chars = _MALE_CHARS if male else _FEMALE_CHARS
    return "".join(draw.choice(chars) for _ in range(draw.weighted(((1, 30), (2, 70)))))


def _name(draw: _Draw, male: bool, surname: str | None = None) -> str:
    return (surname or draw.choice(_SURNAMES)) + _given_name(draw, male)


def _surname(name: str) -> str:
    return name[:2] if name[:2] in _SURNAMES else name[0]


def _birth_from_id(citizen_id: str) -> date | None:
    try:
        birth = date(int(citizen_id[6:10]), int(citizen_id[10:12]), int(citizen_id[12:14]))
    except ValueError:
        return None
    return birth if date(1900, 1, 1) <= birth <= AS_OF else None


class DemoData:
    """Synthetic records of one demo region (330000 浙江, 510000 四川 or 500000 重庆)."""

    def __init__(self, region: str, seed: str = DEFAULT_SEED) -> None:
        if region not in _PROVINCES:
            raise ValueError(
                f"no demo data for region {region!r}: the demo regions are {', '.join(DEMO_REGIONS)}"
            )
        self.region = region
        self.seed = seed
        self._key = seed.encode()
        self._province = _PROVINCES[region]
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
        if not _Draw(self._key, label + "|held").chance(FOUND_PERCENT):
            return None
        draw = _Draw(self._key, label)
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
            draw = _Draw(self._key, f"{self.region}|population|{i}")
            i += 1
            district = draw.choice(self._province.districts)
            birth = draw.date_between(_add_years(AS_OF, -80), _add_years(AS_OF, -18))
            citizen_id = _citizen_id(district.code, birth, draw.chance(50), draw)
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
            draw = _Draw(self._key, f"{self.region}|business|{i}")
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
    def _place(self, district: _District) -> str:
        return f"{self._province.name}{district.city}{district.name}"

    def _district_of(self, code: str, draw: _Draw) -> _District:
        return self._by_code.get(code) or draw.choice(self._province.districts)

    def _person(self, citizen_id: str) -> _Person:
        draw = _Draw(self._key, f"person|{citizen_id}")
        male = int(citizen_id[16]) % 2 == 1
        birth = _birth_from_id(citizen_id) or draw.date_between(
            _add_years(AS_OF, -80), _add_years(AS_OF, -18)
        )
        return _Person(citizen_id, _name(draw, male), male, birth)

    def _resident(self, person: _Person) -> _Resident:
        draw = _Draw(self._key, f"{self.region}|person|{person.citizen_id}")
        district = self._district_of(person.citizen_id[:6], draw)
        employment = draw.weighted((("employee", 70), ("flexible", 15), ("resident", 15)))
        if person.age < 16:
            employment = "resident"
        employer = self._company_name(draw, district)[0] if employment == "employee" else None
        if employment == "flexible":
            employer = "灵活就业人员"
        low, high = self._province.base_range
        base = None if employment == "resident" else draw.between(low // 10, high // 10) * 10
        return _Resident(district, employment, employer, base)

    def _company_name(self, draw: _Draw, district: _District) -> tuple[str, str]:
        """A company name and its business scope."""
        city = (district.city or self._province.name).removesuffix("市")
        industry, scope = draw.choice(_INDUSTRIES)
        suffix = draw.weighted(_COMPANY_SUFFIXES)
        return f"{city}{draw.choice(_BRANDS)}{industry}{suffix}", scope

    def _home_address(self, draw: _Draw, district: _District) -> str:
        return (
            f"{self._place(district)}{draw.choice(_ROADS)}{draw.between(1, 399)}号"
            f"{draw.choice(_COMPOUNDS)}{draw.between(1, 30)}幢{draw.between(1, 4)}单元"
            f"{draw.between(1, 28)}{draw.between(1, 4):02d}室"
        )

    def _office_address(self, draw: _Draw, district: _District) -> str:
        return (
            f"{self._place(district)}{draw.choice(_ROADS)}{draw.between(1, 999)}号"
            f"{draw.between(1, 30)}层{draw.between(1, 30):02d}室"
        )

    def _insured_region(self, district: _District) -> str:
        return district.city or self._province.name  # 重庆 pools at the municipal level

    def _civil_office(self, district: _District) -> str:
        return f"{self._insured_region(district)}{district.name}民政局"

    # Datasets ----------------------------------------------------------------------------------
    def _si_participation(self, draw: _Draw, person: _Person, home: _Resident) -> Record | None:
        if person.age < 16:
            return None
        start = max(_add_years(person.birth, 18), date(1995, 1, 1))
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
        bank = draw.choice(_BANK_BINS) + draw.digits(12)
        return {
            "gender": "男" if person.male else "女",
            "insured_since": insured_since.isoformat(),
            "insurance_types": types,
            "contribution_months": months,
            "monthly_base": home.monthly_base,
            "employer_name": home.employer,
            "status": status,
            "bank_account": bank + _luhn(bank),
        }

    def _medical_insurance(self, draw: _Draw, person: _Person, home: _Resident) -> Record:
        employed = home.employment in ("employee", "flexible")
        conditions: list[str] = []
        if draw.chance(35 if person.age >= 50 else 8):
            conditions = sorted(draw.sample(_CONDITIONS, draw.between(1, 2)))
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

    def _hukou_household(self, draw: _Draw, person: _Person, home: _Resident) -> Record:
        surname = _surname(person.name)
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
            head = _name(draw, not person.male)
        elif relation in ("子", "女", "父亲"):
            head = _name(draw, draw.chance(50), surname)
        else:  # 母亲: her child usually carries the father's surname
            head = _name(draw, draw.chance(50))
        ethnicity = draw.choice(self._province.minorities) if draw.chance(8) else "汉族"
        tone = draw.choice(((62, 62, 70), (90, 80, 72), (48, 44, 44)))
        return {
            "gender": "男" if person.male else "女",
            "ethnicity": ethnicity,
            "birth_date": person.birth.isoformat(),
            "address": self._home_address(draw, home.district),
            "household_head": head,
            "relation_to_head": relation,
            "photo": _portrait(draw.choice(_BACKGROUNDS), tone),
        }

    def _civil_marriage(self, draw: _Draw, person: _Person, home: _Resident) -> Record:
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
        married_on = draw.date_between(_add_years(person.birth, legal_age), AS_OF)
        registered_on = married_on
        if status == "离婚":  # the latest registration is the divorce
            registered_on = draw.date_between(married_on + timedelta(days=180), AS_OF)
        spouse_birth = draw.date_between(_add_years(person.birth, -6), _add_years(person.birth, 6))
        spouse_birth = min(spouse_birth, _add_years(married_on, -(20 if person.male else 22)))
        spouse_district = draw.choice(self._province.districts)
        return {
            "marital_status": status,
            "registered_on": min(registered_on, AS_OF).isoformat(),
            "registration_office": self._civil_office(home.district),
            "spouse_name": _name(draw, not person.male),
            "spouse_citizen_id": _citizen_id(
                spouse_district.code, spouse_birth, not person.male, draw
            ),
        }

    def _police_case_records(self, draw: _Draw, person: _Person, home: _Resident) -> Record:
        records: list[dict[str, str]] = []
        if person.age >= 16 and draw.chance(12):
            for _ in range(draw.between(1, 2)):
                case_type, disposition = draw.choice(_POLICE_CASES)
                decided = draw.date_between(_add_years(person.birth, 16), AS_OF)
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

    def _business_licence(self, draw: _Draw, uscc: str) -> Record:
        district = self._district_of(uscc[2:8], draw)
        company, scope = self._company_name(draw, district)
        mobile = draw.choice(_MOBILE_PREFIXES) + draw.digits(8)
        return {
            "uscc": uscc,
            "company_name": company,
            "legal_representative": _name(draw, draw.chance(65)),
            "registered_capital": draw.choice((10, 50, 100, 200, 300, 500, 1000, 2000, 5000)),
            "established_on": draw.date_between(date(1995, 1, 1), AS_OF).isoformat(),
            "business_scope": scope,
            "address": self._office_address(draw, district),
            "status": draw.weighted(
                (("存续（在营、开业、在册）", 85), ("注销", 8), ("吊销，未注销", 4), ("迁出", 3))
            ),
            "contact_phone": mobile,
        }
