"""`vlmpref <command> --help` answers at once: building a command's options imports none of the heavy libraries
(torch, transformers, PEFT, bitsandbytes, TRL, datasets, Gradio), which load only when a command runs. Startup
time itself is measured, not asserted (see the README check and the report of issue 18)."""

import json
import subprocess
import sys
from pathlib import Path

from vlmpref.cli import COMMANDS

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "trl", "datasets", "gradio", "accelerate")
PROBE = """
import json, sys
from vlmpref.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


def test_help_of_every_command_imports_no_heavy_library():
    env_src = str(Path(__file__).parents[1] / "src")
    loaded = {}
    for name in ["", *COMMANDS]:
        argv = [*name.split(), "--help"]
        result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], capture_output=True,
                                text=True, env={"PYTHONPATH": env_src, "PATH": "/usr/bin:/bin"}, check=True)
        assert "usage: vlmpref" in result.stdout
        loaded[name or "vlmpref"] = json.loads(result.stdout.splitlines()[-1])
    assert loaded == {name: [] for name in loaded}, loaded
