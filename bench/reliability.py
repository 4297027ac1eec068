"""Reliability audit, rerunnable: kill -9 at random moments of `diffsearch index`, then bad HTTP input.

    python bench/reliability.py [--kills 20] [--photos 200] [--seed 0]

1. Crash loop: --kills times, start `diffsearch index` on a folder of generated photos and kill -9
   it after a random delay (model loading, scanning, embedding, checkpoint saves are all hit).
   After every kill the index must be consistent (each row has a vector and each vector a row,
   no path twice). A last run finishes the work: every photo indexed once, nothing orphaned.
2. HTTP: a list of hostile or broken requests against the served index; none may get a 5xx,
   and every error body must carry a message.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from indexer.storage import PhotoIndex  # noqa: E402
from indexer.storage.rows import Photo  # noqa: E402


def make_photos(folder: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        yy, xx = np.mgrid[0:96, 0:128] / 128
        channels = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
        Image.fromarray(((np.stack(channels, 2) + 1) * 127.5).astype(np.uint8)).save(folder / f"p{i:04d}.jpg", quality=90)


def state(index_dir: Path) -> dict[str, int | bool]:
    if not (index_dir / "index.db").exists():
        return {"rows": 0, "vectors": 0, "duplicates": 0, "ok": True}
    index = PhotoIndex.open(index_dir)
    with Session(index.engine) as session:
        rows = session.scalar(select(func.count()).select_from(Photo)) or 0
        distinct = session.scalar(select(func.count(func.distinct(Photo.path)))) or 0
    report = index.consistency(thorough=True)
    index.close()
    return {"rows": rows, "vectors": report.vectors, "duplicates": rows - distinct, "orphans": len(report.vectors_without_rows), "ok": report.ok}


def crash_loop(kills: int, photos: int, seed: int, work: Path) -> bool:
    folder, index_dir = work / "photos", work / "index"
    make_photos(folder, photos, seed)
    rng = random.Random(seed)
    cmd = [sys.executable, "-m", "api", "index", str(folder), "--index", str(index_dir), "--batch-size", "8", "--checkpoint-every", "8"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"## Crash loop: {kills} x kill -9 of `diffsearch index` on {photos} photos\n")
    print("| kill | after s | rows | vectors | duplicated | orphans | consistent |")
    print("|---|---|---|---|---|---|---|")
    healthy = True
    for n in range(1, kills + 1):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(1.0, 9.0)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        s = state(index_dir)
        healthy &= bool(s["ok"]) and s["duplicates"] == 0
        print(f"| {n} | {delay:.1f} | {s['rows']} | {s['vectors']} | {s['duplicates']} | {s.get('orphans', 0)} | {s['ok']} |", flush=True)
    finish = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    s = state(index_dir)
    complete = finish.returncode == 0 and s["rows"] == s["vectors"] == photos and s["duplicates"] == 0 and s["ok"]
    print(f"\nfinal run: exit {finish.returncode}; {s['rows']} rows = {s['vectors']} vectors for {photos} photos, "
          f"{s['duplicates']} duplicated, {s.get('orphans', 0)} orphans, lost {photos - s['rows']}\n")  # fmt: skip
    return healthy and complete


def http_audit(index_dir: Path) -> bool:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from indexer.settings import Settings

    photo = next((ROOT / "data" / "samples").glob("*.jpg")).read_bytes()
    cases = [
        ("no file", "POST", "/search", {}),
        ("empty file", "POST", "/search", {"files": {"file": ("q.jpg", b"", "image/jpeg")}}),
        ("text as photo", "POST", "/search", {"files": {"file": ("q.jpg", b"hello", "image/jpeg")}}),
        ("truncated JPEG", "POST", "/search", {"files": {"file": ("q.jpg", photo[: len(photo) // 3], "image/jpeg")}}),
        ("over the upload limit", "POST", "/search", {"files": {"file": ("q.jpg", b"\xff\xd8" + b"0" * (3 << 20), "image/jpeg")}}),
        ("k=0", "POST", "/search?k=0", {"files": {"file": ("q.jpg", photo, "image/jpeg")}}),
        ("k huge", "POST", "/search?k=99999999", {"files": {"file": ("q.jpg", photo, "image/jpeg")}}),
        ("negative distance", "POST", "/search?max_distance=-1", {"files": {"file": ("q.jpg", photo, "image/jpeg")}}),
        ("NaN distance", "POST", "/search?max_distance=nan", {"files": {"file": ("q.jpg", photo, "image/jpeg")}}),
        ("prefix 5000 chars", "POST", "/search?path_prefix=" + "a" * 5000, {"files": {"file": ("q.jpg", photo, "image/jpeg")}}),
        ("id 2^63", "GET", f"/search/similar/{2**63}", {}),
        ("id -1", "GET", "/images/-1", {}),
        ("id text", "GET", "/images/abc", {}),
        ("unknown id", "GET", "/images/999999", {}),
        ("traversal", "GET", "/images/..%2F..%2Fetc%2Fpasswd", {}),
        ("thumbnail size 0", "GET", "/images/1/thumbnail?size=0", {}),
        ("thumbnail size huge", "GET", "/images/1/thumbnail?size=99999", {}),
        ("foreign Host header", "GET", "/health", {"headers": {"host": "attacker.example"}}),
        ("wrong method", "DELETE", "/search", {}),
        ("unknown route", "GET", "/admin", {}),
    ]
    settings = Settings.load(env={}, index_dir=index_dir, max_upload_mb=2.0)
    print("## HTTP: hostile and broken requests\n")
    print("| request | status | message |")
    print("|---|---|---|")
    clean = True
    with TestClient(create_app(settings), base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        for name, method, url, kwargs in cases:
            r = client.request(method, url, **kwargs)
            try:
                detail = r.json().get("detail")
            except (ValueError, AttributeError):
                detail = r.text
            message = json.dumps(detail)[:70] if detail else ""
            clean &= 400 <= r.status_code < 500 and bool(message)
            print(f"| {name} | {r.status_code} | {message} |", flush=True)
    print(f"\n{'no' if clean else 'SOME'} server errors; every error has a message: {clean}\n")
    return clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="diffsearch-reliability-") as tmp:
        work = Path(tmp)
        crashes_ok = crash_loop(args.kills, args.photos, args.seed, work)
        http_ok = http_audit(work / "index")
    print(f"result: crash loop {'PASS' if crashes_ok else 'FAIL'}, HTTP {'PASS' if http_ok else 'FAIL'}")
    sys.exit(0 if crashes_ok and http_ok else 1)


if __name__ == "__main__":
    main()
