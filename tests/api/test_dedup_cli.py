from typer.testing import CliRunner

import api.commands  # noqa: F401 - registers the commands on the app
from api.options import app
from searcher.dedup_rule import VECTORS_ONLY, DedupRule


def test_the_dedup_help_states_the_rules_defaults():
    result = CliRunner().invoke(app, ["dedup", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rule, plain = DedupRule(), VECTORS_ONLY
    for value, vectors_only in ((rule.threshold, plain.threshold), (rule.gap, plain.gap), (rule.cap, plain.cap)):
        assert f"(default {value:.2f} verified, {vectors_only:.2f} vectors alone)" in " ".join(result.output.split())
    assert f"(default {rule.match_weight:.2f};" in result.output


def test_a_bad_rule_is_a_clear_error_not_a_traceback(tmp_path):
    result = CliRunner().invoke(app, ["dedup", "--gap", "1.5", "--index", str(tmp_path / "none")])
    assert result.exit_code != 0 and "Traceback" not in result.output
