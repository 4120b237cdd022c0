"""The static checks of infra/ (scripts/check-infra): terraform fmt and checkov find nothing to fix."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(
    r"(\w+) scan results:\s+Passed checks: (\d+), Failed checks: (\d+), Skipped checks: (\d+)"
)


def test_check_infra_passes():
    """Run scripts/check-infra: exit 0, fmt ran and passed, checkov passed checks and failed none."""
    # The first run installs checkov (about 90 s); later runs take about 10 s.
    result = subprocess.run(
        ["bash", "scripts/check-infra"], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "check-infra: terraform fmt -check: passed" in output, output
    scans = {framework: tuple(map(int, counts)) for framework, *counts in SUMMARY.findall(output)}
    assert set(scans) == {"terraform", "dockerfile"}, output
    for framework, (passed, failed, _skipped) in scans.items():
        assert failed == 0, f"{framework}: {failed} failed checks\n{output}"
        assert passed > 0, f"{framework}: checkov passed no check, so it checked nothing\n{output}"


# --- the service's Redis ACL: one set of rules, written three times -------------------------------

ACL_SECTION = "## Least-privilege Redis: ACL and TLS"
SERVICE_USER = "concurrency-service"
PASSWORD_PLACEHOLDER = "#PASSWORD_SHA256"


def documented_acl_rules():
    """The rules in docs/operations.md: the first fenced block of its least-privilege section."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split(ACL_SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```text\n(.*?)\n```", section, re.DOTALL)
    assert block, f"no ```text block in {ACL_SECTION!r}"
    (line,) = block.group(1).splitlines()
    return line.split()


def terraform_acl_rules():
    text = (ROOT / "infra" / "terraform" / "redis.tf").read_text()
    (access_string,) = re.findall(r'^\s*redis_access_string\s*=\s*"([^"]*)"', text, re.MULTILINE)
    return access_string.split()


def acl_file_users():
    """{user: its words after the name} from infra/redis/users.acl."""
    lines = (ROOT / "infra" / "redis" / "users.acl").read_text().splitlines()
    users = {}
    for line in lines:
        keyword, name, *rules = line.split()
        assert keyword == "user", line
        users[name] = rules
    return users


def test_the_doc_terraform_and_acl_file_give_the_service_the_same_rules():
    rules = documented_acl_rules()
    assert rules[:3] == ["on", "~c:*", "-@all"], "on, its keys only, then nothing but what follows"
    assert all(rule.startswith("+") for rule in rules[3:]), rules
    assert terraform_acl_rules() == rules
    password, *file_rules = acl_file_users()[SERVICE_USER]
    assert password == PASSWORD_PLACEHOLDER  # no password in the repository; Redis refuses to load it as is
    assert file_rules == rules


def test_the_acl_file_switches_the_default_user_off():
    users = acl_file_users()
    assert set(users) == {"default", SERVICE_USER}
    assert users["default"][0] == "off" and "-@all" in users["default"] and "nopass" not in users["default"]
