// jhe-upgrade: the JupyterHealth Exchange upgrade runbook as a Pulumi program.
// This file is the table of contents; each step lives in components/.
import * as pulumi from "@pulumi/pulumi";
import { ConfigError, loadConfig } from "./components/config";

// 1. Read and validate the stack's configuration: nothing reaches the server if it is wrong.
function readConfig() {
    try {
        return loadConfig();
    } catch (e) {
        if (e instanceof ConfigError) throw new pulumi.RunError(e.message);
        throw e;
    }
}
const config = readConfig();

export const target = {
    version: config.version,
    stage: config.stage,
    host: config.ssh.host,
    appRoot: config.layout.appRoot,
};
