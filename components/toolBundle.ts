// The host-side tool is a Python package (host/jhe_upgrade/, one module per concern) and reaches the
// server as ONE file: this bundle holds every module's source and imports them from memory, so the
// `host-tool` resource stays one file with one content hash, and the read-only plan can still send
// the whole tool on stdin to `python3 -`. Deterministic: same sources, same bytes.
import * as fs from "fs";
import * as path from "path";

/** The package's directory (host/ at the project root; this file runs from bin/components). */
export const TOOL_PACKAGE_DIR = path.join(__dirname, "..", "..", "host", "jhe_upgrade");
const PACKAGE = "jhe_upgrade";

export interface ToolModule {
    /** Dotted module name: jhe_upgrade, jhe_upgrade.steps, ... */
    name: string;
    source: string;
}

/** The package's modules, sorted by name (`__main__` is for `python3 -m`, not part of the bundle). */
export function toolModules(dir: string = TOOL_PACKAGE_DIR): ToolModule[] {
    const files = fs.readdirSync(dir).filter((f) => f.endsWith(".py") && f !== "__main__.py").sort();
    if (!files.includes("__init__.py")) throw new Error(`${dir} is not the host tool's package (no __init__.py)`);
    return files.map((f) => ({
        name: f === "__init__.py" ? PACKAGE : `${PACKAGE}.${f.slice(0, -3)}`,
        source: fs.readFileSync(path.join(dir, f), "utf8"),
    }));
}

/**
 * One Python file: the sources as string literals (JSON strings are valid Python string literals),
 * a meta-path importer that serves them (with line numbers in tracebacks), then `cli.main`.
 */
export function bundleTool(modules: ToolModule[] = toolModules()): string {
    for (const m of modules) if (!/^jhe_upgrade(\.[a-z_][a-z0-9_]*)?$/.test(m.name)) throw new Error(`bad module name ${m.name}`);
    const entries = modules.map((m) => `    ${JSON.stringify(m.name)}: ${JSON.stringify(m.source)},`).join("\n");
    return `#!/usr/bin/env python3
"""jhe-upgrade's host-side tool: the package jhe_upgrade (${modules.length} modules), bundled into one file by
the program (components/toolBundle.ts). Edit host/jhe_upgrade/ in the project, not this file."""
import importlib.abc
import importlib.util
import linecache
import sys

_SOURCES = {
${entries}
}


def _filename(name):
    return "<jhe-upgrade>/" + name.replace(".", "/") + ("/__init__.py" if name == "${PACKAGE}" else ".py")


class _BundleImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in _SOURCES:
            return None
        return importlib.util.spec_from_loader(name, self, origin=_filename(name), is_package=name == "${PACKAGE}")

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__
        source = _SOURCES[name]
        filename = _filename(name)
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        module.__file__ = filename
        exec(compile(source, filename, "exec"), module.__dict__)


sys.meta_path.insert(0, _BundleImporter())

if __name__ == "__main__":
    from jhe_upgrade.cli import main

    sys.exit(main(sys.argv))
`;
}
