"""``mini-paged-attn serve --tensor-parallel-size 2`` on the CPU: the server
process and its worker answer with the greedy text of one process, and
SIGINT stops the server and its worker."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from mini_paged_attn import LLM, SamplingParams
from text_checkpoint import make_text_checkpoint

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def test_serve_tensor_parallel(tmp_path):
    path = make_text_checkpoint(tmp_path)
    prompt = "The quick brown"
    expected = LLM(path, device="cpu").generate(
        prompt, SamplingParams(temperature=0, max_tokens=8))[0].outputs[0].text
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mini_paged_attn", "serve", path, "--device", "cpu", "--port",
         str(port), "--tensor-parallel-size", "2", "--kv-cache-memory-gb", "0.01"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert server.poll() is None, server.stderr.read().decode()
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        got = httpx.post(f"{base}/v1/completions", json={
            "model": os.path.basename(path), "prompt": prompt, "max_tokens": 8,
            "temperature": 0}, timeout=60).json()
        assert got["choices"][0]["text"] == expected
        workers = _children(server.pid)
        assert workers  # the spawned worker (and multiprocessing's resource tracker)
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0, server.stderr.read().decode()
    for pid in workers:
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"process {pid} outlived the server")
