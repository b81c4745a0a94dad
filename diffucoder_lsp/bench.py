"""``diffucoder bench``: speed of every decoding configuration on the same inputs, in one run.

Workloads are cut from held-out code (a corpus ``valid.jsonl``, else this package's own source, which no model
was trained on): a context of about C tokens around 1 or 3 holes of S tokens each, the hole's true tokens kept
as the reference answer. Configurations:

* ``reference``  the reference decoder: full canvas every step, one token per step, exact schedule
* ``cache``      context key/value cache alone (one token per step)
* ``block``      the cache with block decoding (one token per step, one block of ``block_size`` at a time)
* ``parallel``   threshold parallel unmasking alone (full canvas)
* ``all``        cache + block decoding + parallel unmasking
* ``bounded``    as ``all`` with entropy-bounded unmasking (``entropy_bound``) instead of the threshold
* ``runs``       the cache with left-to-right runs: blocks of one position, and each step also reveals the
                 positions after the first while the model is ``threshold`` sure of them
* ``reuse``      all + cross-request reuse: the same request made while typing, i.e. right after the request
                 for the same text ``TYPED_CHARS`` characters earlier, whose context keys/values it starts from
                 (the priming request is not timed)
* ``ar``         the same network as a causal AR model with a KV cache generating the same number of tokens

Per configuration: p50/p95 latency, forward passes, generated tokens per second, peak memory, exact match of
the filled spans against the truth on the same workloads (so speed is never bought with silent quality loss),
and ratios to the reference decoder and to the AR baseline.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .engine.autoregressive import ar_generate
from .engine.cache import DRAFT_TOKENS, CachedContextDenoiser
from .engine.denoiser import FullCanvasDenoiser
from .engine.infill import DEFAULT_MARKER, infill
from .engine.reuse import ContextStore
from .engine.sampler import SamplingOptions

CONFIGS = ("reference", "cache", "block", "parallel", "all", "bounded", "runs", "reuse", "ar")
ENTROPY_BOUND = 1.0  # ``bounded``: nats a step may take beyond its least sure token (tuned in the README)
TYPED_CHARS = 3  # characters typed between the priming request and the timed one (``reuse``)
BLOCK_SIZE = 32  # block decoding's block (``block``, ``all``, ``reuse``); 0 = the whole span at once
CONTEXTS = (256, 1024, 4096)
SPANS = (16, 64)
HOLES = (1, 3)


@dataclass
class Case:
    text: str  # with holes
    truths: list[list[int]]  # the true token ids of each hole
    prompt_ids: list[int]  # context tokens without holes (the AR baseline's prompt)


@dataclass
class Workload:
    context: int
    span: int
    holes: int
    cases: list[Case]

    @property
    def name(self) -> str:
        return f"ctx{self.context}/span{self.span}/holes{self.holes}"


@dataclass
class Row:
    workload: str
    config: str
    p50_ms: float
    p95_ms: float
    forward_passes: float
    tokens_per_s: float
    peak_mem_mb: float
    exact_match: float | None
    token_accuracy: float | None = None
    vs_reference: float | None = None
    vs_ar: float | None = None
    extra: dict = field(default_factory=dict)


def held_out_text(corpus: str | Path | None) -> str:
    """Concatenated held-out source: the corpus validation split if given, else this package's own files."""
    if corpus:
        texts = [
            json.loads(line)["text"] for line in Path(corpus).read_text(encoding="utf-8").splitlines() if line
        ]
    else:
        root = Path(__file__).resolve().parent
        texts = [p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py"))]
    return "\n\n".join(t for t in texts if DEFAULT_MARKER not in t)


def build_workloads(
    tokenizer,
    text: str,
    *,
    contexts=CONTEXTS,
    spans=SPANS,
    holes=HOLES,
    cases: int = 3,
    max_tokens: int | None = None,
) -> list[Workload]:
    """Cut ``cases`` windows per (context, span, holes) from ``text``; holes sit at line starts, spread evenly.

    A context that would not fit ``max_tokens`` (the model's window) with its holes is shortened to fit, and
    the workload is named by the context it really has (a "4k" context is 3904 tokens with 3 x 64 holes in a
    4096-token window)."""
    ids = tokenizer.encode(text)
    newline_starts = [
        i for i in range(1, len(ids)) if "\n" in tokenizer.decode([ids[i - 1]], skip_special=False)
    ]
    out = []
    for ctx in contexts:
        for span in spans:
            for n_holes in holes:
                context = ctx
                if max_tokens is not None and context + span * n_holes > max_tokens:
                    context = max_tokens - span * n_holes
                    if context < ctx // 2:
                        continue
                total = context + span * n_holes
                if total + 1 > len(ids):
                    continue
                made = []
                for c in range(cases):
                    start = (len(ids) - total) * (c + 1) // (cases + 1)
                    window = ids[start : start + total]
                    made.append(_case(tokenizer, window, span, n_holes, newline_starts, start))
                out.append(Workload(context, span, n_holes, made))
    return out


def _case(tokenizer, window: list[int], span: int, n_holes: int, line_starts: list[int], offset: int) -> Case:
    total = len(window)
    starts_in = {i - offset for i in line_starts if offset <= i < offset + total}
    pieces, truths, prompt, pos = [], [], [], 0
    for h in range(n_holes):
        want = total * (h + 1) // (n_holes + 1) - span // 2
        # nearest line start at or after the wanted point that leaves room for the span
        cands = [i for i in starts_in if want <= i <= total - span * (n_holes - h)]
        at = min(cands) if cands else max(pos, min(want, total - span * (n_holes - h)))
        at = max(at, pos)
        pieces.append(tokenizer.decode(window[pos:at], skip_special=False))
        prompt.extend(window[pos:at])
        truths.append(window[at : at + span])
        pos = at + span
    pieces.append(tokenizer.decode(window[pos:], skip_special=False))
    prompt.extend(window[pos:])
    return Case(text=DEFAULT_MARKER.join(pieces), truths=truths, prompt_ids=prompt)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configurations(
    threshold: float,
    refresh_every: int,
    tokens_per_step: int = 1,
    block_size: int = BLOCK_SIZE,
    entropy_bound: float = ENTROPY_BOUND,
    draft_tokens: int = DRAFT_TOKENS,
) -> dict[str, Callable]:
    """name -> f(lm, span_tokens) returning (SamplingOptions, denoiser factory).

    ``tokens_per_step`` is the least an adaptive rule reveals per step (``parallel``, ``all``, ``bounded``,
    ``reuse``); ``block_size`` the block of ``block``, ``all``, ``bounded`` and ``reuse`` (0: no blocks);
    ``draft_tokens`` the guesses a speculative step of the context cache may check (0: none; they apply at
    blocks of one)."""
    block = block_size or None

    def cached(lm):
        return CachedContextDenoiser(lm.model, refresh_every, draft_tokens=draft_tokens)

    def reference(lm, n):
        return SamplingOptions(steps=n, exact=True, temperature=0.0), lambda: FullCanvasDenoiser(lm.model)

    def cache(lm, n):
        opts = SamplingOptions(steps=n, temperature=0.0)
        return opts, lambda: cached(lm)

    def block_(lm, n):
        opts = SamplingOptions(tokens_per_step=1, temperature=0.0, block_size=block)
        return opts, lambda: cached(lm)

    def parallel(lm, n):
        opts = SamplingOptions(threshold=threshold, tokens_per_step=tokens_per_step, temperature=0.0)
        return opts, lambda: FullCanvasDenoiser(lm.model)

    def all_(lm, n):
        opts = SamplingOptions(
            threshold=threshold, tokens_per_step=tokens_per_step, temperature=0.0, block_size=block
        )
        return opts, lambda: cached(lm)

    def bounded(lm, n):
        opts = SamplingOptions(
            entropy_bound=entropy_bound, tokens_per_step=tokens_per_step, temperature=0.0, block_size=block
        )
        return opts, lambda: cached(lm)

    def runs(lm, n):
        opts = SamplingOptions(
            threshold=threshold, tokens_per_step=tokens_per_step, temperature=0.0, block_size=1
        )
        return opts, lambda: cached(lm)

    return {
        "reference": reference,
        "cache": cache,
        "block": block_,
        "parallel": parallel,
        "all": all_,
        "bounded": bounded,
        "runs": runs,
        "reuse": all_,
    }


def typed_earlier(text: str, chars: int = TYPED_CHARS) -> str:
    """The same canvas as it was ``chars`` characters of typing earlier: the first hole starts sooner."""
    at = text.index(DEFAULT_MARKER)
    return text[: max(0, at - chars)] + text[at:]


def _prime(lm, text: str, span: int, opts: SamplingOptions, refresh_every: int) -> ContextStore:
    """A store holding the context keys/values of the request made just before ``text`` while typing."""
    store = ContextStore()
    den = CachedContextDenoiser(lm.model, refresh_every, store=store)
    infill(lm, typed_earlier(text), length=span, options=opts, denoiser=den, max_context_tokens=1 << 30)
    return store


def run_diffusion(
    lm, wl: Workload, make, repeat: int, reuse: bool = False, refresh_every: int = 0
) -> tuple[list[float], float, float, float, int]:
    """Latencies (ms), mean forward passes, span exact match, token accuracy, generated tokens per run."""
    lat, passes, hits, total, tok_hits, tok_total = [], [], 0, 0, 0, 0
    for case in wl.cases:
        for r in range(repeat + 1):  # the first run of each case warms up and is not timed
            opts, factory = make(lm, wl.span * wl.holes)
            den = factory()
            if reuse:
                den.store = _prime(lm, case.text, wl.span, opts, refresh_every)
            _sync(lm.device)
            t0 = time.perf_counter()
            res = infill(
                lm, case.text, length=wl.span, options=opts, denoiser=den, max_context_tokens=1 << 30
            )
            _sync(lm.device)
            ms = (time.perf_counter() - t0) * 1000
            if r == 0:
                for hole, truth in zip(res.holes, case.truths, strict=True):
                    hits += int(hole.token_ids == truth)
                    total += 1
                    tok_hits += sum(int(a == b) for a, b in zip(hole.token_ids, truth, strict=False))
                    tok_total += len(truth)
                continue
            lat.append(ms)
            passes.append(den.forward_passes)
    return (
        lat,
        statistics.mean(passes),
        hits / max(total, 1),
        tok_hits / max(tok_total, 1),
        wl.span * wl.holes,
    )


def run_ar(lm, wl: Workload, repeat: int) -> tuple[list[float], float, int]:
    lat, passes = [], []
    n = wl.span * wl.holes
    for case in wl.cases:
        prompt = torch.tensor([case.prompt_ids], device=lm.device)
        for r in range(repeat + 1):
            _sync(lm.device)
            t0 = time.perf_counter()
            _, p = ar_generate(lm.model, prompt, n)
            _sync(lm.device)
            if r:
                lat.append((time.perf_counter() - t0) * 1000)
                passes.append(p)
    return lat, statistics.mean(passes), n


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def bench(
    lm,
    workloads: list[Workload],
    *,
    repeat: int = 3,
    threshold: float = 0.9,
    refresh_every: int = 0,
    tokens_per_step: int = 1,
    block_size: int = BLOCK_SIZE,
    entropy_bound: float = ENTROPY_BOUND,
    draft_tokens: int = DRAFT_TOKENS,
    configs: list[str] | None = None,
    log=None,
) -> list[Row]:
    table = configurations(threshold, refresh_every, tokens_per_step, block_size, entropy_bound, draft_tokens)
    names = configs or [*table, "ar"]
    rows: list[Row] = []
    for wl in workloads:
        found: dict[str, Row] = {}
        for name in names:
            if log:
                log(f"{wl.name} {name}")
            if lm.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(lm.device)
            if name == "ar":
                lat, passes, n = run_ar(lm, wl, repeat)
                em = acc = None
            else:
                lat, passes, em, acc, n = run_diffusion(
                    lm, wl, table[name], repeat, reuse=name == "reuse", refresh_every=refresh_every
                )
            p50 = _pct(lat, 0.5)
            found[name] = Row(
                wl.name, name, p50, _pct(lat, 0.95), passes, n / (p50 / 1000), _peak_mb(lm.device), em, acc
            )
        for row in found.values():
            if "reference" in found:
                row.vs_reference = found["reference"].p50_ms / row.p50_ms
            if "ar" in found:
                row.vs_ar = found["ar"].p50_ms / row.p50_ms
            rows.append(row)
    return rows


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'workload':<26}{'config':<11}{'p50 ms':>9}{'p95 ms':>9}{'passes':>8}{'tok/s':>9}{'peak MB':>9}"
        f"{'EM':>6}{'tokacc':>8}{'x ref':>7}{'x AR':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        em = "-" if r.exact_match is None else f"{100 * r.exact_match:.0f}%"
        acc = "-" if r.token_accuracy is None else f"{100 * r.token_accuracy:.1f}%"
        ref = "-" if r.vs_reference is None else f"{r.vs_reference:.1f}"
        ar = "-" if r.vs_ar is None else f"{r.vs_ar:.1f}"
        lines.append(
            f"{r.workload:<26}{r.config:<11}{r.p50_ms:>9.1f}{r.p95_ms:>9.1f}{r.forward_passes:>8.1f}"
            f"{r.tokens_per_s:>9.0f}{r.peak_mem_mb:>9.0f}{em:>6}{acc:>8}{ref:>7}{ar:>7}"
        )
    return "\n".join(lines)


def rows_as_json(rows: list[Row], meta: dict) -> dict:
    return {"meta": meta, "rows": [asdict(r) for r in rows]}
