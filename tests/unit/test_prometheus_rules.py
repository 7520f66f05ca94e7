"""deploy/prometheus: the config and rules pass promtool's checks, every alert fires in a
promtool unit test and has a README entry, and every rule reads metrics the worker exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.promql import PROMETHEUS_OWN, exported_names, metric_names

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules" / "sagestream.yml"
RULE_TESTS = PROMETHEUS / "tests" / "sagestream_test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: `bash deploy/dev.sh setup` installs Debian's prometheus"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[str]:
    return [rule["alert"] for rule in rules() if "alert" in rule]


def test_promtool_accepts_the_config_and_the_rules() -> None:
    config = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_and_every_record_is_evaluated_in_the_promtool_tests() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        check["alertname"]
        for case in cases
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    assert fired == set(alerts())
    evaluated = {check["expr"] for case in cases for check in case.get("promql_expr_test", [])}
    assert evaluated == {rule["record"] for rule in rules() if "record" in rule}


def test_the_unit_tests_catch_a_rule_that_never_fires(tmp_path: Path) -> None:
    """The tests are not vacuous: a rule with an impossible threshold fails them."""
    broken = tmp_path / "rules" / "sagestream.yml"
    broken.parent.mkdir()
    broken.write_text(RULES.read_text().replace("p99_5m > 2\n", "p99_5m > 1e9\n"))
    suite = tmp_path / "tests" / "sagestream_test.yml"
    suite.parent.mkdir()
    suite.write_text(RULE_TESTS.read_text())
    done = promtool("test", "rules", str(suite))
    assert done.returncode != 0 and "SagestreamFreshnessSlow" in done.stdout + done.stderr


def test_rules_read_only_metrics_the_worker_exports() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    known = exported_names() | recorded | PROMETHEUS_OWN
    for rule in rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, (rule.get("alert") or rule.get("record"), unknown)


def test_every_alert_has_a_runbook_entry_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    headings = {h.strip().lower() for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    for rule in rules():
        if "alert" in rule:
            assert rule["alert"].lower() in headings, rule["alert"]
            assert rule["annotations"]["runbook"] == f"README.md#{rule['alert'].lower()}"


def test_metric_names_sees_through_the_syntax() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (kind, le) (rate(sagestream_x_bucket{kind="a b"}[5m])))'
        " > 2 and on (job) up == 0 unless sagestream:recorded"
    )
    assert metric_names(expr) == {"sagestream_x_bucket", "up", "sagestream:recorded"}
