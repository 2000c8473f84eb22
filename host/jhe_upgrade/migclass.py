"""What a pending migration will do to the database, read from its file (no Django needed, so the plan
has it before the release is built): the class of each operation and of the migration (its worst).

    no-sql       nothing reaches the database (choices, help text, verbose names, Python defaults, options)
    additive     safe for the old code while it serves, and quick: a new table, a nullable (or
                 DB-defaulted) column, an index built concurrently, a dropped index, a column made nullable
    blocking     safe for the old code but locks a table while it works: a plain AddIndex, a new column
                 with an index, a unique constraint or a foreign key
    data         runs code or SQL over the rows (RunPython, RunSQL): what it does is not known
    destructive  removes or renames what the old code uses, rewrites a column, or adds what the old
                 code's writes may break (a NOT NULL column without a DB default, a constraint)
"""
from __future__ import annotations

import ast
from collections.abc import Callable

CLASSES = ("no-sql", "additive", "blocking", "data", "destructive")

# Field arguments that never reach the database (Django's schema editor ignores them: non_db_attrs;
# a changed Python `default` emits no SQL either).
NON_DB_ARGS = {"blank", "choices", "editable", "error_messages", "help_text", "limit_choices_to", "on_delete",
               "related_name", "related_query_name", "validators", "verbose_name", "default", "to_field_name"}
NO_SQL_OPS = {"AlterModelOptions", "AlterModelManagers"}
ADDITIVE_OPS = {"CreateModel": "creates table", "AddIndexConcurrently": "adds an index without blocking writes",
                "RemoveIndex": "drops an index (the old code does not need it)",
                "RemoveIndexConcurrently": "drops an index (the old code does not need it)"}
DATA_OPS = {"RunPython": "runs Python over the rows", "RunSQL": "runs SQL"}
DESTRUCTIVE_OPS = {"RemoveField": "drops a column the old code reads", "DeleteModel": "drops a table the old code uses",
                   "RenameField": "renames a column the old code uses", "RenameModel": "renames a table the old code uses",
                   "AlterModelTable": "renames a table the old code uses",
                   "AddConstraint": "adds a constraint the old code's writes may break",
                   "AlterUniqueTogether": "changes unique constraints the old code's writes may break",
                   "AlterIndexTogether": "changes indexes (and may lock the table)",
                   "AlterOrderWithRespectTo": "adds or drops a column the old code uses"}


def worst(classes: list[str]) -> str:
    return max(classes, key=CLASSES.index) if classes else "no-sql"


def _name(node: ast.AST) -> str:
    """`migrations.AddField` -> AddField, `models.CharField` -> CharField."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ast.unparse(node)


def _kw(call: ast.Call) -> dict[str, ast.expr]:
    return {k.arg: k.value for k in call.keywords if k.arg}


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _field_key(field: ast.expr) -> tuple[str, list[str], dict[str, str]]:
    """A field definition as the database sees it: its class, positional args and the arguments that
    reach the database."""
    if not isinstance(field, ast.Call):
        return (ast.unparse(field), [], {})
    return (_name(field.func), [ast.unparse(a) for a in field.args],
            {k: ast.unparse(v) for k, v in _kw(field).items() if k not in NON_DB_ARGS})


def operations(source: str) -> list[ast.Call]:
    """The calls in the `operations = [...]` list of a migration module. Raises ValueError when the list
    is not written out call by call (built in code, a name for an operation, no list at all): what it
    holds is then not known, and the migration is classed destructive."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "operations" for t in node.targets):
            if isinstance(node.value, (ast.List, ast.Tuple)) and all(isinstance(e, ast.Call) for e in node.value.elts):
                return [e for e in node.value.elts if isinstance(e, ast.Call)]
            raise ValueError("its operations are not written out one call each")
    raise ValueError("it has no operations list")


def apply_op(fields: dict[tuple[str, str], ast.expr], op: ast.Call) -> None:
    """Follows one operation's effect on the fields: CreateModel's fields, AddField, AlterField, RenameField."""
    kind, kw = _name(op.func), _kw(op)
    model = str(ast.literal_eval(kw["model_name"])).lower() if isinstance(kw.get("model_name"), ast.Constant) else None
    fl = kw.get("fields")
    if kind == "CreateModel" and isinstance(kw.get("name"), ast.Constant) and isinstance(fl, ast.List):
        m = str(ast.literal_eval(kw["name"])).lower()
        for t in fl.elts:
            if isinstance(t, ast.Tuple) and len(t.elts) == 2 and isinstance(t.elts[0], ast.Constant):
                fields[(m, str(t.elts[0].value))] = t.elts[1]
    elif kind in ("AddField", "AlterField") and model and isinstance(kw.get("name"), ast.Constant) and "field" in kw:
        fields[(model, str(ast.literal_eval(kw["name"])))] = kw["field"]
    elif kind == "RenameField" and model and "old_name" in kw and "new_name" in kw:
        old, new = (str(ast.literal_eval(kw[k])) for k in ("old_name", "new_name"))
        if (model, old) in fields:
            fields[(model, new)] = fields.pop((model, old))


def field_history(sources: list[str]) -> dict[tuple[str, str], ast.expr]:
    """(model, field) -> its latest definition, over migration modules in order."""
    fields: dict[tuple[str, str], ast.expr] = {}
    for src in sources:
        try:
            ops = operations(src)
        except (SyntaxError, ValueError):
            continue  # (its fields stay unknown: an AlterField of one is then classed destructive)
        for op in ops:
            apply_op(fields, op)
    return fields


def classify_operation(op: ast.Call, earlier: dict[tuple[str, str], ast.expr]) -> tuple[str, str]:
    """(class, why) of one operation; `earlier` is the fields as the migrations before it left them."""
    kind, kw = _name(op.func), _kw(op)
    model = str(ast.literal_eval(kw["model_name"])).lower() if isinstance(kw.get("model_name"), ast.Constant) else "?"
    named = kw.get("name", kw.get("old_name"))
    name = str(ast.literal_eval(named)) if isinstance(named, ast.Constant) else "?"
    if kind in NO_SQL_OPS:
        return "no-sql", f"{kind}: model options only"
    if kind in ADDITIVE_OPS:
        return "additive", f"{kind} {name if kind == 'CreateModel' else model}: {ADDITIVE_OPS[kind]}"
    if kind == "AddIndex":
        return "blocking", f"AddIndex on {model}: blocks writes to the table while the index is built (AddIndexConcurrently does not)"
    if kind in DATA_OPS:
        return "data", f"{kind}: {DATA_OPS[kind]}"
    if kind in DESTRUCTIVE_OPS:
        return "destructive", f"{kind} {model}.{name}: {DESTRUCTIVE_OPS[kind]}" if model != "?" else f"{kind}: {DESTRUCTIVE_OPS[kind]}"
    if kind == "SeparateDatabaseAndState":
        db_ops = kw.get("database_operations")
        inner = [classify_operation(o, earlier) for o in (db_ops.elts if isinstance(db_ops, (ast.List, ast.Tuple)) else [])
                 if isinstance(o, ast.Call)]
        return (worst([c for c, _ in inner]), "; ".join(w for _, w in inner) or "state only: no SQL")
    field = kw.get("field")
    if kind == "AddField" and isinstance(field, ast.Call):
        fkw = _kw(field)
        if _name(field.func) in ("ForeignKey", "OneToOneField") or _is_true(fkw.get("db_index")) or _is_true(fkw.get("unique")):
            return "blocking", (f"AddField {model}.{name}: builds an index (or a foreign key) while the table is locked "
                                f"against reads and writes")
        has_default = "db_default" in fkw and not (isinstance(fkw["db_default"], ast.Constant) and fkw["db_default"].value is None)
        if _is_true(fkw.get("null")) or has_default or _name(field.func) == "ManyToManyField":
            return "additive", f"AddField {model}.{name}: a nullable (or DB-defaulted) column the old code leaves alone"
        return "destructive", (f"AddField {model}.{name}: NOT NULL without a DB default - the old code's inserts "
                               f"would fail while it serves")
    if kind == "AlterField" and isinstance(field, ast.Call):
        before = earlier.get((model, name))
        if before is None:
            return "destructive", f"AlterField {model}.{name}: its earlier definition was not found (treated as a rewrite)"
        old, new = _field_key(before), _field_key(field)
        if old == new:
            return "no-sql", f"AlterField {model}.{name}: only arguments that never reach the database change"
        rest_old = {k: v for k, v in old[2].items() if k != "null"}
        rest_new = {k: v for k, v in new[2].items() if k != "null"}
        if old[:2] == new[:2] and rest_old == rest_new and new[2].get("null") == "True":
            return "additive", f"AlterField {model}.{name}: the column becomes nullable"
        return "destructive", f"AlterField {model}.{name}: the column changes ({ast.unparse(field)}) - may rewrite the table"
    return "destructive", f"{kind}: not an operation this tool knows (treated as destructive)"


def classify(sources: list[str], i: int) -> dict:
    """Migration `i` of an app (its modules `sources`, in order): its class and why, from its operations,
    each judged against the fields as the migrations (and operations) before it left them."""
    rewrites: list[str] = []
    changes: list[str] = []
    try:
        fields = field_history(sources[:i])
        ops = []
        code = functions_models(sources[i])
        for op in operations(sources[i]):
            ops.append(classify_operation(op, fields))
            apply_op(fields, op)
            if ops[-1][0] in REWRITING:
                rewrites += rewritten_models(op, code)
            if ops[-1][0] != "no-sql":
                changes += rewritten_models(op, code)
    except (SyntaxError, ValueError, KeyError) as e:
        ops = [("destructive", f"could not be read ({type(e).__name__}: {e}); treated as destructive")]
        rewrites = changes = ["*"]
    return {"class": worst([c for c, _ in ops]), "operations": [w for _, w in ops] or ["no operations"],
            "rewrites": sorted(set(rewrites)), "changes": sorted(set(changes))}


REWRITING = ("blocking", "data", "destructive")


def rewritten_models(op: ast.Call, code: dict[str, list[str] | None]) -> list[str]:
    """The models (lower case; "app.model" for another app's) whose tables an operation works on, or
    ["*"] when that is not known (SQL, code that names no model, an operation nested or unknown): the
    whole app's tables. A RunPython's are the models its function asks `apps.get_model` for (`code`,
    from functions_models). ("rewrites": those of blocking, data and destructive operations; "changes":
    those of every operation that reaches the database.)"""
    kind, kw = _name(op.func), _kw(op)
    named = kw.get("model_name", kw.get("name", kw.get("old_name")))
    if kind == "RunPython":
        fn = op.args[0] if op.args else kw.get("code")
        models = code.get(fn.id) if isinstance(fn, ast.Name) else None
        return models or ["*"]
    if kind not in DATA_OPS and kind != "SeparateDatabaseAndState" and isinstance(named, ast.Constant):
        return [str(named.value).lower()]
    return ["*"]


def functions_models(source: str) -> dict[str, list[str] | None]:
    """For each module-level function of a migration: the models it gets with `apps.get_model("app",
    "Model")` (as "app.model"), or None when it gets one whose name is not written out, or calls
    another function of the module (what that does is not followed)."""
    out: dict[str, list[str] | None] = {}
    tree = ast.parse(source)
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        models: list[str] | None = []
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            if _name(node.func) == "get_model" and models is not None:
                args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                if len(args) == 2 == len(node.args):
                    models.append(f"{args[0]}.{args[1]}".lower())
                elif len(args) == 1 == len(node.args) and "." in args[0]:
                    models.append(args[0].lower())
                else:
                    models = None
            elif isinstance(node.func, ast.Name) and node.func.id in names:
                models = None
        out[fn.name] = sorted(set(models)) if models else None
    return out


def classify_pending(pending: list[str], read: Callable[[str, str], str | None], listing: Callable[[str], list[str]]) -> dict:
    """{app.migration: {class, operations}} for the pending migrations, reading each app's migration
    files with `read(app, name)` (None: not found) in the order `listing(app)` gives."""
    out: dict = {}
    for app in sorted({m.split(".", 1)[0] for m in pending}):
        names = listing(app)
        texts = [read(app, n) for n in names]
        for m in [p for p in pending if p.startswith(app + ".")]:
            n = m.split(".", 1)[1]
            if n not in names or texts[names.index(n)] is None:
                out[m] = {"class": "destructive", "operations": ["its file was not found (treated as destructive)"],
                          "rewrites": ["*"], "changes": ["*"]}
                continue
            i = names.index(n)
            known = [t for t in texts[:i + 1] if t is not None]
            out[m] = classify(known, len(known) - 1)
    return out
