"""`prismn stage serve --bench-only`, `prismn model prepare`, `prismn generate`: outputs and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")


def run(*args, timeout=180, env=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


@pytest.mark.slow
def test_bench_only_prints_measurement_json(tiny):
    out = run("prismn", "stage", "serve", "--checkpoint", str(tiny["llama"][0]), "--layers", "2:5", "--bench-only",
              "--threads", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"model", "dtype", "device", "s_per_layer", "s_head", "s_embed"} <= set(m)
    assert m["dtype"] == "fp32" and m["device"] == "cpu" and m["layers"] == [2, 5] and m["s_per_layer"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, needle",
    [
        (["stage", "serve", "--checkpoint", "/nonexistent/ckpt", "--bench-only"], "not found"),
        (["stage", "serve", "--checkpoint", "{tiny}", "--layers", "4-2", "--bench-only"], "START:END"),
        (["stage", "serve", "--checkpoint", "{tiny}", "--layers", "2:9", "--bench-only"], "outside the model's 0:6"),
        (["stage", "serve", "--checkpoint", "{tiny}", "--dtype", "int3", "--bench-only"], "fp32, bf16 or fp16"),
        (["model", "prepare", "llama-405b"], "unknown model"),
        (["generate", "hi", "--peer", "a=127.0.0.1:1", "--ids"], "cannot reach peer at 127.0.0.1:1"),
        (["generate", "hi", "--peer", "nonsense"], "NAME=HOST:PORT"),
        (["generate", "hi"], "--plan"),
    ],
)
def test_user_errors_are_one_line(args, needle, tiny):
    args = [a.replace("{tiny}", str(tiny["llama"][0])) for a in args]
    out = run("prismn.runtime", *args)
    assert out.returncode == 2, (out.stdout, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    err_lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and needle in err_lines[0], out.stderr[-2000:]


def test_rest_of_prismn_imports_without_torch():
    code = ("import sys, prismn.wire, prismn.transport, prismn.runtime, prismn.runtime.sessions, "
            "prismn.runtime.client, prismn.cli.runtime_cmds\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
