"""Sixteen one-line idioms a newcomer tries first, each filled by ``diffucoder fill`` with its defaults.

Why: the first thing a new user sees is whether ``return <hole>`` in ``add`` comes back as ``a + b``. Each case is
a small file with one hole; the first line of the fill as ``fill --json`` shows it (``shown``) must be one of the
accepted answers. Runs the installed CLI, one process per case (what a user runs), and prints each fill and the
count. Usage:
    python scripts/idioms.py [--model default]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

M = "<|mask|>"
CASES = [
    ("def add(a, b):\n    return " + M + "\n\nprint(add(1, 2))\n", ["a + b"]),
    ("def is_even(n):\n    return n % 2 == " + M + "\n", ["0"]),
    ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        " + M + "\n", ["self.y = y"]),
    (
        "def main():\n    print('hi')\n\n\nif __name__ == " + M + "\n    main()\n",
        ['"__main__":', "'__main__':"],
    ),
    ("import os\n\n\ndef exists(path):\n    return " + M + "\n", ["os.path.exists(path)"]),
    (
        "import json\n\n\ndef load(path):\n    with open(path) as f:\n        return " + M + "\n",
        ["json.load(f)"],
    ),
    ("def reverse(s):\n    return " + M + "\n", ["s[::-1]"]),
    (
        "def total(xs):\n    result = 0\n    for x in xs:\n        " + M + "\n    return result\n",
        ["result += x"],
    ),
    ("def first(xs):\n    if not xs:\n        return None\n    return " + M + "\n", ["xs[0]"]),
    ("def square(x):\n    return " + M + "\n", ["x * x", "x ** 2", "x**2", "x*x"]),
    (
        "import sys\n\nif len(sys.argv) < 2:\n    print('usage: prog FILE')\n    " + M + "\n",
        ["sys.exit(1)", "sys.exit(2)", "exit(1)"],
    ),
    ("def maximum(a, b):\n    if a > b:\n        return a\n    " + M + "\n", ["return b"]),
    ("def count(xs):\n    return " + M + "\n", ["len(xs)"]),
    (
        "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        "
        + M
        + "\n",
        ["self.items.append(item)"],
    ),
    ("def mean(xs):\n    return sum(xs) / " + M + "\n", ["len(xs)"]),
    ("import re\n\n\ndef words(text):\n    return re." + M + "(r'\\w+', text)\n", ["findall"]),
]


def first_line(source: str, model: str) -> str:
    cli = Path(sys.executable).with_name("diffucoder")
    args = [str(cli), "fill", "-", "--json"] + (["--model", model] if model != "default" else [])
    run = subprocess.run(args, input=source, capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        return f"<error: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}>"
    hole = json.loads(run.stdout)["holes"][0]
    return hole.get("shown", hole["text"]).lstrip("\n").split("\n")[0].strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="as fill's --model (default: the bundled model)")
    args = parser.parse_args()
    right = 0
    for source, accepted in CASES:
        line = first_line(source, args.model)
        right += line in accepted
        print(f"{'ok' if line in accepted else '--'} {line!r}  (want {accepted[0]!r})")
    print(f"{right} of {len(CASES)} right")
    return 0


if __name__ == "__main__":
    sys.exit(main())
