// A user watching the site: GET /health through nginx every 100 ms until stopped (bounded), only the
// test server's own address. Used by tests (was the site ever unavailable?) and by the benchmark.
import { HostInfo, request } from "./testhost";

export interface Probe {
    t: number;
    status: number | "error";
    version?: string;
}

export class Prober {
    private samples: Probe[] = [];
    private running = false;
    private loop?: Promise<void>;
    constructor(private readonly h: HostInfo, private readonly maxMinutes = 30) {}

    start(): this {
        this.running = true;
        const deadline = Date.now() + this.maxMinutes * 60_000;
        this.loop = (async () => {
            while (this.running && Date.now() < deadline) {
                const t = Date.now();
                try {
                    const r = await request(this.h, "GET", "/health", undefined, 2000);
                    this.samples.push({ t, status: r.status, version: r.status === 200 ? JSON.parse(r.body).version : undefined });
                } catch {
                    this.samples.push({ t, status: "error" });
                }
                await new Promise((res) => setTimeout(res, Math.max(0, 100 - (Date.now() - t))));
            }
        })();
        return this;
    }

    async stop(): Promise<Probe[]> {
        this.running = false;
        await this.loop;
        return this.samples;
    }
}

/** Unavailable and maintenance seconds from samples (each sample stands for the time to the next). */
export function account(samples: Probe[]): { unavailable: number; maintenance: number; downtime: number } {
    let unavailable = 0;
    let maintenance = 0;
    for (let i = 0; i + 1 < samples.length; i++) {
        const dt = (samples[i + 1].t - samples[i].t) / 1000;
        if (samples[i].status === 503) maintenance += dt;
        else if (samples[i].status !== 200) unavailable += dt;
    }
    return { unavailable, maintenance, downtime: unavailable + maintenance };
}
