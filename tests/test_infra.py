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
