// mocha's spec reporter plus the plain closing line CI reads: "N passed, N failed[, N skipped]".
"use strict";
const Mocha = require("mocha");
const { EVENT_RUN_END } = Mocha.Runner.constants;

class SpecWithSummary extends Mocha.reporters.Spec {
    constructor(runner, options) {
        super(runner, options);
        runner.once(EVENT_RUN_END, () => {
            const s = runner.stats || this.stats;
            const skipped = s.pending ? `, ${s.pending} skipped` : "";
            process.stdout.write(`\n${s.passes} passed, ${s.failures} failed${skipped}\n`);
            // scripts/test.sh adds these to the other layers' counts for its closing line.
            if (process.env.JHE_TEST_SUMMARY) require("fs").writeFileSync(process.env.JHE_TEST_SUMMARY, `${s.passes} ${s.failures}\n`);
        });
    }
}
module.exports = SpecWithSummary;
