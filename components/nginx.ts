// NginxSite: the JHE site (TLS, proxy to gunicorn, static files from `current`, a maintenance switch
// that needs no reload) and its 503 page. Every change is gated by `nginx -t`; a site that fails
// it is never left in place.
import * as pulumi from "@pulumi/pulumi";
import * as command from "@pulumi/command";
import { selfSignedCert } from "./commands";
import { JheConfig } from "./config";
import { JheHost } from "./host";
import { HANDOVER_BIND } from "./systemd";

export interface SiteArgs {
    appRoot: string;
    serviceName: string;
    serverName: string;
    tlsCertificate: string;
    tlsKey: string;
    upstream?: string;
}

/** Where the maintenance flag and page live (nginx must be able to stat them). */
export function maintenanceDir(serviceName: string): string {
    return `/var/lib/jhe-upgrade/${serviceName}`;
}

export function renderSite(a: SiteArgs): string {
    const m = maintenanceDir(a.serviceName);
    const cur = `${a.appRoot.replace(/\/$/, "")}/current`;
    return `# Managed by jhe-upgrade (Pulumi). Local edits are replaced on the next \`pulumi up\`.
server {
    listen 80;
    listen [::]:80;
    server_name ${a.serverName};
    return 301 https://$host$request_uri;
}

server {
    listen 443 ssl;
    listen [::]:443 ssl;
    server_name ${a.serverName};

    ssl_certificate ${a.tlsCertificate};
    ssl_certificate_key ${a.tlsKey};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers off;
    ssl_session_cache shared:jhe_ssl:10m;
    add_header Strict-Transport-Security "max-age=63072000" always;
    add_header X-Content-Type-Options nosniff always;

    client_max_body_size 10m;
    # The site's own log: the watch after an upgrade reads its answers (5xx) before and after the switch.
    access_log /var/log/nginx/${a.serviceName}.access.log;

    # Maintenance window: the upgrade touches ${m}/maintenance-on (no reload needed). Every method gets
    # the 503 with Retry-After: a URI error page is fetched with GET (a named location would keep a POST,
    # which the static page answers with 405 - an API client would not know to retry).
    error_page 503 /maintenance.html;
    location = /maintenance.html {
        internal;
        root ${m};
        add_header Retry-After 30 always;
    }

    location /static/ {
        alias ${cur}/staticfiles/;
        expires 1h;
    }

    location / {
        # The upgrade's smoke tests pass the maintenance page: their header names a file the upgrade made
        # for them under ${m} (a random hex name, only while they run), so users still get the 503.
        set $jhe_maintenance "";
        set $jhe_smoke "none";
        if (-f ${m}/maintenance-on) {
            set $jhe_maintenance "on";
        }
        if ($http_x_jhe_smoke_test ~ "^([0-9a-f]{32})$") {
            set $jhe_smoke $1;
        }
        if (-f ${m}/smoke-$jhe_smoke) {
            set $jhe_maintenance "";
        }
        if ($jhe_maintenance) {
            return 503;
        }
        # Hand-over: while ${m}/next-on exists the release booted in the hand-over unit answers (set
        # and cleared by the upgrade; per request, no reload; requests under way finish where they are).
        set $jhe_backend ${a.upstream ?? "127.0.0.1:8000"};
        if (-f ${m}/next-on) {
            set $jhe_backend ${HANDOVER_BIND};
        }
        proxy_pass http://$jhe_backend;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_read_timeout 60s;
    }
}
`;
}

export const MAINTENANCE_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Maintenance - JupyterHealth Exchange</title></head>
<body><h1>JupyterHealth Exchange is being upgraded</h1>
<p>The Exchange is unavailable for a few moments. No data is lost: please retry shortly.</p></body></html>
`;

export interface NginxSiteArgs {
    host: JheHost;
    config: JheConfig;
    /** Drift repair (the plan's repairKey): installs the site again when the server's was edited by hand. */
    repairKey?: pulumi.Input<string>;
}

/** The site the stack installs (the plan compares the server's with it: drift). */
export function siteFor(config: JheConfig): string {
    const l = config.layout;
    return renderSite({
        appRoot: l.appRoot,
        serviceName: l.serviceName,
        serverName: new URL(config.siteUrl).hostname,
        tlsCertificate: config.tls.certificate,
        tlsKey: config.tls.key,
    });
}

export class NginxSite extends pulumi.ComponentResource {
    public readonly sitePath: string;
    public readonly install: command.remote.Command;

    constructor(name: string, args: NginxSiteArgs, opts?: pulumi.ComponentResourceOptions) {
        super("jhe:upgrade:NginxSite", name, {}, opts);
        const { config, host } = args;
        const l = config.layout;
        const site = siteFor(config);
        this.sitePath = `/etc/nginx/sites-available/${l.serviceName}`;
        const page = host.file("maintenance-page", MAINTENANCE_PAGE,
            { path: `${maintenanceDir(l.serviceName)}/maintenance.html`, mode: "0644" }, { parent: this, dependsOn: host.ready });
        const deps: pulumi.Resource[] = [page];
        if (config.tls.selfSigned) {
            deps.push(host.command("self-signed-cert", {
                create: selfSignedCert(config.ssh.user, config.tls.certificate, config.tls.key, new URL(config.siteUrl).hostname),
                triggers: [config.tls.certificate, config.tls.key],
            }, { parent: this, dependsOn: host.ready }));
        }
        const enabled = `/etc/nginx/sites-enabled/${l.serviceName}`;
        this.install = host.file("site", site, {
            path: this.sitePath,
            mode: "0644",
            validate: `ln -sfn ${this.sitePath} ${enabled} && nginx -t -q`,
            onChange: `ln -sfn ${this.sitePath} ${enabled}; systemctl reload nginx`,
        }, { parent: this, dependsOn: deps }, args.repairKey);
        this.registerOutputs({ sitePath: this.sitePath });
    }
}
