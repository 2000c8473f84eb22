"""`.env` files read and written with python-dotenv's meaning (the reader JHE's settings use)."""
from __future__ import annotations

import io
import random

import pytest
from dotenv import dotenv_values

from jhe_upgrade.envfile import example_vars, parse_env, render_env, render_value


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
    text = ("# optional\nOW_API_URL=\nDEBUG=True # comment\n#optional: a note\nexport SECRET_KEY=\n"
            "# Optional\n\nSITE_URL=http://localhost:8000\n")
    # the marker covers the next variable only; a blank line ends it
    assert example_vars(text) == {"OW_API_URL": False, "DEBUG": True, "SECRET_KEY": False, "SITE_URL": True}
