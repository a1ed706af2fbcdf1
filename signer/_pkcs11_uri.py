"""PKCS#11 URIs (RFC 7512): which token, which key, which module, where the PIN comes from.

A key in a cryptographic module is named by a URI such as::

    pkcs11:token=tongban-330000;object=seal-2026?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/hsm-pin

Our own strict parser, because no well-kept Python one exists (python-pkcs11 has none; the few
on PyPI are parts of unrelated frameworks) and because what Tongban accepts is narrower than
what RFC 7512 allows:

- path attributes are the RFC's (`token`, `object`, `id`, `type`, `serial`, ...), each at most
  once, percent-decoded (`id` to bytes, the others to UTF-8 text); an unknown one is refused,
  not ignored, since a misspelt `objekt=` would otherwise select some other key;
- query attributes are `module-path` (an absolute path to the module's shared library),
  `pin-source` (a `file:` URI or absolute path of a file holding the PIN) and Tongban's vendor
  attribute `x-pin-env` (the name of an environment variable holding it);
- `pin-value` is refused: a PIN is never written into configuration, an inventory or a log.

`Pkcs11Uri` is a frozen value that is valid once constructed; `str()` gives back a normal form
(attributes in the RFC's order), which is what inventories record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import quote, unquote_to_bytes

from signer.errors import Pkcs11UriInvalid

__all__ = ["PIN_ENV_ATTRIBUTE", "Pkcs11Uri", "parse_pkcs11_uri"]

SCHEME: Final = "pkcs11:"
PIN_ENV_ATTRIBUTE: Final = "x-pin-env"
MAX_URI_CHARS: Final = 4096  # characters; a real one is a few hundred

# RFC 7512 §2.3, in its order: the normal form writes them so.
_PATH_ATTRIBUTES: Final = (
    "library-description",
    "library-manufacturer",
    "library-version",
    "slot-description",
    "slot-id",
    "slot-manufacturer",
    "manufacturer",
    "model",
    "serial",
    "token",
    "object",
    "id",
    "type",
)
_QUERY_ATTRIBUTES: Final = ("module-path", "pin-source", PIN_ENV_ATTRIBUTE)
_OBJECT_TYPES: Final = ("public", "private", "cert", "secret-key", "data")
# pk11-pchar / pk11-qchar: unreserved, the "res-avail" sets and pct-encoded (RFC 7512 §2.3).
_PATH_VALUE: Final = re.compile(r"(?:[A-Za-z0-9\-._~:\[\]@!$'()*+,=&]|%[0-9A-Fa-f]{2})*")
_QUERY_VALUE: Final = re.compile(r"(?:[A-Za-z0-9\-._~:\[\]@!$'()*+,=/?|]|%[0-9A-Fa-f]{2})*")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# What the normal form leaves unencoded: the RFC's sets without "[", "]" and (in the path) "&",
# encoded so that a URI reads the same in TOML, a shell and console markup.
_SAFE_PATH: Final = "-._~:@!$'()*+,="
_SAFE_QUERY: Final = "-._~:@!$'()*+,=/?|"


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed PKCS#11 URI: path attributes select the token and object, query attributes
    say how to reach it. Construct with `parse_pkcs11_uri`."""

    path: tuple[tuple[str, bytes], ...]  # (name, decoded value) in the RFC's order
    module_path: Path | None = None
    pin_file: Path | None = None
    pin_env: str | None = None
    _text: str = field(default="", compare=False, repr=False)

    def text(self, name: str) -> str | None:
        """A path attribute as text (None when absent)."""
        for key, value in self.path:
            if key == name:
                return value.decode("utf-8")
        return None

    def raw(self, name: str) -> bytes | None:
        """A path attribute as bytes (`id` is binary); None when absent."""
        for key, value in self.path:
            if key == name:
                return value
        return None

    @property
    def token(self) -> str | None:
        return self.text("token")

    @property
    def object(self) -> str | None:
        return self.text("object")

    @property
    def id(self) -> bytes | None:
        return self.raw("id")

    def with_path(self, **attributes: str | bytes) -> Pkcs11Uri:
        """This URI with path attributes added or replaced (`id` as bytes, others as text)."""
        values = dict(self.path)
        for keyword, value in attributes.items():
            name = keyword.replace("_", "-")
            if name not in _PATH_ATTRIBUTES:
                raise Pkcs11UriInvalid(f"{name!r} is not a PKCS#11 URI path attribute")
            values[name] = value if isinstance(value, bytes) else value.encode("utf-8")
        return _build(values, self.module_path, self.pin_file, self.pin_env)

    def __str__(self) -> str:
        return self._text


def parse_pkcs11_uri(uri: str) -> Pkcs11Uri:
    """Parse and check a PKCS#11 URI; `Pkcs11UriInvalid` says what is wrong with it.

    Messages quote attribute names, never values: a value may be a secret's location.
    """
    if len(uri) > MAX_URI_CHARS:
        raise Pkcs11UriInvalid(f"a PKCS#11 URI of {len(uri)} characters (at most {MAX_URI_CHARS})")
    if not uri.lower().startswith(SCHEME):
        raise Pkcs11UriInvalid("a PKCS#11 URI starts with 'pkcs11:'")
    rest = uri[len(SCHEME) :]
    if "#" in rest:
        raise Pkcs11UriInvalid("a PKCS#11 URI has no fragment ('#')")
    path_text, _, query_text = rest.partition("?")
    path = _attributes(path_text, ";", _PATH_VALUE, "path")
    query = _attributes(query_text, "&", _QUERY_VALUE, "query")
    for name in path:
        if name not in _PATH_ATTRIBUTES:
            raise Pkcs11UriInvalid(
                f"unknown PKCS#11 URI path attribute {name!r} "
                f"(known: {', '.join(_PATH_ATTRIBUTES)})"
            )
    for name in query:
        if name == "pin-value":
            raise Pkcs11UriInvalid(
                "pin-value is refused: a PIN is never written into a URI; "
                f"give pin-source=file:/path or {PIN_ENV_ATTRIBUTE}=VARIABLE instead"
            )
        if name == "module-name":
            raise Pkcs11UriInvalid("module-name is not supported: give module-path=/absolute/path")
        if name not in _QUERY_ATTRIBUTES:
            raise Pkcs11UriInvalid(
                f"unknown PKCS#11 URI query attribute {name!r} "
                f"(known: {', '.join(_QUERY_ATTRIBUTES)})"
            )
    kind = path.get("type")
    if kind is not None and kind.decode("utf-8", "replace") not in _OBJECT_TYPES:
        raise Pkcs11UriInvalid(f"type must be one of {', '.join(_OBJECT_TYPES)}")
    for name, value in path.items():
        if name != "id":
            _utf8(value, name)
    module = _absolute(query["module-path"], "module-path") if "module-path" in query else None
    pin_file = _pin_file(query["pin-source"]) if "pin-source" in query else None
    pin_env = None
    if PIN_ENV_ATTRIBUTE in query:
        pin_env = _utf8(query[PIN_ENV_ATTRIBUTE], PIN_ENV_ATTRIBUTE)
        if not _ENV_NAME.fullmatch(pin_env):
            raise Pkcs11UriInvalid(f"{PIN_ENV_ATTRIBUTE} must name an environment variable")
    if pin_file is not None and pin_env is not None:
        raise Pkcs11UriInvalid(f"give pin-source or {PIN_ENV_ATTRIBUTE}, not both")
    return _build(path, module, pin_file, pin_env)


def _attributes(
    text: str, separator: str, value_syntax: re.Pattern[str], part: str
) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if not text:
        return out
    for item in text.split(separator):
        name, equals, value = item.partition("=")
        if not equals or not re.fullmatch(r"[a-z][a-z0-9-]*", name):
            raise Pkcs11UriInvalid(
                f"PKCS#11 URI {part} part: each attribute is name=value with a lower-case name"
            )
        if not value_syntax.fullmatch(value):
            raise Pkcs11UriInvalid(
                f"PKCS#11 URI attribute {name!r}: characters outside RFC 7512 must be "
                "percent-encoded"
            )
        if name in out:
            raise Pkcs11UriInvalid(f"PKCS#11 URI attribute {name!r} is given twice")
        decoded = unquote_to_bytes(value)
        if not decoded:
            raise Pkcs11UriInvalid(f"PKCS#11 URI attribute {name!r} is empty")
        out[name] = decoded
    return out


def _utf8(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Pkcs11UriInvalid(f"PKCS#11 URI attribute {name!r} is not UTF-8 text") from exc


def _absolute(value: bytes, name: str) -> Path:
    path = Path(_utf8(value, name))
    if not path.is_absolute():
        raise Pkcs11UriInvalid(f"{name} must be an absolute path")
    return path


def _pin_file(value: bytes) -> Path:
    text = _utf8(value, "pin-source")
    if text.startswith("file://"):
        text = text[len("file://") :]
        if not text.startswith("/"):  # file://host/path: only the local host
            raise Pkcs11UriInvalid("pin-source: only local files (file:/path or file:///path)")
    elif text.startswith("file:"):
        text = text[len("file:") :]
    elif ":" in text.split("/", 1)[0] or text.startswith("|"):
        raise Pkcs11UriInvalid("pin-source: only a file (file:/path) is supported")
    return _absolute(text.encode("utf-8"), "pin-source")


def _build(
    path: dict[str, bytes], module: Path | None, pin_file: Path | None, pin_env: str | None
) -> Pkcs11Uri:
    ordered = tuple((name, path[name]) for name in _PATH_ATTRIBUTES if name in path)
    text = SCHEME + ";".join(f"{name}={quote(value, safe=_SAFE_PATH)}" for name, value in ordered)
    query = []
    if module is not None:
        query.append(f"module-path={quote(str(module), safe=_SAFE_QUERY)}")
    if pin_file is not None:
        query.append(f"pin-source={quote('file:' + str(pin_file), safe=_SAFE_QUERY)}")
    if pin_env is not None:
        query.append(f"{PIN_ENV_ATTRIBUTE}={pin_env}")
    if query:
        text += "?" + "&".join(query)
    return Pkcs11Uri(ordered, module, pin_file, pin_env, text)
