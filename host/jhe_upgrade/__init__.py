"""jhe-upgrade's host-side tool: runs ON the JHE server, one step per call.

Pulumi states the target (version, config); each step looks at what the server really is (current
release, applied migrations, backups, the host lock) and converges it to that target. A step that
finds its work done does nothing, so a failed or interrupted `pulumi up` is repaired by running it
again. Standard library only (the server has Python because JHE is Python).

    jhe-upgrade <step> < spec.json       steps: adopt preflight prepare backup migrate switch
                                                health finish plan status unlock superuser
Prints one JSON line (the step's result) on stdout; progress goes to stderr. Exit 0 on success,
1 on a refusal or failure (the message says what happened and what was restored), 2 on misuse.

The package, one module per concern, bottom to top:
    util, spec             helpers; what Pulumi wants and the host layout
    state                  state.json, the host lock, registered backups
    gitrepo, envfile,      the repository and a tag's facts; .env and env examples;
    requirements           dependencies and version checks
    db, rowkeys,           PostgreSQL facts; rows by key (every key type, renamed columns, migrations' deletions);
    backup, dbmoves        dumps and snapshots; swaps and restores by rename
    health, window,        health gate and smoke tests; maintenance page and service;
    upgradelog, release,   UPGRADE_LOG.md; releases/<tag>;
    handover               the release booted before the window in <service>-next@<tag>
    recovery, staging,     the old version back after a failure; the staged copy;
    replay, rollback       rows written on the newer version; the rollback
    migclass               what a pending migration does to the database, from its file
    plan, provision, steps the read-only plan; user/database/adoption; the upgrade steps in order
    cli                    one step per call
The program ships it to the server as one file (components/toolBundle.ts).
"""
