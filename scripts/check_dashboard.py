"""Check the Grafana dashboard's structure; write its PromQL as a rule file for `promtool check rules`."""

import json
import re
import sys

USAGE = "usage: check_dashboard.py DASHBOARD.json RULES_OUT.yml"
MIN_SCHEMA_VERSION = 36
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
BUILTIN_VALUES = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1d",
    "__range_s": "86400",
    "__range_ms": "86400000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def flatten(panels):
    """Yield every panel, those nested in collapsed rows included."""
    for panel in panels:
        yield panel
        yield from flatten(panel.get("panels", []))


def variable_values(dashboard, errors):
    """Return the value each template variable stands for in an expression: its current value."""
    values = dict(BUILTIN_VALUES)
    variables = dashboard.get("templating", {}).get("list", [])
    by_name = {variable.get("name"): variable for variable in variables}
    source = by_name.get("datasource", {})
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        errors.append("templating: no `datasource` variable of type datasource for Prometheus")
    for variable in variables:
        name = variable.get("name")
        if variable.get("type") == "datasource":
            continue
        if variable.get("type") == "query" and variable.get("datasource") != DATASOURCE:
            errors.append(f"variable {name}: datasource is not {DATASOURCE}")
        current = variable.get("current", {}).get("value")
        if isinstance(current, list):
            current = current[0] if len(current) == 1 else "|".join(current)
        if current == "$__all":
            current = variable.get("allValue") or ".*"
        if not isinstance(current, str) or not current:
            errors.append(f"variable {name}: no current value")
            continue
        values[name] = current
    return values


def substitute(expr, values, where, errors):
    """Return `expr` with every Grafana variable replaced by its value."""

    def value(match):
        name = next(group for group in match.groups() if group)
        if name not in values:
            errors.append(f"{where}: unknown variable ${name}")
            return match.group(0)
        return values[name]

    return _VARIABLE.sub(value, expr)


def check(dashboard):
    """Return (errors, rules): structural problems, and one recording rule per panel expression."""
    errors = []
    if not dashboard.get("title") or not dashboard.get("uid"):
        errors.append("dashboard: title and uid are required")
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < MIN_SCHEMA_VERSION:
        errors.append(f"dashboard: schemaVersion must be >= {MIN_SCHEMA_VERSION}")
    values = variable_values(dashboard, errors)
    panels = list(flatten(dashboard.get("panels", [])))
    if not panels:
        errors.append("dashboard: no panels")
    ids = [panel.get("id") for panel in panels]
    for duplicate in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        errors.append(f"panel id {duplicate} is used more than once")
    rules = []
    for panel in panels:
        where = f"panel {panel.get('id')} ({panel.get('title')!r})"
        if not isinstance(panel.get("id"), int):
            errors.append(f"{where}: id must be an integer")
        if not panel.get("title"):
            errors.append(f"{where}: no title")
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in "hwxy") or grid["x"] + grid["w"] > GRID_WIDTH:
            errors.append(f"{where}: gridPos needs integer h, w, x, y within {GRID_WIDTH} columns")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource") != DATASOURCE:
            errors.append(f"{where}: datasource is not {DATASOURCE}")
        targets = panel.get("targets") or []
        if not targets:
            errors.append(f"{where}: no targets")
        refs = [target.get("refId") for target in targets]
        if len(set(refs)) != len(refs) or not all(refs):
            errors.append(f"{where}: refIds must be present and unique")
        for target in targets:
            target_where = f"{where} target {target.get('refId')}"
            if target.get("datasource", DATASOURCE) != DATASOURCE:
                errors.append(f"{target_where}: datasource is not {DATASOURCE}")
            if not str(target.get("expr", "")).strip():
                errors.append(f"{target_where}: no expr")
                continue
            expr = substitute(target["expr"], values, target_where, errors)
            rules.append({"record": f"dashboard:panel_{panel.get('id')}_{target.get('refId')}", "expr": expr})
    return errors, rules


def main(dashboard_path, rules_path):
    """Check the dashboard; write its expressions as recording rules; return the exit status."""
    with open(dashboard_path) as file:
        dashboard = json.load(file)
    errors, rules = check(dashboard)
    for error in errors:
        print(f"{dashboard_path}: {error}", file=sys.stderr)
    if errors:
        return 1
    with open(rules_path, "w") as file:  # JSON is YAML: promtool reads it
        json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, file, indent=2)
    panels = sum(1 for panel in flatten(dashboard["panels"]) if panel.get("type") != "row")
    print(f"{dashboard_path}: structure OK, {panels} panels, {len(rules)} expressions")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(USAGE)
    sys.exit(main(sys.argv[1], sys.argv[2]))
