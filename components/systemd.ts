// SystemdService: the gunicorn unit, rendered from config and hardened; installed only when its
// content changes (checked by `systemd-analyze verify` first), then daemon-reload and a restart of a
// running service so it picks the unit up.
import * as pulumi from "@pulumi/pulumi";
import * as command from "@pulumi/command";
import { quote } from "shell-quote";
import { JheConfig } from "./config";
import { JheHost } from "./host";

export interface UnitArgs {
    appRoot: string;
    appUser: string;
    appGroup: string;
    serviceName: string;
    workers?: number;
    bind?: string;
}

/** Where the hand-over unit listens: nginx sends requests there while its flag is set (see NginxSite). */
export const HANDOVER_BIND = "127.0.0.1:8001";

/** The service: gunicorn from `current`, started at boot. */
export function renderUnit(a: UnitArgs): string {
    const cur = `${a.appRoot.replace(/\/$/, "")}/current`;
    return unitText(a, cur, a.bind ?? "127.0.0.1:8000", "JupyterHealth Exchange (gunicorn)", true);
}

/**
 * The hand-over unit, `<service>-next@<tag>.service`: the same gunicorn from `releases/<tag>` on its
 * own port. The host tool boots a release in it before the maintenance window (so the window holds
 * no boot), routes nginx to it for the switch, and stops it once the service runs that release.
 */
export function renderHandoverUnit(a: UnitArgs): string {
    const rel = `${a.appRoot.replace(/\/$/, "")}/releases/%I`;
    return unitText(a, rel, HANDOVER_BIND, "JupyterHealth Exchange %I (gunicorn, hand-over)", false);
}

function unitText(a: UnitArgs, root: string, bind: string, description: string, boot: boolean): string {
    return `# Managed by jhe-upgrade (Pulumi). Local edits are replaced on the next \`pulumi up\`.
[Unit]
Description=${description}
After=network-online.target postgresql.service
Wants=postgresql.service

[Service]
Type=exec
User=${a.appUser}
Group=${a.appGroup}
WorkingDirectory=${root}
ExecStart=${root}/venv/bin/gunicorn jhe.wsgi:application --bind ${bind} --workers ${a.workers ?? 3} --timeout 60 --graceful-timeout 20
Restart=on-failure
RestartSec=2
TimeoutStopSec=30
KillMode=mixed
UMask=0027

# Hardening (systemd-analyze security ${a.serviceName})
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=${root}/
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
${boot ? "\n[Install]\nWantedBy=multi-user.target\n" : ""}`;
}

/**
 * `systemd-analyze verify` for a unit file, passing when its only complaint is that the program does
 * not exist yet (a bare server gets its first release after the unit).
 */
export function verifyUnit(unitPath: string): string {
    return `! systemd-analyze verify ${quote([unitPath])} 2>&1 | grep -v -e 'is not executable: No such file or directory' | grep .`;
}

export interface SystemdServiceArgs {
    host: JheHost;
    config: JheConfig;
    /** Drift repair (the plan's repairKey): installs the unit again when the server's was edited by hand. */
    repairKey?: pulumi.Input<string>;
}

/** The unit the stack installs (the plan compares the server's with it: drift). */
export function unitFor(config: JheConfig): string {
    const l = config.layout;
    return renderUnit({ appRoot: l.appRoot, appUser: l.appUser, appGroup: l.appGroup, serviceName: l.serviceName });
}

export class SystemdService extends pulumi.ComponentResource {
    public readonly unitPath: string;
    public readonly install: command.remote.Command;

    constructor(name: string, args: SystemdServiceArgs, opts?: pulumi.ComponentResourceOptions) {
        super("jhe:upgrade:SystemdService", name, {}, opts);
        const { config, host } = args;
        const l = config.layout;
        const unit = unitFor(config);
        this.unitPath = `/etc/systemd/system/${l.serviceName}.service`;
        const svc = quote([l.serviceName]);
        const current = quote([`${l.appRoot.replace(/\/$/, "")}/current`]);
        const handoverPath = `/etc/systemd/system/${l.serviceName}-next@.service`;
        const handover = host.file("handover-unit",
            renderHandoverUnit({ appRoot: l.appRoot, appUser: l.appUser, appGroup: l.appGroup, serviceName: l.serviceName }), {
                path: handoverPath,
                mode: "0644",
                validate: verifyUnit(handoverPath),
                onChange: "systemctl daemon-reload",
            }, { parent: this, dependsOn: host.ready });
        this.install = host.file("unit", unit, {
            path: this.unitPath,
            mode: "0644",
            validate: verifyUnit(this.unitPath),
            onChange:
                `systemctl daemon-reload; systemctl enable -q ${svc}; ` +
                // A running service (e.g. an adopted in-place install) moves to the new unit now;
                // a bare server starts once a release exists.
                `if systemctl is-active -q ${svc}; then systemctl restart ${svc}; elif [ -e ${current} ]; then systemctl start ${svc}; fi`,
        }, { parent: this, dependsOn: [...host.ready, handover] }, args.repairKey); // (what waits for the unit waits for both)
        this.registerOutputs({ unitPath: this.unitPath, handoverUnitPath: handoverPath });
    }
}
