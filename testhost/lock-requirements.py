#!/usr/bin/env python3
"""Prints a release's pinned requirements (name==version per line) from its lock file:
Pipfile.lock (JHE up to v0.0.13 and the fixture up to v1.x) or uv.lock (later). Test-server helper:
the operator's manual install and the tests' hand upgrades use it; the program has its own."""
import json
import pathlib
import sys
import tomllib

app = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
if (app / "Pipfile.lock").exists():
    for name, spec in json.loads((app / "Pipfile.lock").read_text())["default"].items():
        print(f"{name}{spec['version']}")
elif (app / "uv.lock").exists():
    for pkg in tomllib.loads((app / "uv.lock").read_text())["package"]:
        print(f"{pkg['name']}=={pkg['version']}")
else:
    sys.exit(f"no Pipfile.lock or uv.lock in {app}")
