"""bench/vs_original.py prints the interleaved comparison (the numbers are figures, not checks;
its formulations are checked against ours in tests/models/test_ops.py)."""

import pytest

from bench import vs_original

pytestmark = pytest.mark.slow  # end to end: main.py or its parts, in subprocesses


def test_prints_one_row_per_experiment(capsys):
    assert vs_original.main(["--apps", "apps/small_scale/static_dnw.yml", "--rounds", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| static")]
    assert len(rows) == 1 and rows[0].rstrip().endswith("x |")
