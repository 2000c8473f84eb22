// The program's entry point for any `pulumi` CLI (ours through `npm run pulumi`, or a user's own):
// compiles the TypeScript program into bin/ first when any of its sources is newer than the build,
// so `pulumi preview` / `pulumi up` in this directory always run the current sources, never a stale
// build. Then runs bin/index.js.
"use strict";
const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");

const built = path.join(__dirname, "bin", "index.js");
const sources = [path.join(__dirname, "index.ts"), path.join(__dirname, "tsconfig.json"), path.join(__dirname, "tsconfig.program.json"),
    ...fs.readdirSync(path.join(__dirname, "components")).filter((f) => f.endsWith(".ts")).map((f) => path.join(__dirname, "components", f))];
const mtime = (f) => (fs.existsSync(f) ? fs.statSync(f).mtimeMs : 0);
if (sources.some((f) => mtime(f) > mtime(built))) {
    const tsc = require.resolve("typescript/bin/tsc"); // a dev dependency: `npm ci` installs it
    try {
        // noEmitOnError: a program with type errors leaves the old build in place and is compiled again next time
        execFileSync(process.execPath, [tsc, "-p", path.join(__dirname, "tsconfig.program.json")],
            { stdio: ["ignore", process.stderr, process.stderr] });
    } catch (e) {
        throw new Error("the TypeScript program does not compile (tsc's errors above); fix them and run again");
    }
    fs.utimesSync(built, new Date(), new Date()); // tsc leaves unchanged outputs as they were
}
module.exports = require(built);
