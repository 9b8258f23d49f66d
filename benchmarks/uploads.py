"""Upload benchmark: a 2 GB video sent as a resumable upload (tus, 8 MiB PATCHes, the client of
`oneiro submit`) to the API under gunicorn on local storage, then submitted as a job; beside it,
the baseline, a direct multipart POST /v1/jobs of a 40 MB video, on the same server in the same
run. Both videos are a short clip padded with an MP4 `free` box, so the job checks read a real
video header.

    .venv/bin/python benchmarks/uploads.py [--gb 2] [--baseline-mb 40]

Prints the upload's throughput (MB/s) and, for each, the peak RSS of the API's worker processes
(sampled every 20 ms from /proc) over their RSS before the request: what holding the input cost.
The direct POST holds its file in memory (werkzeug's multipart parser, then the checks), so its
growth is about the file's size; the upload streams through 1 MiB reads, so its growth stays
flat however large the upload. The ratio is upload growth / direct growth.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import requests  # noqa: E402
from service import database, redis_server, service  # noqa: E402

from client.api import Client  # noqa: E402
from client.uploads import send_upload  # noqa: E402
from tests.utils.video import write_padded_clip  # noqa: E402

MB = 1_000_000
PARAMS = '{"steps": 1, "octaves": 1}'


def children(parent: int) -> list[int]:
    """The pids whose parent is `parent` (gunicorn's workers under its master)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def rss(pid: int) -> int:
    """Resident bytes of `pid` (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextmanager
def peak_growth(master: int) -> Iterator[dict[str, int]]:
    """The largest growth of any API worker's RSS over its RSS at the start, while inside."""
    workers = children(master)
    start = {pid: rss(pid) for pid in workers}
    peak = dict(start)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in workers:
                peak[pid] = max(peak[pid], rss(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result: dict[str, int] = {}
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        grown = max(workers, key=lambda pid: peak[pid] - start[pid])
        result.update(growth=peak[grown] - start[grown], peak=peak[grown])


def gunicorn_master(bind: str) -> int:
    """The pid of the gunicorn master serving `bind` (the benchmark started one)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"gunicorn" in part for part in command) and bind.encode() in command:
                return int(entry.name)
    raise RuntimeError(f"no gunicorn serving {bind}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=2.0, help="size of the upload, GB")
    parser.add_argument("--baseline-mb", type=float, default=40.0, help="the direct POST, MB")
    args = parser.parse_args()
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        big, small = tmp / "big.mp4", tmp / "small.mp4"
        write_padded_clip(big, int(args.gb * 1e9), size=(96, 64), frames=3, audio=False)
        write_padded_clip(small, int(args.baseline_mb * MB), size=(96, 64), frames=3, audio=False)
        with (
            database() as database_url,
            redis_server(tmp) as redis_url,
            service(database_url, redis_url, tmp) as running,
        ):
            master = gunicorn_master(running.url.removeprefix("http://"))
            headers = {"Authorization": f"Bearer {running.key}"}
            # Warm every worker (imports on first request) before measuring.
            for _ in range(6):
                requests.get(f"{running.url}/v1/presets", headers=headers, timeout=30)

            with peak_growth(master) as direct, small.open("rb") as file:
                began = time.perf_counter()
                answer = requests.post(
                    f"{running.url}/v1/jobs",
                    headers=headers,
                    files={"video": ("small.mp4", file), "params": (None, PARAMS)},
                    timeout=600,
                )
                direct_s = time.perf_counter() - began
            assert answer.status_code == 202, answer.text

            client = Client(running.url, running.key, timeout=600)
            with peak_growth(master) as upload:
                began = time.perf_counter()
                upload_id = send_upload(client, big, resume=False)
                upload_s = time.perf_counter() - began
                answer = client.request(
                    "POST",
                    "/v1/jobs",
                    files={"video": (None, f"upload:{upload_id}"), "params": (None, PARAMS)},
                )
                submit_s = time.perf_counter() - began - upload_s
            client.close()

    size = big.stat().st_size if big.exists() else int(args.gb * 1e9)
    print(
        f"direct POST  {args.baseline_mb:g} MB: {direct_s:6.2f} s "
        f"({args.baseline_mb / direct_s:6.1f} MB/s), API worker RSS "
        f"+{direct['growth'] / MB:7.1f} MB (peak {direct['peak'] / MB:.0f} MB)"
    )
    print(
        f"tus upload {size / 1e9:g} GB: {upload_s:6.2f} s ({size / MB / upload_s:6.1f} MB/s), "
        f"then the job from it in {submit_s:.2f} s; API worker RSS +{upload['growth'] / MB:7.1f} "
        f"MB (peak {upload['peak'] / MB:.0f} MB)"
    )
    print(
        f"ratio (upload RSS growth / direct RSS growth): "
        f"{upload['growth'] / max(direct['growth'], 1):.2f} for "
        f"{size / (args.baseline_mb * MB):.0f}x the bytes"
    )


if __name__ == "__main__":
    main()
