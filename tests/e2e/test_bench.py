"""``fastfog bench`` end to end: a short run of every workload, direct and through fastfog."""

import re
import subprocess
import sys


def test_a_short_run_measures_every_workload_without_errors():
    result = subprocess.run([sys.executable, "-m", "fastfog", "bench", "--seconds", "0.3", "--concurrency", "4",
                             "--bulk-size", "2000000"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split()[:2] for line in result.stdout.splitlines()]
    assert rows == [[workload, target] for workload in ("connect", "http", "bulk")
                    for target in ("direct", "fastfog")]
    assert all(line.endswith("errors {}") for line in result.stdout.splitlines())
    rates = [float(match) for match in re.findall(r"(\d+)/s", result.stdout)]
    assert len(rates) == 4 and all(rate > 0 for rate in rates)
