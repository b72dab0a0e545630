"""Start stage servers as local processes (tests, benchmarks, demos): ``python -m prismn.runtime stage serve``.

Each process is a real, separate peer talking TCP on loopback; :class:`LocalStage` waits for its
"listening on HOST:PORT" line and always cleans up (terminate, then kill).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from prismn.runtime import RuntimeStageError

READY = re.compile(r"listening on (\S+):")


class LocalStage:
    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None, timeout_s: float = 180.0,
                 threads: int | None = None):
        cmd = [sys.executable, "-m", "prismn.runtime", "stage", "serve", *args]
        e = dict(os.environ)
        e.update(env or {})
        e.setdefault("HF_HUB_OFFLINE", "1")
        e.setdefault("TOKENIZERS_PARALLELISM", "false")
        if threads:
            e["OMP_NUM_THREADS"] = str(threads)
            cmd += ["--threads", str(threads)]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                                     start_new_session=True)
        self.address = ""
        self.measurement: dict[str, Any] | None = None
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()
        if not self._ready.wait(timeout_s) or not self.address:
            tail = "\n".join(self.stderr_lines[-15:])
            self.stop()
            raise RuntimeStageError(f"stage process did not start ({' '.join(args)}):\n{tail}")

    def _pump_out(self) -> None:
        import json

        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            if line.startswith("{") and self.measurement is None:
                try:
                    self.measurement = json.loads(line)
                except ValueError:
                    pass
            m = READY.search(line)
            if m and not self.address:
                self.address = m.group(1)
                self._ready.set()
        self._ready.set()

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))
            if len(self.stderr_lines) > 2000:
                del self.stderr_lines[:1000]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> LocalStage:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_stages(arg_lists: Sequence[Sequence[str]], **kw: Any) -> list[LocalStage]:
    """Start several stage processes concurrently; stop them all if any fails."""
    out: list[LocalStage | None] = [None] * len(arg_lists)
    errors: list[BaseException] = []

    def one(i: int, args: Sequence[str]) -> None:
        try:
            out[i] = LocalStage(args, **kw)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i, a)) for i, a in enumerate(arg_lists)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for s in out:
            if s is not None:
                s.stop()
        raise errors[0]
    return [s for s in out if s is not None]


def stop_all(stages: Sequence[LocalStage]) -> None:
    for s in stages:
        s.stop()
    time.sleep(0)
