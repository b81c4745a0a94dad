"""``python -m diffucoder_lsp.server [--tcp HOST:PORT] [--model ...]``: the same as ``diffucoder serve``."""

from __future__ import annotations

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
