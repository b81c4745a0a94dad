"""RSS of the language server under hostile traffic (issue: hardening): start the real server (model loaded),
send N batches of 2,000 fuzzed messages from tests/server/test_transport.py's generator, print RSS after each.
Usage: python scripts/fuzz_rss.py [--batches 4] [--seed 7]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "server"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import test_transport as T  # noqa: E402


def rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    client = T.start()
    client.send(T.notification("initialized", {}))
    time.sleep(20)  # the model loads
    pid = client.proc.pid
    print(f"start: {rss_mb(pid)} MB", flush=True)
    n = 0
    for batch in range(a.batches):
        stream = []
        for _ in range(2000):
            n += 1
            stream.append(T._fuzz_message(rng, n)[0])
        stream.append(T.frame(T.code_action(f"end{batch}")))
        for i in range(0, len(stream), 50):
            client.write(b"".join(stream[i : i + 50]))
        client.responses_until(f"end{batch}", timeout=300)
        print(f"{n} messages: {rss_mb(pid)} MB", flush=True)
    client.close()


if __name__ == "__main__":
    main()
