"""Alert rules, their unit tests, the dashboard and the runbook: promtool and the real service check them."""

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "infra" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "infra" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "infra" / "grafana" / "dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOK_URL = "https://github.com/example/concurrency-service/blob/main/docs/operations.md#"
SEVERITIES = {"critical", "warning"}
SCRAPE_METRICS = {"up"}  # made by Prometheus at each scrape, not exposed by the service
TARGET_LABELS = {"job", "instance"}  # attached by Prometheus to every scraped series

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![\w.$])([A-Za-z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.$:])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"}
_KEYWORDS |= {"by", "without", "on", "ignoring", "group_left", "group_right"}


def alert_rules():
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs():
    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in panels(dashboard["panels"]) for target in panel.get("targets", [])]


def parse_promql(expr):
    """Return ({metric: label names in its selectors}, label names in grouping clauses) of an expression."""
    text = _STRING.sub('""', expr)
    metrics = {}
    for name, matchers in _SELECTOR.findall(text):
        metrics.setdefault(name, set()).update(_MATCHER_LABEL.findall(matchers))
    grouping = {label.strip() for labels in _GROUPING.findall(text) for label in labels.split(",")} - {""}
    text = _GROUPING.sub(" ", _SELECTOR.sub(r"\1", text))
    text = re.sub(r"\[[^\]]*\]", " ", text)
    for name in _IDENTIFIER.findall(text):
        if name not in _KEYWORDS:
            metrics.setdefault(name, set())
    return metrics, grouping


def github_anchor(heading):
    """Return the anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_check_monitoring_checks_every_rule_and_passes_the_unit_tests():
    result = subprocess.run(
        ["bash", "scripts/check-monitoring"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    out = result.stdout
    assert result.returncode == 0, out
    rules = re.search(r"Checking infra/prometheus/alerts\.yml\n\s+SUCCESS: (\d+) rules found", out)
    assert rules, out
    assert int(rules.group(1)) == len(alert_rules()) > 0
    assert re.search(r"Unit Testing:\s+infra/prometheus/alerts\.test\.yml\n\s+SUCCESS\n", out), out
    exprs = re.search(r"Dashboard expressions of .*:\nChecking \S+\n\s+SUCCESS: (\d+) rules found", out)
    assert exprs, out
    assert int(exprs.group(1)) == len(dashboard_exprs()) > 0


def test_every_alert_fires_in_a_unit_test_and_stays_silent_in_another():
    names = {rule["alert"] for rule in alert_rules()}
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    tested = {case["alertname"] for case in cases}
    assert tested <= names, f"unit tests of alerts that do not exist: {tested - names}"
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert not names - fires, f"never made to fire: {names - fires}"
    assert not names - silent, f"never checked to stay silent: {names - silent}"


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section():
    _, found, rest = OPERATIONS.read_text().partition("\n## Alerts\n")
    assert found, "docs/operations.md has no '## Alerts' section"
    runbook = rest.split("\n## ", 1)[0]  # up to the next section
    headings = re.findall(r"^#{3,6} (.+)$", runbook, flags=re.MULTILINE)
    anchors = {github_anchor(heading) for heading in headings}
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        anchor = f"alert-{name.lower()}"
        assert rule["annotations"]["runbook_url"] == RUNBOOK_URL + anchor, name
        assert anchor in anchors, f"docs/operations.md has no heading 'Alert: {name}'"


def test_the_promql_parser_finds_metrics_and_labels():
    metrics, grouping = parse_promql(
        'histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{job="x", route=~"/v1/{id}|b"}[5m])))'
        " / on (job) group_left sum(rate(b_total[$__rate_interval] offset 1d)) > 0.5 and c unless absent(up)"
    )
    assert metrics == {"a_bucket": {"job", "route"}, "b_total": set(), "c": set(), "up": set()}
    assert grouping == {"route", "le", "job"}


@pytest.mark.http
@pytest.mark.redis
def test_every_metric_the_alerts_and_dashboard_use_is_exposed(server):
    user = f"monitoring-{uuid.uuid4().hex[:12]}"
    body = {"userId": user, "deviceId": "tv", "streamId": "match"}
    started = server.request("POST", "/v1/sessions", body)
    assert started.status == 201, started.body
    session = started.json()
    bearer = {"Authorization": f"Bearer {session['token']}"}
    beat = server.request("PUT", f"/v1/sessions/{session['sessionId']}", headers=bearer)
    assert beat.status == 200, beat.body
    bearer = {"Authorization": f"Bearer {beat.json()['token']}"}
    stopped = server.request("DELETE", f"/v1/sessions/{session['sessionId']}", headers=bearer)
    assert stopped.status == 204, stopped.body
    assert server.request("GET", "/no-such-route").status == 404
    for device in range(50):  # up to the limit, whatever it is: a limit hit makes concurrency_events_total
        answer = server.request("POST", "/v1/sessions", {**body, "deviceId": f"device-{device}"})
        if answer.status == 403:
            break
    assert answer.status == 403, answer.body

    scraped = server.request("GET", "/metrics")
    assert scraped.status == 200
    exposed = {}
    for line in scraped.body.decode().splitlines():
        if line and not line.startswith("#"):
            sample = re.match(r"([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s", line)
            assert sample, line
            labels = re.findall(r'(\w+)="', sample.group(2) or "")
            exposed.setdefault(sample.group(1), set()).update(labels)
    all_labels = set().union(*exposed.values()) | TARGET_LABELS

    exprs = [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
    for expr in exprs:
        metrics, grouping = parse_promql(expr)
        assert metrics, expr
        for name, labels in metrics.items():
            if name in SCRAPE_METRICS:
                continue
            assert name in exposed, f"{name} is not in /metrics; used by {expr}"
            assert labels - TARGET_LABELS <= exposed[name], f"{name} has no label {labels - exposed[name]}"
        assert grouping <= all_labels, f"no metric has the labels {grouping - all_labels}: {expr}"
