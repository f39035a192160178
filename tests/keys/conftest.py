"""SoftHSM2 token for PKCS#11 tests (Debian package softhsm2, installed by
scripts/install-test-deps.sh). One token per test run: PKCS#11 modules initialise once per
process, so SOFTHSM2_CONF is set before the module is first loaded."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE_CANDIDATES = ("/usr/lib/softhsm/libsofthsm2.so",
                     "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                     "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")


@dataclass(frozen=True)
class HSM:
    module: str
    label: str
    pin: str


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HSM]:
    util = shutil.which("softhsm2-util")
    module = next((m for m in MODULE_CANDIDATES if Path(m).exists()), None)
    if util is None or module is None:
        pytest.fail("SoftHSM2 is missing: run scripts/install-test-deps.sh")
    pytest.importorskip("pkcs11")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run([util, "--init-token", "--free", "--label", "tessera-test", "--pin", "1234",
                    "--so-pin", "5678"], check=True, capture_output=True)
    yield HSM(module=module, label="tessera-test", pin="1234")
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous
