"""The trainer under the real launcher: torchrun with gloo ranks on the CPU, real processes.

- equivalence: 2 ranks x batch B match 1 process x batch 2B (SGD, dropout off) at float tolerance;
- fault: a rank killed mid-training under --max-restarts 1 resumes from the checkpoint and ends
  with the same steps, the same samples in the same order, and the same weights as a clean run;
- multi-node: two torchrun agents (nnodes=2) rendezvous over loopback and finish.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tasks.contract import read_manifest
from tasks.store import ArtifactStore
from tests.conftest import REPO
from tests.corpus_support import synthetic_corpus
from tests.pipeline_support import LABELS, fake_upstream, max_difference, tiny_config

pytestmark = pytest.mark.slow
DAY = "2026-11-01"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    rows = synthetic_corpus(240, LABELS, seed=5)
    return root, rows


def launch(root, rows, run_id: str, *, nproc: int, batch_size: int, extra_env=None, launcher=(), **train):
    """Write a config and upstream manifests for `run_id`, then run the trainer under torchrun. Each run has a store
    of its own: in a shared one, a snapshot no round has trained yet joins the next round as new rows."""
    root = root / run_id
    root.mkdir(exist_ok=True)
    config = tiny_config(root, batch_size=batch_size, warm_start=False, dropout=0.0, **train)
    store = ArtifactStore(config.artifact_root)
    fake_upstream(config, store, run_id, DAY, [dict(row) for row in rows])
    config_path = root / f"{run_id}.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    command = [sys.executable, "-m", "torch.distributed.run", *(launcher or ["--standalone", f"--nproc-per-node={nproc}"]),
               "-m", "tasks.train", "--config", str(config_path), "--run-id", run_id,
               "--input", "augment", "--input", "clean", "--logical-date", DAY]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FRESHET_THREADS_PER_RANK": "1", **(extra_env or {})}
    return command, env, store


def run_to_end(command, env) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def weights(store: ArtifactStore, run_id: str) -> dict[str, torch.Tensor]:
    manifest = read_manifest(store, run_id, "train")
    return load_file(store.local_path(manifest.output("model").uri) / "model.safetensors")


def test_two_gloo_ranks_match_one_process_with_the_global_batch(workspace):
    root, rows = workspace
    settings = {"optimizer": "sgd", "learning_rate": 0.1, "epochs": 1, "checkpoint_every_steps": 1000}
    single = launch(root, rows, "single", nproc=1, batch_size=16, **settings)
    ddp = launch(root, rows, "ddp", nproc=2, batch_size=8, **settings)
    run_to_end(*single[:2])
    run_to_end(*ddp[:2])
    assert read_manifest(ddp[2], "ddp", "train").metrics["world_size"] == 2
    assert read_manifest(ddp[2], "ddp", "train").metrics["steps"] == read_manifest(single[2], "single", "train").metrics["steps"]
    difference = max_difference(weights(single[2], "single"), weights(ddp[2], "ddp"))
    print(f"max |param(2 ranks x 8) - param(1 process x 16)| after one epoch of SGD: {difference:.2e}")
    assert difference < 1e-5


def test_a_killed_rank_resumes_from_the_checkpoint_without_skipping_or_repeating(workspace):
    root, rows = workspace
    settings = {"optimizer": "adamw", "learning_rate": 5e-3, "epochs": 2, "checkpoint_every_steps": 4}
    clean = launch(root, rows, "uninterrupted", nproc=2, batch_size=8, **settings)
    faulty = launch(root, rows, "faulted", nproc=2, batch_size=8, launcher=[
        "--standalone", "--nproc-per-node=2", "--max-restarts=1"], extra_env={"FRESHET_FAULT_AT_STEP": "7"}, **settings)
    run_to_end(*clean[:2])
    result = run_to_end(*faulty[:2])
    assert "fault drill: rank 1 exits hard at step 7" in result.stdout + result.stderr
    resumed = read_manifest(faulty[2], "faulted", "train").metrics
    reference = read_manifest(clean[2], "uninterrupted", "train").metrics
    assert resumed["resumed_from_step"] == 4
    assert resumed["steps"] == reference["steps"]
    assert resumed["samples_seen"] == reference["samples_seen"]
    assert resumed["order_digest"] == reference["order_digest"]
    assert max_difference(weights(clean[2], "uninterrupted"), weights(faulty[2], "faulted")) < 1e-5


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_torchrun_agents_rendezvous_over_loopback(workspace):
    root, rows = workspace
    launcher = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--rdzv-id=multinode-test"]
    command, env, store = launch(root, rows, "multinode", nproc=1, batch_size=8, launcher=launcher,
                                 epochs=1, checkpoint_every_steps=1000)
    agents = [subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(output[-2000:] for output in outputs)
    manifest = read_manifest(store, "multinode", "train")
    assert manifest.metrics["world_size"] == 2 and manifest.metrics["steps"] > 0
