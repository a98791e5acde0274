"""``workerpool dev`` comes from the sim package with the [local] extra; without it the
subcommand still exists and says in one line how to get it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.cli import LOCAL_EXTRA_MISSING, build_parser
from tests.helpers import ROOT

#: Run the command with moto unimportable, as in a production install without [local].
WITHOUT_MOTO = """
import sys
sys.modules["moto"] = None
from shared.cli import main
raise SystemExit(main(sys.argv[1:]))
"""

#: The same with the sim package itself missing (a finder refuses it).
WITHOUT_SIM = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "sim" or name.startswith("sim."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Refuse())
from shared.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("script", [WITHOUT_MOTO, WITHOUT_SIM], ids=["no moto", "no sim"])
@pytest.mark.parametrize("args", [["dev"], ["dev", "--target", "3"], ["dev", "--help"]])
def test_dev_without_the_local_extra_says_how_to_get_it_in_one_line(script: str,
                                                                   args: list[str]) -> None:
    done = run(script, *args)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"workerpool dev: {LOCAL_EXTRA_MISSING}"]
    assert "pip install -e '.[local]'" in done.stderr
    assert done.stdout == ""


def test_other_commands_still_refuse_unknown_arguments_without_the_extra() -> None:
    done = run(WITHOUT_MOTO, "definitions", "--bogus")
    assert done.returncode == 2
    assert "unrecognized arguments: --bogus" in done.stderr


def test_with_the_extra_dev_is_the_local_pool_with_its_options() -> None:
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    options = {o for a in choices["dev"]._actions for o in a.option_strings}
    assert {"--dispatchers", "--target", "--max", "--moto-port", "--keep-queues"} <= options
