"""`freshet serve` vs stock `mlflow models serve` on the same registered version: requests/s and p50/p99 latency
at 1, 4 and 16 concurrent clients, one text per request (`POST /invocations`, MLflow's `dataframe_split`),
same machine, same client, one run. Both servers run, each in its own process, and take turns: each level
is measured `--rounds` times per server, alternating, while the other idles, and the best round of each is
kept (the machine may be shared). The client is this process (threads with keep-alive `http.client`
connections), the same for both.

The model: `--config F` serves that pipeline's `champion` (e.g. the demo's registry after `make demo`);
without it, a stand-in for the demo's champion is built and registered in a throwaway SQLite registry:
MiniLM-L6 with a 10-label head, cut to the 3-layer student the compress step distils (no training:
the same shapes, so the same cost), exported to ONNX and quantized to int8, logged exactly as register
logs a version (`distilled-onnx-int8`). MLflow serves it with `--env-manager local`.

Goal (issue 15): at least 2x MLflow's requests/s at 1 client and 4x at 16 clients, and p99 at 1 client
under 25 ms, on 2 CPU cores.

    python bench/serve.py [--config configs/demo.yaml] [--seconds 5] [--rounds 2] [--clients 1,4,16]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LABELS = ["libs", "libdevel", "python", "doc", "perl", "devel", "utils", "haskell", "net", "rust"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------------------------------ the model


def build_registry(directory: Path, model_name: str = "bench-serve"):
    """A throwaway registry holding one `distilled-onnx-int8` version of MiniLM's 3-layer student, as champion."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from tasks import model_registry
    from tasks.config import PipelineConfig, TrainConfig
    from tasks.models.build import build_model, load_tokenizer
    from tasks.models.compression import build_student, export_onnx, quantize_onnx_int8
    from tasks.register import serving_requirements
    from tasks.tracking import configure

    config = PipelineConfig.model_validate({
        "name": "bench_serve", "labels": LABELS, "artifact_root": str(directory / "artifacts"),
        "mlflow": {"tracking_uri": f"sqlite:///{directory}/mlflow.db", "model_name": model_name,
                   "artifact_location": str(directory / "mlartifacts"), "experiment": "bench-serve"},
        "crawl": {"sources": [{"name": "unused", "url": "http://127.0.0.1:9/"}]},
        "train": {"model": "minilm", "max_length": 48},
    })
    teacher = build_model(TrainConfig(model="minilm"), LABELS)
    tokenizer = load_tokenizer()
    hf_dir = directory / "model"
    teacher.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    student = build_student(teacher, 3)
    onnx = quantize_onnx_int8(export_onnx(student, tokenizer, directory / "student.onnx"),
                              directory / "student.int8.onnx")
    example = pd.DataFrame({"text": ["a sample text to classify", "another one"]})
    signature = infer_signature(example, pd.DataFrame({"label": [LABELS[0]] * 2, "probability": [0.5, 0.5]}))
    experiment_id = configure(config)
    with mlflow.start_run(experiment_id=experiment_id, run_name="bench-serve"):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(REPO / "tasks" / "models" / "serving.py"),
            artifacts={model_registry.HF_ARTIFACT: str(hf_dir), "onnx_model": str(onnx)},
            code_paths=[str(REPO / "tasks")], model_config={"variant": "distilled-onnx-int8", "max_length": 48},
            signature=signature, input_example=example, pip_requirements=serving_requirements())
    version = mlflow.register_model(info.model_uri, config.mlflow.model_name)
    client = model_registry.client(config)
    client.set_registered_model_alias(config.mlflow.model_name, "champion", version.version)
    client.set_model_version_tag(config.mlflow.model_name, version.version, "freshet.serving_variant",
                                 "distilled-onnx-int8")
    path = directory / "bench.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config.to_dict()))
    return config, path, str(version.version)


def model_alone_ms(config, version: str, texts: list[str]) -> float:
    """Median ms of one model call on one text, in this process: what the servers add is the rest."""
    import mlflow

    from tasks import model_registry
    from tasks.serve.predictor import Predictor

    model_registry.client(config)
    predictor = Predictor(mlflow.pyfunc.load_model(f"models:/{config.mlflow.model_name}/{version}"))
    for text in texts[:20]:
        predictor.predict([text])
    timings = []
    for text in texts[:200]:
        started = time.perf_counter()
        predictor.predict([text])
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.median(timings))


# ------------------------------------------------------------------------------------------ the client


@dataclass
class Level:
    clients: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def body_for(text: str) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["text"], "data": [[text]]}}).encode()


def load(port: int, texts: list[str], clients: int, seconds: float, warmup_requests: int = 20) -> Level:
    bodies = [body_for(text) for text in texts]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start_line = threading.Barrier(clients + 1)
    window: dict[str, float] = {}

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}

        def one(body: bytes) -> bool:
            connection.request("POST", "/invocations", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status == 200

        for count in range(warmup_requests):
            one(bodies[(index + count) % len(bodies)])
        start_line.wait()
        count = 0
        while time.perf_counter() < window["end"]:
            started = time.perf_counter()
            ok = one(bodies[(index * 31 + count) % len(bodies)])
            latencies[index].append((time.perf_counter() - started) * 1000)
            errors[index] += not ok
            count += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(clients)]
    for thread in threads:
        thread.start()
    window["end"] = float("inf")
    start_line.wait()
    began = time.perf_counter()
    window["end"] = began + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = [value for values in latencies for value in values]
    return Level(clients, len(flat), sum(errors), elapsed, flat)


# ------------------------------------------------------------------------------------------ the servers


def wait_ready(port: int, process: subprocess.Popen, path: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server on {port} not ready after {timeout_s}s")


def start(name: str, command: list[str], port: int, ready_path: str, env: dict[str, str],
          log_dir: Path) -> subprocess.Popen:
    with open(log_dir / f"{name}.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    began = time.monotonic()
    try:
        wait_ready(port, process, ready_path)
    except Exception:
        stop(process)
        raise
    print(f"  {name}: ready after {time.monotonic() - began:.0f}s", flush=True)
    return process


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def measure(servers: dict[str, int], texts: list[str], levels: list[int], seconds: float,
            rounds: int) -> dict[str, dict[int, Level]]:
    """Each level, `rounds` times, the servers taking turns (the other one idles), so that a change in what
    else the machine runs hits both; the best round of each server is kept."""
    best: dict[str, dict[int, Level]] = {name: {} for name in servers}
    for clients in levels:
        for round_index in range(rounds):
            order = list(servers) if round_index % 2 == 0 else list(reversed(servers))
            for name in order:
                level = load(servers[name], texts, clients, seconds)
                print(f"  {name:<20} {clients:>2} clients {level.rps:7.1f} req/s  p50 {level.percentile(50):6.1f} ms  "
                      f"p99 {level.percentile(99):6.1f} ms  errors {level.errors}", flush=True)
                kept = best[name].get(clients)
                if kept is None or level.rps > kept.rps:
                    best[name][clients] = level
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="serve this pipeline's champion (default: build a stand-in)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level and round")
    parser.add_argument("--rounds", type=int, default=2, help="turns per level and server; the best is kept")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--model-threads", type=int, default=None,
                        help="threads per model call, the same in both servers (FRESHET_THREADS_PER_RANK); "
                             "default: what freshet serve picks, the cores less one")
    parser.add_argument("--work", default=None, help="where the stand-in registry goes (default: a temp dir)")
    args = parser.parse_args()
    levels = [int(value) for value in args.clients.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    cores = len(os.sched_getaffinity(0))
    # The model's own knob (tasks.training.runtime.threads_per_rank), read by the pyfunc in both servers.
    threads = args.model_threads or max(1, cores - 1)
    os.environ["FRESHET_THREADS_PER_RANK"] = str(threads)

    from tasks import model_registry
    from tasks.config import load_config
    from tests.corpus_support import synthetic_corpus

    work = Path(args.work or tempfile.mkdtemp(prefix="freshet-bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    if args.config:
        config, config_path = load_config(args.config), Path(args.config)
        champion = model_registry.version_by_alias(config, "champion")
        if champion is None:
            raise SystemExit(f"{config.mlflow.model_name} has no champion in {config.mlflow.tracking_uri}")
        version = str(champion.version)
    else:
        print("building the stand-in model (MiniLM -> 3-layer student -> ONNX int8) ...", flush=True)
        config, config_path, version = build_registry(work)
    variant = model_registry.client(config).get_model_version(config.mlflow.model_name, version).tags.get(
        "freshet.serving_variant", "?")
    texts = [row["text"] for row in synthetic_corpus(400, LABELS, seed=3)]
    alone = model_alone_ms(config, version, texts)
    print(f"model {config.mlflow.model_name} version {version} ({variant}); the model alone: {alone:.2f} ms per text; "
          f"{cores} CPU cores, {threads} thread(s) per model call in both servers; best of {args.rounds} x "
          f"{args.seconds:g}s per level",
          flush=True)

    # mlflow models serve execs `uvicorn` by name: the venv's bin first on PATH.
    env = dict(os.environ, MLFLOW_TRACKING_URI=config.mlflow.tracking_uri,
               MLFLOW_REGISTRY_URI=config.mlflow.tracking_uri,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    freshet_port, mlflow_port = free_port(), free_port()
    commands = {
        # As deployed: the prediction log on (MLflow's server keeps none).
        "freshet serve": ([sys.executable, "-m", "tasks.serve", "--config", str(config_path), "--port",
                           str(freshet_port)], freshet_port, "/ready"),
        "mlflow models serve": ([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                                 f"models:/{config.mlflow.model_name}/{version}", "--env-manager", "local",
                                 "-h", "127.0.0.1", "-p", str(mlflow_port)], mlflow_port, "/ping"),
    }
    processes = []
    try:
        for name, (command, port, ready_path) in commands.items():
            processes.append(start(name, command, port, ready_path, env, work))
        results = measure({name: port for name, (_, port, _) in commands.items()}, texts, levels, args.seconds,
                          args.rounds)
    finally:
        for process in processes:
            stop(process)
    freshet, stock = results["freshet serve"], results["mlflow models serve"]

    print()
    print("| clients | freshet req/s | p50 ms | p99 ms | mlflow req/s | p50 ms | p99 ms | req/s ratio "
          "| p99 ratio (mlflow/freshet) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for clients in levels:
        ours, theirs = freshet[clients], stock[clients]
        print(f"| {clients} | {ours.rps:.0f} | {ours.percentile(50):.1f} | {ours.percentile(99):.1f} | "
              f"{theirs.rps:.0f} | "
              f"{theirs.percentile(50):.1f} | {theirs.percentile(99):.1f} | {ours.rps / theirs.rps:.2f}x | "
              f"{theirs.percentile(99) / ours.percentile(99):.2f}x |")
    errors = sum(level.errors for level in (*freshet.values(), *stock.values()))
    goals = []
    if 1 in levels:
        goals.append(("req/s at 1 client >= 2x MLflow", freshet[1].rps >= 2 * stock[1].rps))
        goals.append(("p99 at 1 client < 25 ms", freshet[1].percentile(99) < 25))
    if 16 in levels:
        goals.append(("req/s at 16 clients >= 4x MLflow", freshet[16].rps >= 4 * stock[16].rps))
    print("\ngoals: " + "; ".join(f"{name}: {'met' if met else 'MISSED'}" for name, met in goals)
          + f"; failed requests: {errors}; took {time.monotonic() - began:.0f}s")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
