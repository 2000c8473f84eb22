"""`.env` files read and written with python-dotenv's meaning (the reader JHE's settings use)."""
from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from conftest import make_spec
from dotenv import dotenv_values

from jhe_upgrade.envfile import env_missing, example_vars, missing_text, parse_env, render_env, render_value, target_env


def dotenv(text: str, interpolate: bool = False) -> dict[str, str]:
    """What python-dotenv gives JHE (keys without a value are unset for it)."""
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text), interpolate=interpolate).items() if v is not None}


PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----"

CORPUS = [
    # JHE's docs: the OIDC key in double quotes with \n escapes
    'OIDC_RSA_PRIVATE_KEY="-----BEGIN PRIVATE KEY-----\\nMIIEvQ\\n-----END PRIVATE KEY-----"\nSITE_URL=https://jhe.example.org\n',
    # the same key written across lines, single- and double-quoted
    "OIDC_RSA_PRIVATE_KEY='" + PEM + "'\nDEBUG=\n",
    'OIDC_RSA_PRIVATE_KEY="' + PEM + '"\nNEXT=1\n',
    # the env example's style: inline comments, placeholders, empty values
    "DEBUG=True # 'True' or remove for False\nSECRET_KEY=\nDB_HOST=localhost  # host\nSMTP_PORT=\n",
    "# a comment\n\n   \nexport DB_NAME=jhe_production\nexport  X = y \n",
    "A=a#b\nB=a #b\nC= # only a comment\nD=#value\nE='x' # c\nF=\"y\"#c\n",
    "Q1='it\\'s'\nQ2=\"say \\\"hi\\\"\"\nQ3='back\\\\slash'\nQ4=\"tab\\there\"\nQ5='no\\nescape'\n",
    "EQ=a=b=c\nURL=postgres://u:p@h:5432/db?x=1&y=2\nDOLLAR=$HOME/x\nSPACE='  padded  '\n",
    "UNICODE=Zürich ✓\nQUNI=\"Grüße\\n✓\"\n",
    "NOVALUE\nNOEQ=\n'QUOTED KEY'=v\na'b=1\n",
    "\ufeffBOM=1\nNEXT=2\n",
    "BROKEN='unterminated\nAFTER=ok\n",
    "DUP=1\nOTHER=x\nDUP=2\n",
    "CRLF=1\r\nNEXT=2\r\n",
    "LAST=no-newline",
    "",
]


@pytest.mark.parametrize("text", CORPUS)
def test_parse_env_reads_as_python_dotenv(text: str) -> None:
    assert parse_env(text) == dotenv(text)
    assert list(parse_env(text)) == list(dotenv(text))  # the same order


@pytest.mark.parametrize("text", CORPUS)
def test_render_keeps_every_value_python_dotenv_reads(text: str) -> None:
    rendered = render_env(parse_env(text))
    assert dotenv(rendered) == dotenv(text)
    assert dotenv(rendered, interpolate=True) == dotenv(text, interpolate=True)


def test_interpolation_sees_the_same_order() -> None:
    text = 'BASE=/srv\nPATH_A="${BASE}/a"\nZ=1\n'
    rendered = render_env(parse_env(text))
    assert dotenv(rendered, interpolate=True)["PATH_A"] == "/srv/a"
    assert rendered.splitlines()[1:] == ["BASE=/srv", 'PATH_A="${BASE}/a"', "Z=1"]


def test_a_pem_key_is_written_on_one_line_in_double_quotes() -> None:
    line = render_env({"OIDC_RSA_PRIVATE_KEY": PEM}).splitlines()[1]
    assert line.startswith('OIDC_RSA_PRIVATE_KEY="-----BEGIN PRIVATE KEY-----\\nMII')
    assert dotenv(line + "\n")["OIDC_RSA_PRIVATE_KEY"] == PEM


@pytest.mark.parametrize("value", ["plain", "", "a b", " lead", "trail ", "#x", "a #b", "x'y", 'x"y', "back\\slash",
                                   "\\n literal", "line\nbreak", "cr\rx", "tab\tx", "$HOME", "Zürich", "=", "a=b", "'", '"'])
def test_render_value_round_trips(value: str) -> None:
    assert dotenv(f"K={render_value(value)}\n") == {"K": value}
    assert parse_env(f"K={render_value(value)}\n") == {"K": value}


def test_render_value_fuzz_against_python_dotenv() -> None:
    rng = random.Random(20261129)
    alphabet = "aZ09 _-=#'\"\\\n\r\t$/:.ü✓{}"
    for _ in range(2000):
        v = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))).replace("${", "$ {")
        text = render_env({"K": v, "NEXT": "1"})
        assert dotenv(text) == {"K": v, "NEXT": "1"}, repr(v)
        assert parse_env(text) == {"K": v, "NEXT": "1"}, repr(v)


def test_parse_fuzz_matches_python_dotenv_on_arbitrary_text() -> None:
    rng = random.Random(7)
    pieces = ["K", "X_1", "=", " ", "#", "'", '"', "\\", "\n", "\r\n", "export ", "v", "ü", "\t", "=\"a\\nb\"", "='q'"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        assert parse_env(text) == dotenv(text), repr(text)


def test_render_refuses_nul() -> None:
    with pytest.raises(ValueError, match="K: a .env value cannot hold a NUL"):
        render_env({"K": "a\0b"})


def test_example_vars() -> None:
    """The real example's style: inline comments, quoted placeholders, a multi-line quoted value, empty
    values, comment lines. Names only, in order: an example marks nothing optional."""
    text = ("DEBUG=True # static files are not served locally without it\nSITE_URL=\"http://localhost:8000\"\n\n"
            "OIDC_RSA_PRIVATE_KEY=\"-----BEGIN PRIVATE KEY-----\nMII...\n-----END PRIVATE KEY-----\"\n"
            "#  if unset a random value is used\nexport SECRET_KEY=\n# OW_COMMENTED=x\nOW_API_URL\nDEBUG=again\n")
    assert example_vars(text) == ["DEBUG", "SITE_URL", "OIDC_RSA_PRIVATE_KEY", "SECRET_KEY", "OW_API_URL"]


def test_env_missing_rule() -> None:
    added = ["DEBUG", "SITE_URL", "DB_PASSWORD", "OW_API_URL", "OW_API_KEY", "JHE_INSTANCE_NAME"]
    # set in the .env the release gets, listed in envUnset, or written by the tool: decided; the rest is missing
    assert env_missing(added, {"OW_API_KEY"}, ["DEBUG"]) == ["OW_API_URL", "JHE_INSTANCE_NAME"]
    assert env_missing(added, {"OW_API_KEY", "OW_API_URL", "JHE_INSTANCE_NAME"}, ["DEBUG"]) == []


def test_missing_text_names_the_fix_and_what_jhe_does() -> None:
    t = missing_text("v0.0.11", "dot_env_example.txt", "DEBUG", 2)
    assert "v0.0.11's dot_env_example.txt adds DEBUG (JHE turns debug on for any non-empty value" in t
    assert "`pulumi config set --path 'jhe:envUnset[2]' DEBUG`" in t and "jhe:env.DEBUG" in t


def test_target_env_leaves_unset_names_out_and_keeps_the_rest(tmp_path: Path) -> None:
    s = make_spec(tmp_path, env={"OW_API_URL": "http://ow"}, envUnset=["DEBUG"])
    root = tmp_path / "app" / "releases" / "v1.1.0"
    root.mkdir(parents=True)
    (root / ".env").write_text('DEBUG=False\nSECRET_KEY="k#1"\nDB_PASSWORD=pw\n')
    env = target_env(s, "v1.1.0")
    assert "DEBUG" not in env and env["SECRET_KEY"] == "k#1" and env["OW_API_URL"] == "http://ow"
    assert [env[k] for k in ("DB_NAME", "DB_USER", "DB_HOST", "DB_PORT")] == ["jhe_production", "jheuser", "localhost", "5432"]
