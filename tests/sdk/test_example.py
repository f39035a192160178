"""The documented example runs end to end (real servers on 127.0.0.1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent_and_resource_server.py"


@pytest.mark.slow
def test_example_runs() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "'token_type': 'DPoP'" in lines[0]
    assert lines[1].startswith("stolen as bearer:   401")
    assert "'acting_agent': 'idn_" in lines[2]
