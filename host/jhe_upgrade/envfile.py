""".env files and env examples: parse, render, what a tag needs, the traps of JHE's settings."""
from __future__ import annotations

import re
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


def parse_env(text: str) -> dict[str, str]:
    """A .env as python-dotenv reads it (interpolation aside), in the file's order. A key without `=`
    (python-dotenv: None, so unset for JHE) is left out."""
    out: dict[str, str] = {}
    pos = 1 if text.startswith("\ufeff") else 0  # a byte order mark, skipped as python-dotenv does
    while True:
        pos = _take(_BLANKS, text, pos).end()
        if pos >= len(text):
            return out
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
            if key is not None and value is None:
                out.pop(key, None)  # `KEY` alone: python-dotenv's None, unset for JHE (also after a value)
            elif key is not None and value is not None:
                out[key] = value  # a repeated key: the last value, in the first one's place
        except _Unreadable as e:
            pos = _take(_REST, text, e.args[0]).end()


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


def example_vars(text: str) -> dict[str, bool]:
    """An env example's variables: name -> required. A variable right after a '# optional' comment
    line may be left out; every other one is required."""
    out: dict[str, bool] = {}
    optional = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#"):
            optional = optional or bool(re.match(r"#\s*optional\b", s, re.I))
            continue
        m = re.match(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", s)
        if m:
            out[m.group(1)] = not optional
        optional = False
    return out


def env_example(repo: Path, tag: str) -> tuple[str | None, dict[str, bool]]:
    """The tag's env example file (`.env.example`, before that `dot_env_example.txt`) and its variables."""
    for name in (".env.example", "dot_env_example.txt"):
        text = show(repo, tag, name)
        if text is not None:
            return name, example_vars(text)
    return None, {}


def env_added(repo: Path, frm: str | None, to: str) -> list[str]:
    """Variables in `to`'s env example that `frm`'s does not have."""
    _, wanted = env_example(repo, to)
    _, had = env_example(repo, frm) if frm and tag_exists(repo, frm) else (None, {})
    return [k for k in wanted if k not in had]


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
    return env


def env_problems(spec: Spec, tag: str, env: dict[str, str]) -> list[str]:
    problems = []
    example_name, wanted = env_example(spec.repo, tag)
    for k, required in wanted.items():
        if required and k not in env:
            problems.append(
                f"{tag} requires the environment variable {k} (see its {example_name}), which the server's .env "
                f"and the stack's config do not set: `pulumi config set --path 'jhe:env.{k}' <value>` "
                f"(or --secret --path 'jhe:secretEnv.{k}' for a secret)")
    if spec.stage == "prod" and env.get("DEBUG", "") != "":
        problems.append("DEBUG is set in the server's .env; JHE turns DEBUG on for any non-empty value "
                        "(even \"False\"); on a prod stack remove it (jhe:env.DEBUG = \"\")")
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
