"""The deterministic machinery and vocabulary behind `gateway.demo.data`: the demo regions'
districts, names, roads, brands and industries, and draws from HMAC-SHA256 (see that module)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TypeVar

from registry._codes import PROVINCES, citizen_id_check_char

__all__ = [
    "AS_OF",
    "BACKGROUNDS",
    "BANK_BINS",
    "BRANDS",
    "COMPANY_SUFFIXES",
    "COMPOUNDS",
    "CONDITIONS",
    "DEMO_PROVINCES",
    "DEMO_REGIONS",
    "INDUSTRIES",
    "MOBILE_PREFIXES",
    "POLICE_CASES",
    "ROADS",
    "District",
    "Draw",
    "Person",
    "Resident",
    "add_years",
    "birth_from_id",
    "full_name",
    "luhn",
    "make_citizen_id",
    "portrait",
    "surname_of",
]

AS_OF = date(2025, 6, 30)
T = TypeVar("T")


# Geography ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class District:
    code: str  # GB/T 2260 county-level code
    city: str  # prefecture-level city; "" for Chongqing's districts (the municipality is the city)
    name: str


@dataclass(frozen=True, slots=True)
class _Province:
    code: str
    districts: tuple[District, ...]
    minorities: tuple[str, ...]
    base_range: tuple[int, int]  # monthly contribution base, yuan

    @property
    def name(self) -> str:
        return PROVINCES[self.code]


def _districts(city: str, *pairs: tuple[str, str]) -> tuple[District, ...]:
    return tuple(District(code, city, name) for code, name in pairs)


DEMO_PROVINCES: dict[str, _Province] = {
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
DEMO_REGIONS: tuple[str, ...] = tuple(DEMO_PROVINCES)

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
ROADS = (
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
COMPOUNDS = (
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
BRANDS = (
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
INDUSTRIES: tuple[tuple[str, str], ...] = (
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
COMPANY_SUFFIXES = (("有限公司", 75), ("有限责任公司", 15), ("股份有限公司", 10))
BANK_BINS = ("621700", "622848", "621226", "621661", "622908", "623668")
MOBILE_PREFIXES = ("138", "139", "150", "158", "177", "186", "189", "199")
CONDITIONS = (
    "高血压",
    "糖尿病",
    "冠心病",
    "慢性阻塞性肺疾病",
    "类风湿性关节炎",
    "帕金森病",
    "慢性肾脏病",
)
POLICE_CASES: tuple[tuple[str, str], ...] = (
    ("违反治安管理（扰乱公共秩序）", "警告"),
    ("违反治安管理（殴打他人）", "罚款500元"),
    ("违反治安管理（盗窃）", "行政拘留5日"),
    ("违反治安管理（寻衅滋事）", "行政拘留10日"),
    ("违反治安管理（故意损毁财物）", "罚款200元"),
)
BACKGROUNDS = ((255, 255, 255), (67, 142, 219), (216, 0, 15))  # white, blue, red (证件照底色)


# Deterministic draws ---------------------------------------------------------------------------
class Draw:
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


def add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def _age(birth: date, on: date = AS_OF) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def luhn(body: str) -> str:
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def make_citizen_id(division: str, birth: date, male: bool, draw: Draw) -> str:
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


def portrait(background: tuple[int, int, int], tone: tuple[int, int, int]) -> str:
    """A 24x32 ID-photo placeholder (head and shoulders on a coloured ground), as a data URI."""

    def pixel(x: int, y: int) -> tuple[int, int, int]:
        head = (x - 12) ** 2 + (y - 12) ** 2 <= 36
        shoulders = y >= 22 and (x - 12) ** 2 <= (y - 16) * 9
        return tone if head or shoulders else background

    return "data:image/png;base64," + base64.b64encode(_png(24, 32, pixel)).decode("ascii")


# People ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Person:
    citizen_id: str
    name: str
    male: bool
    birth: date

    @property
    def age(self) -> int:
        return _age(self.birth)


@dataclass(frozen=True, slots=True)
class Resident:
    """A person's life in one region."""

    district: District
    employment: str  # "employee", "flexible" or "resident"
    employer: str | None
    monthly_base: int | None


def _given_name(draw: Draw, male: bool) -> str:
    chars = _MALE_CHARS if male else _FEMALE_CHARS
    return "".join(draw.choice(chars) for _ in range(draw.weighted(((1, 30), (2, 70)))))


def full_name(draw: Draw, male: bool, surname: str | None = None) -> str:
    return (surname or draw.choice(_SURNAMES)) + _given_name(draw, male)


def surname_of(name: str) -> str:
    return name[:2] if name[:2] in _SURNAMES else name[0]


def birth_from_id(citizen_id: str) -> date | None:
    try:
        birth = date(int(citizen_id[6:10]), int(citizen_id[10:12]), int(citizen_id[12:14]))
    except ValueError:
        return None
    return birth if date(1900, 1, 1) <= birth <= AS_OF else None
