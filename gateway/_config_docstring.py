"""The commented TOML example in the docstring of `gateway.config`, read for the configuration
reference (`gateway.config_reference`): each key's comment is its description there."""

from __future__ import annotations

__all__ = ["docstring_comments"]


def _split_comment(line: str) -> tuple[str, str]:
    """`code  # comment` -> (code, comment); a `#` inside a "string" is not a comment."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index].strip(), line[index + 1 :].strip()
    return line.strip(), ""


def docstring_comments(doc: str) -> dict[tuple[str, str], str]:
    """The comments of the commented TOML example in a docstring, by (section, key).

    A section's own comment (on its header line) is under (section, ""). A line holding only a
    comment continues the comment above it. Only lines indented by four spaces are read, and
    a line of prose ends the section.
    """
    comments: dict[tuple[str, str], str] = {}
    section = ""
    last: tuple[str, str] | None = None
    for raw in doc.splitlines():
        if not raw.startswith("    "):
            if raw.strip():  # prose: the example, if any, has ended
                section = ""
            last = None
            continue
        code, comment = _split_comment(raw)
        if not code:
            if last is not None and comment:
                comments[last] = f"{comments.get(last, '')} {comment}".strip()
            continue
        if code.startswith("["):
            section = code.strip("[]").strip()
            last = (section, "")
        elif "=" in code:
            name = code.split("=", 1)[0].strip()
            last = (section, '"<region code>"' if section == "peers" else name)
        else:
            last = None
            continue
        if comment:
            comments[last] = comment
        elif last not in comments:
            comments[last] = ""
    return comments
