"""Dependencies installed exactly as a tag's lock pins them (as `pipenv sync` does: no resolution, hashes
checked), for Pipfile.lock, uv.lock and requirements files; and a real pip run with a lock whose pins
contradict each other (as JHE v0.0.13's does: pyopenssl 24.2.1 needs cryptography < 44, the lock pins 48)."""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from jhe_upgrade.requirements import lock_install, pip_check_problems, pip_install_args

PIPFILE_LOCK = json.dumps({"_meta": {"requires": {"python_version": "3.11"}}, "default": {
    "cryptography": {"hashes": ["sha256:aa", "sha256:bb"], "version": "==48.0.1"},
    "pyopenssl": {"hashes": ["sha256:cc"], "version": "==24.2.1"},
    "pywin32": {"hashes": ["sha256:dd"], "markers": "sys_platform == 'win32'", "version": "==306"},
}})

UV_LOCK = """version = 1
requires-python = ">=3.11"

[[package]]
name = "jupyterhealth-exchange"
version = "0.0.14"
source = { editable = "." }
dependencies = [
    { name = "django" },
    { name = "colorama", marker = "sys_platform == 'win32'" },
]

[[package]]
name = "django"
version = "5.2.19"
source = { registry = "https://pypi.org/simple" }
dependencies = [{ name = "asgiref" }, { name = "tzdata", marker = "sys_platform == 'win32'" }]
sdist = { url = "https://files.example/django-5.2.19.tar.gz", hash = "sha256:11", size = 1 }
wheels = [{ url = "https://files.example/django-5.2.19-py3-none-any.whl", hash = "sha256:22", size = 1 }]

[[package]]
name = "asgiref"
version = "3.13.0"
source = { registry = "https://pypi.org/simple" }
wheels = [{ url = "https://files.example/asgiref-3.13.0-py3-none-any.whl", hash = "sha256:33", size = 1 }]

[[package]]
name = "colorama"
version = "0.4.6"
source = { registry = "https://pypi.org/simple" }
wheels = [{ url = "https://files.example/colorama-0.4.6-py2.py3-none-any.whl", hash = "sha256:44", size = 1 }]

[[package]]
name = "tzdata"
version = "2025.2"
source = { registry = "https://pypi.org/simple" }
wheels = [{ url = "https://files.example/tzdata-2025.2-py2.py3-none-any.whl", hash = "sha256:55", size = 1 }]

[[package]]
name = "pytest"
version = "8.0.0"
source = { registry = "https://pypi.org/simple" }
wheels = [{ url = "https://files.example/pytest-8.0.0-py3-none-any.whl", hash = "sha256:66", size = 1 }]
"""


def test_pipfile_lock_lines_keep_pins_markers_and_hashes() -> None:
    lock = lock_install({"Pipfile.lock": PIPFILE_LOCK})
    assert lock["tool"] == "pipenv" and lock["exact"] and lock["hashed"] and lock["skipped"] == []
    assert lock["lines"] == ["cryptography==48.0.1 --hash=sha256:aa --hash=sha256:bb", "pyopenssl==24.2.1 --hash=sha256:cc",
                             "pywin32==306 ; sys_platform == 'win32' --hash=sha256:dd"]


def test_pipfile_lock_without_hashes_and_with_a_git_entry() -> None:
    lock = lock_install({"Pipfile.lock": json.dumps({"default": {"django": {"version": "==5.2.18"},
                                                                 "fhir-x": {"git": "https://example.org/fhir-x.git", "ref": "abc123"},
                                                                 "odd": {"editable": True}}})})
    assert lock["lines"] == ["django==5.2.18", "fhir-x @ git+https://example.org/fhir-x.git@abc123"]
    assert lock["exact"] and not lock["hashed"] and lock["skipped"] == ["odd"]


def test_uv_lock_follows_the_project_s_dependencies_with_their_markers() -> None:
    lock = lock_install({"uv.lock": UV_LOCK, "pyproject.toml": '[project]\nname = "jupyterhealth-exchange"\n'})
    assert lock["tool"] == "uv" and lock["exact"] and lock["hashed"]
    assert lock["lines"] == [
        "asgiref==3.13.0 --hash=sha256:33",
        "colorama==0.4.6 ; sys_platform == 'win32' --hash=sha256:44",
        "django==5.2.19 --hash=sha256:11 --hash=sha256:22",
        "tzdata==2025.2 ; sys_platform == 'win32' --hash=sha256:55",
    ]  # pytest (not a dependency of the project: a dev group) and the project itself are left out


def test_a_flat_uv_lock_installs_every_package() -> None:
    flat = "version = 1\n\n[[package]]\nname = \"django\"\nversion = \"5.2.19\"\n\n[[package]]\nname = \"gunicorn\"\nversion = \"27.0.1\"\n"
    assert lock_install({"uv.lock": flat})["lines"] == ["django==5.2.19", "gunicorn==27.0.1"]


def test_requirements_files_exact_only_when_every_line_is_pinned() -> None:
    assert lock_install({"requirements.txt": "Django==5.2.18\ngunicorn==23.0.0 --hash=sha256:ab\n"})["exact"] is True
    assert lock_install({"requirements.txt": "Django>=5.2\ngunicorn==23.0.0\n"})["exact"] is False


def test_pip_arguments() -> None:
    exact = {"exact": True, "hashed": True}
    assert pip_install_args("pip", "r.txt", exact, None) == ["pip", "install", "-q", "--disable-pip-version-check", "-r", "r.txt",
                                                             "--no-deps", "--require-hashes"]
    assert pip_install_args("pip", "r.txt", {"exact": False, "hashed": False}, "/srv/wheelhouse")[-3:] == \
        ["--no-index", "--find-links", "/srv/wheelhouse"]
    assert pip_check_problems("No broken requirements found.\n") == []
    assert pip_check_problems("a 1.0 has requirement b<2, but you have b 2.0.\n") == ["a 1.0 has requirement b<2, but you have b 2.0."]


def _wheel(d: Path, name: str, version: str, requires: list[str]) -> Path:
    """A minimal real wheel (pure Python, one module)."""
    f = d / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}.py": b"", f"{dist}/METADATA": ("Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version)
                                                    + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(c).digest()).rstrip(b'=').decode()},{len(c)}\n"
                     for p, c in files.items()) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(f, "w") as z:
        for p, c in files.items():
            z.writestr(p, c)
        z.writestr(f"{dist}/RECORD", record)
    return f


def test_an_inconsistent_lock_installs_as_pinned_and_pip_check_reports_it(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    files = [_wheel(wheels, "jhepyopenssl", "24.2.1", ["jhecryptography<44"]), _wheel(wheels, "jhecryptography", "48.0.1", [])]
    sha = {f.name.split("-")[0]: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    pipfile_lock = json.dumps({"default": {n: {"version": v, "hashes": [f"sha256:{sha[n]}"]}
                                           for n, v in (("jhepyopenssl", "==24.2.1"), ("jhecryptography", "==48.0.1"))}})
    lock = lock_install({"Pipfile.lock": pipfile_lock})
    req = tmp_path / "req.txt"
    req.write_text("\n".join(lock["lines"]) + "\n")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    # this interpreter's pip, working on that venv (as the server's venv/bin/pip would)
    pip_cmd = [sys.executable, "-m", "pip", "--python", str(tmp_path / "venv/bin/python")]
    pip = "PIP"

    def argv(args: list[str]) -> list[str]:
        return pip_cmd + args[1:] if args[0] == pip else args
    resolving = subprocess.run([*pip_cmd, "install", "-q", "--no-index", "--find-links", str(wheels), "-r", str(req)],
                               capture_output=True, text=True)
    assert resolving.returncode != 0 and "ResolutionImpossible" in resolving.stderr + resolving.stdout  # what `pip install -r` did
    p = subprocess.run(argv(pip_install_args(pip, str(req), lock, str(wheels))), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    check = subprocess.run([*pip_cmd, "check"], capture_output=True, text=True)
    assert pip_check_problems(check.stdout) == [
        "jhepyopenssl 24.2.1 has requirement jhecryptography<44, but you have jhecryptography 48.0.1."]
    # a file that is not the one the lock names is refused
    bad = json.loads(pipfile_lock)
    bad["default"]["jhecryptography"]["hashes"] = ["sha256:" + "0" * 64]
    req.write_text("\n".join(lock_install({"Pipfile.lock": json.dumps(bad)})["lines"]) + "\n")
    subprocess.run([*pip_cmd, "uninstall", "-q", "-y", "jhecryptography"], check=True)
    p = subprocess.run(argv(pip_install_args(pip, str(req), lock, str(wheels))), capture_output=True, text=True)
    assert p.returncode != 0 and "DO NOT MATCH THE HASHES" in p.stderr
