// A user writing observations through the server's nginx while something happens: bounded rate and
// duration, only the test server's own address. Records the ids acknowledged with 201, so a test
// can prove that every acknowledged write is in the database afterwards.
import { HostInfo, query, request } from "./testhost";

/** An acknowledged write and what it said: checked by content, not only by id. */
export interface AckedWrite {
    id: number;
    code: string;
    value: number;
}

export interface WriterReport {
    acked: number[];
    ackedRows: AckedWrite[];
    maintenance503: number;
    errors: number;
    /** Other answers by status (0: no answer), e.g. 502 while gunicorn is down outside a window. */
    statuses: Record<number, number>;
    attempts: number;
    /** Downtime as the writer saw it: the longest stretch (s) in which none of its writes was acknowledged. */
    longestGapSeconds: number;
}

export class Writer {
    private running = false;
    private loop?: Promise<void>;
    private report: WriterReport = { acked: [], ackedRows: [], maintenance503: 0, errors: 0, statuses: {}, attempts: 0, longestGapSeconds: 0 };
    private lastAck = 0;
    private readonly tag = `w${Date.now().toString(36)}`;
    private fhir = "/fhir/r5/Observation";

    constructor(private readonly h: HostInfo, private readonly patientId = 1, private readonly perSecond = 10, private readonly maxSeconds = 600) {}

    start(): this {
        this.running = true;
        this.lastAck = Date.now();
        const deadline = Date.now() + this.maxSeconds * 1000;
        const gap = 1000 / this.perSecond;
        this.loop = (async () => {
            for (let i = 0; this.running && Date.now() < deadline && i < this.perSecond * this.maxSeconds; i++) {
                const t = Date.now();
                await this.once(i);
                await new Promise((r) => setTimeout(r, Math.max(0, gap - (Date.now() - t))));
            }
        })();
        return this;
    }

    private async once(i: number): Promise<void> {
        this.report.attempts++;
        const code = `${this.tag}-${i}`;
        const value = i + 0.25;
        const body = { subject: { reference: `Patient/${this.patientId}` }, code: { coding: [{ code }] }, valueQuantity: { value } };
        try {
            let r = await request(this.h, "POST", this.fhir, body, 5000);
            if (r.status === 404 && r.body.includes("<")) {
                // The FHIR path moved between versions (/fhir/r5 -> /FHIR/R5): follow it, as a client would.
                this.fhir = this.fhir === "/fhir/r5/Observation" ? "/FHIR/R5/Observation" : "/fhir/r5/Observation";
                r = await request(this.h, "POST", this.fhir, body, 5000);
            }
            if (r.status === 201) {
                const id = Number(JSON.parse(r.body).id);
                this.report.acked.push(id);
                this.report.ackedRows.push({ id, code, value });
                this.gap();
            }
            else if (r.status === 503) this.report.maintenance503++;
            else this.other(r.status);
        } catch {
            this.other(0);
        }
    }

    private other(status: number): void {
        this.report.errors++;
        this.report.statuses[status] = (this.report.statuses[status] ?? 0) + 1;
    }

    private gap(): void {
        const now = Date.now();
        this.report.longestGapSeconds = Math.max(this.report.longestGapSeconds, (now - this.lastAck) / 1000);
        this.lastAck = now;
    }

    async stop(): Promise<WriterReport> {
        this.running = false;
        await this.loop;
        this.gap(); // a stretch without acknowledgement that lasted to the end counts too
        return this.report;
    }
}

/** Acknowledged writes whose row is missing or no longer says what was written (code and value). */
export async function lostByContent(h: HostInfo, writes: AckedWrite[]): Promise<number[]> {
    if (!writes.length) return [];
    const rows = await query<{ id: string; code: string; value: number }>(
        h, "SELECT id, code, value FROM core_observation WHERE id = ANY($1::bigint[])", [writes.map((w) => w.id)]);
    const have = new Map(rows.map((r) => [Number(r.id), r]));
    return writes.filter((w) => have.get(w.id)?.code !== w.code || Number(have.get(w.id)?.value) !== w.value).map((w) => w.id);
}

/** Acknowledged ids that are not in the database. */
export async function lostWrites(h: HostInfo, ids: number[]): Promise<number[]> {
    if (!ids.length) return [];
    const rows = await query<{ id: string }>(h, "SELECT id FROM core_observation WHERE id = ANY($1::bigint[])", [ids]);
    const have = new Set(rows.map((r) => Number(r.id)));
    return ids.filter((i) => !have.has(i));
}
