"""Context reuse per ``X-Request-Group``: an editor's next keystroke starts from the context its last request
left on the backend, as the language server's do in process; the stores are bounded, and off with 0."""

from __future__ import annotations

import threading

import httpx
from backend_helpers import running_backend

from diffucoder_lsp.backend.config import BackendConfig

# long enough for a store to keep it (ContextStore's min_tokens: 256)
FILE = "".join(
    f"def helper_{i}(value):\n    '''Helper number {i}.'''\n    return value * {i}\n\n\n" for i in range(30)
)
BEFORE, AFTER = FILE + "def main():\n    total = helper_1(2)", "\n    return total\n"


def infill(url: str, typed: str, group: str | None, client: httpx.Client) -> httpx.Response:
    body = {"text": BEFORE + typed + "<|mask|>" + AFTER, "length": 6, "temperature": 0}
    headers = {"X-Request-Group": group} if group else {}
    return client.post(url + "/v1/infill", json=body, headers=headers, timeout=120)


def stores(served):
    return served.backend.batcher._stores


def test_an_editors_next_keystroke_reuses_its_context(lm):
    with running_backend(lm, BackendConfig(port=0)) as served, httpx.Client() as client:
        first = infill(served.url, "", "editor-1:main.py", client)
        assert first.status_code == 200
        (store,) = stores(served).values()
        assert store.entry is not None and store.entry.chain == 0 and store.hits == 0
        second = infill(served.url, " +", "editor-1:main.py", client)
        assert second.status_code == 200 and second.json()["text"].startswith(BEFORE + " +")
        assert store.hits == 1 and store.entry.chain == 1
        metrics = httpx.get(served.url + "/metrics").text
        assert "diffucoder_context_stores 1" in metrics
        assert f"diffucoder_context_store_bytes {store.nbytes}" in metrics
        counts = dict(
            line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("diffucoder_context_")
        )
        computed = int(counts["diffucoder_context_computed_tokens_total"])
        assert (
            int(counts["diffucoder_context_reused_tokens_total"]) > computed / 2
        )  # one full pass, one mostly reused
        infill(served.url, " +", None, client)  # no group: no store used or made
        assert len(stores(served)) == 1 and store.hits == 1


def test_concurrent_editors_each_reuse_their_own_context(lm):
    with running_backend(lm, BackendConfig(port=0, gather_ms=200)) as served:
        groups = [f"editor-{i}:main.py" for i in range(3)]

        def round_of(typed: str) -> list[int]:
            codes = [0] * len(groups)

            def send(i):
                with httpx.Client() as client:
                    codes[i] = infill(served.url, typed, groups[i], client).status_code

            threads = [threading.Thread(target=send, args=(i,)) for i in range(len(groups))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            return codes

        assert round_of("") == [200] * 3
        assert round_of(" *") == [200] * 3
        held = stores(served)
        assert sorted(held) == sorted(groups)
        assert [held[g].hits for g in groups] == [1, 1, 1]
        lines = dict(
            line.rsplit(" ", 1)
            for line in httpx.get(served.url + "/metrics").text.splitlines()
            if line.startswith(("diffucoder_batch_rows_sum", "diffucoder_batch_rows_count"))
        )
        assert float(lines["diffucoder_batch_rows_sum"]) > float(
            lines["diffucoder_batch_rows_count"]
        )  # batched


def test_stores_are_bounded_and_can_be_turned_off(lm):
    with running_backend(lm, BackendConfig(port=0, context_stores=2)) as served, httpx.Client() as client:
        for i in range(3):
            assert infill(served.url, "", f"editor-{i}:main.py", client).status_code == 200
        assert list(stores(served)) == ["editor-1:main.py", "editor-2:main.py"]  # the oldest dropped
    with running_backend(lm, BackendConfig(port=0, context_stores=0)) as served, httpx.Client() as client:
        assert infill(served.url, "", "editor-1:main.py", client).status_code == 200
        assert infill(served.url, " +", "editor-1:main.py", client).status_code == 200
        assert not stores(served)
