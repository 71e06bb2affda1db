"""The limit: ``bench/limit`` (Rust, cryptoki), built with cargo and kept running as a server
that measures on request."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import KEY_FOR, LIMIT_BIN, LIMIT_DIR, PAYLOAD, Slice
from .report import say


def build_limit() -> Path:
    cargo = shutil.which("cargo")
    if cargo is None:
        sys.exit("cargo not found: the limit (bench/limit) is a Rust program; install rustup")
    say("building bench/limit (cargo build --release) ...")
    subprocess.run(
        [
            cargo,
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--manifest-path",
            str(LIMIT_DIR / "Cargo.toml"),
        ],
        check=True,
    )
    return LIMIT_BIN


class LimitServer:
    """``bench/limit --serve``: the Rust loop, kept logged in, measuring on request."""

    def __init__(
        self, tok: Any, module: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        """On ``tok``'s token, through ``module`` (default the token's own module), with
        ``env`` added to the environment."""
        self.proc = subprocess.Popen(
            [
                str(LIMIT_BIN),
                module or tok.module_path,
                tok.label,
                tok.pin,
                "--serve",
                str(len(PAYLOAD)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.last_cpu = 0.0  # CPU seconds the limit's process used in the last measurement
        hello = self._read()
        if not hello.get("ready"):
            raise RuntimeError(f"bench/limit --serve: {hello}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench/limit ended (exit code {self.proc.wait()})")
        return dict(json.loads(line))

    def start(self, alg: str, threads: int, seconds: float, calls: int = 2) -> None:
        """Starts a measurement (``calls`` PKCS#11 calls per signature: 2, or cryptoki's 3);
        :meth:`result` waits for it."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{KEY_FOR[alg]} {alg} {threads} {seconds:.6f} {calls}\n")
        self.proc.stdin.flush()

    def result(self) -> Slice:
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"bench/limit: {answer['error']}")
        self.last_cpu = float(answer.get("cpu", 0.0))
        return int(answer["ops"]), float(answer["seconds"])

    def slice(self, alg: str, threads: int, seconds: float, calls: int = 2) -> Slice:
        self.start(alg, threads, seconds, calls)
        return self.result()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
