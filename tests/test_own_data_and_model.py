"""The README's "Your own data and model" section, run as written: its config and its commands, in a folder
holding a few labelled text files and a tiny local BERT directory (tests/model_families.py)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.corpus_support import synthetic_corpus
from tests.model_families import build_family_dir

pytestmark = pytest.mark.slow
MARKER = "<!-- own-data-and-model:"


def readme_section() -> tuple[str, list[str]]:
    """(the YAML config, the shell commands) of the README block after MARKER."""
    text = (REPO / "README.md").read_text()
    after = text[text.index(MARKER):]
    config = re.search(r"```yaml\n(.*?)```", after, re.DOTALL)
    commands = re.search(r"```bash\n(.*?)```", after, re.DOTALL)
    assert config and commands, "the README section lost its yaml or bash block"
    lines = [line.split("#", 1)[0].strip() for line in commands.group(1).splitlines()]
    return config.group(1), [line for line in lines if line]


def test_the_readme_config_and_commands_run_on_a_local_folder_and_a_local_model(tmp_path):
    config_text, commands = readme_section()
    (tmp_path / "tickets.yaml").write_text(config_text)
    labels = ["billing", "outage", "praise"]
    assert f"labels: [{', '.join(labels)}]" in config_text
    for row in synthetic_corpus(150, labels, seed=8):
        folder = tmp_path / "data" / "tickets" / row["label"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{row['id']}.txt").write_text(row["text"])
    build_family_dir("bert", tmp_path / "models" / "my-encoder")
    env = {**os.environ, "FRESHET_HOME": str(tmp_path / ".freshet"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    outputs = []
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "freshet", command
        result = subprocess.run([sys.executable, "-m", "tasks.cli", *words[1:]], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=900, check=False)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        outputs.append(result.stdout)
    summary = outputs[0]
    assert f"model: directory {tmp_path / 'models' / 'my-encoder'} (BERT" in summary, summary[-3000:]
    assert "registered version 1" in summary, summary[-3000:]
    assert "crawling the config's own sources (tickets)" in summary
