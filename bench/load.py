"""wrk as the load generator: request scripts, one timed run, and its own CPU cost.

wrk runs on the same 2 cores as the servers, so every run also records how much CPU wrk
itself used (from the kernel's accounting of finished children): if that approached the
cores wrk was given, the generator, not the server, would be the limit.
"""

from __future__ import annotations

import re
import resource
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

IRIS_RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
BATCH_ROWS = 1000
FEEDBACK_IDS = 2000  # predictions made up front with these request ids, for /feedback

_HEADERS = 'wrk.headers["Content-Type"] = "application/json"\n'


def _body(payload: object) -> str:
    return orjson.dumps(payload).decode()


def batch_payload() -> dict:
    """1000 distinct iris-like rows, so no layer can cache its way through."""
    return {
        "instances": [
            {k: round(v + (i % 50) * 0.01, 2) for k, v in IRIS_RECORD.items()}
            for i in range(BATCH_ROWS)
        ]
    }


def oip_rows() -> list[list[float]]:
    """The batch's rows as one FP64 tensor in signature order (iris's is the record's)."""
    return [list(row.values()) for row in batch_payload()["instances"]]


def oip_json_body() -> dict:
    rows = oip_rows()
    tensor = {"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP64"}
    return {"inputs": [{**tensor, "data": [v for row in rows for v in row]}]}


def oip_binary_body() -> tuple[bytes, int]:
    """The same tensor in the binary extension, outputs asked for in binary too, as
    tritonclient sends by default: (body, length of its JSON header)."""
    rows = oip_rows()
    data = b"".join(struct.pack(f"<{len(row)}d", *row) for row in rows)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [len(rows), len(rows[0])],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + data, len(header)


SCRIPTS: dict[str, str] = {
    "predict": f"wrk.method = \"POST\"\nwrk.body = '{_body(IRIS_RECORD)}'\n{_HEADERS}",
    "batch": f"wrk.method = \"POST\"\nwrk.body = '{_body(batch_payload())}'\n{_HEADERS}",
    "oip-json": f"wrk.method = \"POST\"\nwrk.body = '{_body(oip_json_body())}'\n{_HEADERS}",
    # a new user per request from 10,000: the sticky hash runs on every request
    "sticky": f"""wrk.method = "POST"
wrk.body = '{_body(IRIS_RECORD)}'
{_HEADERS}
request = function()
  wrk.headers["X-User-Id"] = "user-" .. math.random(1, 10000)
  return wrk.format()
end
""",
    # cycles over predictions made before the run (see FEEDBACK_IDS)
    "feedback": f"""counter = 0
{_HEADERS}
request = function()
  counter = counter + 1
  local id = "bench-" .. (counter % {FEEDBACK_IDS})
  return wrk.format("POST", nil, nil, '{{"request_id": "' .. id .. '", "label": "setosa"}}')
end
""",
}


@dataclass
class Run:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    generator_cpu: float  # cores wrk used on average during the run
    requests: int = 0  # completed in the run, as wrk counts them
    seconds: float = 0.0  # the run's wall time
    server_cpu: dict[str, float] = field(default_factory=dict)  # CPU s by group (bench/cpu.py)

    @property
    def cpu_us(self) -> float:
        """Server CPU microseconds per request served (NaN when not measured)."""
        total = sum(self.server_cpu.values())
        return total / self.requests * 1e6 if self.server_cpu and self.requests else float("nan")

    @property
    def server_cores(self) -> float:
        return sum(self.server_cpu.values()) / self.seconds if self.seconds else float("nan")


def write_scripts(directory: Path) -> dict[str, Path]:
    paths = {}
    for name, text in SCRIPTS.items():
        paths[name] = directory / f"{name}.lua"
        paths[name].write_text(text)
    # raw bytes do not fit a Lua string literal: the script reads its body from a file
    body, header_length = oip_binary_body()
    (directory / "oip-binary.body").write_bytes(body)
    paths["oip-binary"] = directory / "oip-binary.lua"
    paths["oip-binary"].write_text(
        f"""wrk.method = "POST"
local f = assert(io.open("{directory / "oip-binary.body"}", "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = "{header_length}"
"""
    )
    return paths


def _millis(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, script: Path, connections: int, seconds: float) -> Run:
    """One wrk run; latency from its --latency distribution, errors = non-2xx + socket."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket:
        errors += sum(int(n) for n in socket.groups())
    return Run(
        requests_per_s=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        p50_ms=_millis(percentiles["50"]),
        p99_ms=_millis(percentiles["99"]),
        errors=errors,
        generator_cpu=cpu / wall,
        requests=int(re.search(r"(\d+) requests in", out).group(1)),
        seconds=wall,
    )


def wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return out.split()[1] if out else "?"
