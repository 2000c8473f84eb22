""".env files and env examples: parse, render, what a tag needs, the traps of JHE's settings."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from .gitrepo import show, tag_exists
from .spec import Spec
from .state import live_root

# python-dotenv's grammar (the reader JHE's settings use), re-stated: a binding is
#   [whitespace incl. blank lines] [export ] KEY [=[value]] [ # comment] end-of-line
# with KEY unquoted ([^=#\s]+) or single-quoted, and the value unquoted (to the end of the line, a
# whitespace-then-# comment cut off, trailing blanks stripped), 'single-quoted' (\\ and \' escapes) or
# "double-quoted" (\\ \' \" \a \b \f \n \r \t \v escapes); quoted values may span lines. A line
# it cannot read is skipped to its end. `${NAME}` is interpolated on top (not done here: kept as written).
_BLANKS = re.compile(r"\s*")
_EXPORT = re.compile(r"(?:export[^\S\r\n]+)?")
_KEY_QUOTED = re.compile(r"'([^']+)'")
_KEY = re.compile(r"([^=\#\s]+)")
_WS = re.compile(r"[^\S\r\n]*")
_EQUALS = re.compile(r"=[^\S\r\n]*")
_VALUE_SQ = re.compile(r"'((?:\\.|[^'\\])*)'", re.DOTALL)
_VALUE_DQ = re.compile(r'"((?:\\.|[^"\\])*)"', re.DOTALL)
_VALUE = re.compile(r"([^\r\n]*)")
_COMMENT = re.compile(r"(?:[^\S\r\n]*#[^\r\n]*)?")
_EOL = re.compile(r"[^\S\r\n]*(?:\r\n|\n|\r|$)")
_REST = re.compile(r"[^\r\n]*(?:\r|\n|\r\n)?")
_DQ_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


class _Unreadable(Exception):
    pass


def _take(rx: re.Pattern[str], text: str, pos: int) -> re.Match[str]:
    m = rx.match(text, pos)
    if not m:
        raise _Unreadable(pos)
    return m


def _value(text: str, pos: int) -> tuple[str, int]:
    c = text[pos:pos + 1]
    if c == "'":
        m = _take(_VALUE_SQ, text, pos)
        return re.sub(r"\\([\\'])", r"\1", m.group(1)), m.end()
    if c == '"':
        m = _take(_VALUE_DQ, text, pos)
        return re.sub(r"\\([\\'\"abfnrtv])", lambda e: _DQ_ESCAPES[e.group(1)], m.group(1)), m.end()
    if c in ("", "\n", "\r"):
        return "", pos
    m = _take(_VALUE, text, pos)
    return re.sub(r"\s+#.*", "", m.group(1)).rstrip(), m.end()


def _bindings(text: str) -> Iterator[tuple[str, str | None]]:
    """(key, value) pairs as python-dotenv reads them (interpolation aside), in the file's order; value
    None for a key without `=` (python-dotenv's None, unset for JHE)."""
    pos = 1 if text.startswith("\ufeff") else 0  # a byte order mark, skipped as python-dotenv does
    while True:
        pos = _take(_BLANKS, text, pos).end()
        if pos >= len(text):
            return
        try:
            pos = _take(_EXPORT, text, pos).end()
            key = None
            if text[pos:pos + 1] == "'":
                m = _take(_KEY_QUOTED, text, pos)
                key, pos = m.group(1), m.end()
            elif text[pos:pos + 1] != "#":
                m = _take(_KEY, text, pos)
                key, pos = m.group(1), m.end()
            pos = _take(_WS, text, pos).end()
            value = None
            if text.startswith("=", pos):
                eq = _take(_EQUALS, text, pos)
                pos = eq.end()
                if len(eq.group(0)) > 1 and text.startswith("#", pos):
                    value = ""  # `KEY= # comment`
                else:
                    value, pos = _value(text, pos)
            pos = _take(_COMMENT, text, pos).end()
            pos = _take(_EOL, text, pos).end()
            if key is not None:
                yield key, value
        except _Unreadable as e:
            pos = _take(_REST, text, e.args[0]).end()


def parse_env(text: str) -> dict[str, str]:
    """A .env as python-dotenv reads it (interpolation aside), in the file's order. A key without `=`
    (python-dotenv: None, so unset for JHE) is left out."""
    out: dict[str, str] = {}
    for key, value in _bindings(text):
        if value is None:
            out.pop(key, None)  # `KEY` alone unsets, also after a value
        else:
            out[key] = value  # a repeated key: the last value, in the first one's place
    return out


_PLAIN = re.compile(r"[A-Za-z0-9_.,:/@+=%-]*")


def render_value(v: str) -> str:
    """A value as python-dotenv reads it back unchanged: plain when it can be, else double-quoted with
    \\ \" \n \r escaped (a PEM key stays one line, as JHE's docs write it). `${...}` is written as it
    is: python-dotenv interpolates it as it did in the file it came from."""
    if _PLAIN.fullmatch(v):
        return v
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def render_env(env: dict[str, str]) -> str:
    """The .env of a release, in `env`'s order (the live .env's, then the stack's additions): the order
    matters to python-dotenv's `${NAME}` interpolation."""
    lines = ["# Written by jhe-upgrade from the live .env and the stack's config; edit the stack, not this file."]
    for k, v in env.items():
        if "\0" in v:
            raise ValueError(f"{k}: a .env value cannot hold a NUL character")
        if re.fullmatch(r"[^=#\s]+", k):
            key = k  # python-dotenv's unquoted key
        elif "'" not in k and k:
            key = f"'{k}'"  # its quoted key (spaces, '=', '#')
        else:
            raise ValueError(f"the .env key {k!r} cannot be written so that python-dotenv reads it back")
        lines.append(f"{key}={render_value(v)}")
    return "\n".join(lines) + "\n"


# Settings jhe-upgrade writes into every release's .env itself (from jhe:siteUrl, jhe:dbName, jhe:dbUser,
# jhe:dbPassword): never reported missing, never left unset.
TOOL_WRITTEN = ("SITE_URL", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_HOST", "DB_PORT")

# What JHE does with a setting (DESIGN.md §8), told wherever the setting is named missing.
HINTS = {
    "DEBUG": "JHE turns debug on for any non-empty value, \"False\" too; to keep debug off, leave it unset",
    "SECRET_KEY": "without it every JHE worker invents its own and sessions break; set it as a secret",
    "SMTP_PORT": "an empty value crashes every manage.py command; a port number, or leave it unset",
    "OIDC_RSA_PRIVATE_KEY": "JHE's OIDC signing key: without it /o/.well-known/jwks.json serves no key (an unreadable "
                            "one: 500) and every OIDC login fails; set it as a secret from the PEM file (< oidc.pem)",
}


def example_vars(text: str) -> list[str]:
    """An env example's variable names, in its order, read as python-dotenv reads a .env. An example
    marks nothing optional or required: what is new in a version's example is for the operator to set
    or to leave unset on purpose (jhe:envUnset). Its values are placeholders, never copied anywhere."""
    return list(dict.fromkeys(k for k, _ in _bindings(text)))


def env_example(repo: Path, tag: str) -> tuple[str | None, list[str]]:
    """The tag's env example file (`.env.example`, before that `dot_env_example.txt`) and its variables."""
    for name in (".env.example", "dot_env_example.txt"):
        text = show(repo, tag, name)
        if text is not None:
            return name, example_vars(text)
    return None, []


def env_added(repo: Path, frm: str | None, to: str) -> list[str]:
    """Variables in `to`'s env example that `frm`'s does not have (all of them on an install), as the
    runbook diffs the two examples."""
    _, wanted = env_example(repo, to)
    _, had = env_example(repo, frm) if frm and tag_exists(repo, frm) else (None, [])
    return [k for k in wanted if k not in had]


def env_missing(added: list[str], configured: set[str], unset: list[str]) -> list[str]:
    """Of the variables a version's example adds, those nobody decided on: neither in the .env the
    release gets (the live one plus the stack's), nor written by the tool, nor listed in jhe:envUnset."""
    return [k for k in added if k not in configured and k not in unset and k not in TOOL_WRITTEN]


def missing_text(tag: str, example_name: str | None, k: str, unset_index: int) -> str:
    hint = f" ({HINTS[k]})" if k in HINTS else ""
    return (f"{tag}'s {example_name or 'env example'} adds {k}{hint}, which neither the server's .env nor the "
            f"stack sets: set it (`pulumi config set --path 'jhe:env.{k}' <value>`, or `--secret --path "
            f"'jhe:secretEnv.{k}'`) or leave it unset on purpose (`pulumi config set --path 'jhe:envUnset[{unset_index}]' {k}`)")


def target_env(spec: Spec, tag: str) -> dict[str, str]:
    """The .env the release `tag` runs with: that release's own .env if it was deployed before
    (a rollback gets its old config back), else the live .env; then the stack's config on top."""
    base_file: Path | None = spec.release(tag) / ".env"
    if base_file is None or not base_file.exists():
        root = live_root(spec)
        base_file = root / ".env" if root else None
    base = parse_env(base_file.read_text()) if base_file and base_file.exists() else {}
    env = {**base, "SITE_URL": spec.site_url, **spec.env, **spec.secret_env}
    env.setdefault("DB_NAME", spec.db_name)
    env.setdefault("DB_USER", spec.db_user)
    if spec.raw.get("dbPassword"):
        env["DB_PASSWORD"] = spec.raw["dbPassword"]
    env.setdefault("DB_HOST", "localhost")
    env.setdefault("DB_PORT", "5432")
    for k in spec.env_unset:
        if k not in TOOL_WRITTEN and k != "SECRET_KEY":  # (config refuses those in jhe:envUnset)
            env.pop(k, None)  # left unset on purpose: the release's .env does not set it, even if the live one did
    return env


def env_problems(spec: Spec, frm: str | None, tag: str, env: dict[str, str]) -> list[str]:
    example_name, _ = env_example(spec.repo, tag)
    missing = env_missing(env_added(spec.repo, frm, tag), set(env), spec.env_unset)
    # SECRET_KEY has a check of its own below
    missing = [k for k in missing if k != "SECRET_KEY"]
    problems = [missing_text(tag, example_name, k, len(spec.env_unset) + i) for i, k in enumerate(missing)]
    if spec.stage == "prod" and env.get("DEBUG", "") != "":
        problems.append("DEBUG is set in the server's .env; JHE turns DEBUG on for any non-empty value "
                        "(even \"False\"); on a prod stack leave it unset (`pulumi config set --path 'jhe:envUnset[0]' DEBUG`)")
    if "SMTP_PORT" in env and not env["SMTP_PORT"].strip().isdigit():
        problems.append(f"SMTP_PORT={env['SMTP_PORT']!r} in the server's .env crashes every manage.py command; "
                        f"set jhe:env.SMTP_PORT to a port number or remove it")
    if not env.get("SECRET_KEY"):
        problems.append("SECRET_KEY is not set: without it every JHE worker invents its own and sessions break; "
                        "`pulumi config set --secret --path 'jhe:secretEnv.SECRET_KEY' <value>`")
    if not env.get("DB_NAME"):
        problems.append("DB_NAME is empty: JHE would silently use the 'postgres' database")
    if not env.get("DB_PASSWORD") and not env.get("DB_HOST", "").startswith("/"):
        problems.append("DB_PASSWORD is not set (neither in the server's .env nor in the stack): "
                        "`pulumi config set --secret jhe:dbPassword <password>`")
    return problems
