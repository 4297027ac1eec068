"""A fair share of a busy machine: indexing speed alone, and beside other work on the same cores.

    python bench/contention.py [--photos 300]

Indexes --photos Caltech test photos into a fresh index: alone; while a second `diffsearch index`
runs on other photos; while `diffsearch serve` answers 8 clients; while a plain CPU hog
(`python -c "while True: pass"`) runs. Reports each img/s (the embedding stage, as `index`
prints it) and its fraction of the solo run; a fair share of 2 cores beside one busy process is 0.5.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_line  # noqa: E402
from bench.quality import CALTECH, SPLITS  # noqa: E402

CLI = [sys.executable, "-m", "api"]


def photo_set(folder: Path, lines: list[str]) -> Path:
    for line in lines:
        target = folder / line.replace("/", "__")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CALTECH / line, target)
    return folder


def index_speed(photos: Path, index_dir: Path) -> float:
    shutil.rmtree(index_dir, ignore_errors=True)
    out = subprocess.run([*CLI, "index", str(photos), "--index", str(index_dir)], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"\(([\d.]+) img/s\)", out).group(1))


def busy_server(index_dir: Path, photo: bytes, stop: threading.Event) -> subprocess.Popen:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*CLI, "serve", "--index", str(index_dir), "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            httpx.get(f"{url}/health", timeout=2)
            break
        except httpx.HTTPError:
            time.sleep(0.3)

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                http.post(f"{url}/search", files={"file": ("q.jpg", photo, "image/jpeg")})

    for _ in range(8):
        threading.Thread(target=client, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "contention.md")
    args = parser.parse_args()
    lines = (SPLITS / "test.txt").read_text().split()
    work = Path(tempfile.mkdtemp(prefix="diffsearch-contention-"))
    mine = photo_set(work / "mine", lines[: args.photos])
    other = photo_set(work / "other", lines[args.photos : 2 * args.photos])
    target = work / "index"
    header = f"{cpu_line()}. Nothing else CPU-heavy was running.\n"
    solo = index_speed(mine, target)
    rows = [("alone", solo)]

    other_index = subprocess.Popen([*CLI, "index", str(other), "--index", str(work / "other-index")], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(6)  # past its model loading: it is embedding when ours starts
    rows.append(("beside a second `diffsearch index`", index_speed(mine, target)))
    other_index.wait()

    stop = threading.Event()
    server = busy_server(work / "other-index", (CALTECH / lines[0]).read_bytes(), stop)
    rows.append(("beside `diffsearch serve` answering 8 clients", index_speed(mine, target)))
    stop.set()
    server.terminate()
    server.wait()

    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    rows.append(("beside a CPU hog (one busy core)", index_speed(mine, target)))
    hog.kill()

    report = [header, f"`diffsearch index` of {args.photos} photos (default settings)\n", "| condition | img/s | fraction of alone |", "|---|---|---|"]
    report += [f"| {name} | {speed:.1f} | {speed / solo:.2f} |" for name, speed in rows]
    args.out.write_text("# Indexing speed on a busy machine\n\n" + "\n".join(report) + "\n")
    print("\n".join(report))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
