"""How to denoise: :class:`SamplingOptions`, validated where it is built.

It lives apart from the sampler so that :mod:`.choice` (which picks tokens by these options) and
:mod:`.sampler` (which drives the steps) both import it without importing each other. The sampler's module
docstring explains what each option does to the reveal order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import BadInputError

ALGORITHMS = ("entropy", "maskgit_plus", "topk_margin", "origin")
# The editor's block size (the language server's ``blockSize`` default, so ``fill``'s and SFT's held-out
# evaluation's too): one position at a time, from the left. Measured with the bundled model (greedy, 1 token per
# step): HumanEval-Infilling single-line first 200 oracle 6.0 % at 1, 5.0 % at 4, 5.5 % at 32; 16 one-line
# idioms 9 / 8 / 8 right; and a hole that is written from its start can stop as soon as its cut is decided
# (README example: 7 steps at 1, 29 at 32). Models that read ahead further may prefer wider blocks (32: Fast-dLLM).
EDITOR_BLOCK_SIZE = 1
PARALLEL_BLOCK_SIZE = 32  # what a one-position block widens to when several tokens a step are asked for
# Left-to-right runs (a threshold with blocks of one position): how many masked positions a step asks the model
# about. A run rarely gets this long (see ``SamplingOptions.runs``), and on a CPU a step over 8 positions costs
# about what a step over 2 does: the weights are read once either way.
RUN_WINDOW = 8


def block_for_pace(block_size: int | None, tokens_per_step: int, bounded: bool) -> int | None:
    """A block of one position leaves nothing to reveal in parallel: with several tokens a step or an entropy
    bound (``bounded``) it widens to :data:`PARALLEL_BLOCK_SIZE` (Fast-dLLM's block), so those options keep
    doing what they say whatever the block default. A threshold alone keeps the one-position order: it makes
    left-to-right runs (:attr:`SamplingOptions.runs`)."""
    if block_size == 1 and (tokens_per_step > 1 or bounded):
        return PARALLEL_BLOCK_SIZE
    return block_size


@dataclass(frozen=True)
class SamplingOptions:
    """How to denoise. ``steps`` None means ``ceil(masked / tokens_per_step)``."""

    steps: int | None = None
    tokens_per_step: int = 1
    alg: str = "entropy"
    temperature: float = 0.2
    top_p: float | None = 0.95
    top_k: int | None = None
    alg_temp: float = 0.0
    seed: int = 0
    exact: bool = False
    eos_penalty: float = 0.0
    threshold: float | None = None  # parallel unmasking: reveal every position this sure (>= tokens_per_step)
    block_size: int | None = None  # block decoding: only this many masked positions (in order) are eligible
    entropy_bound: float | None = None  # entropy-bounded unmasking: nats a step takes beyond its least sure

    def __post_init__(self) -> None:
        if self.alg not in ALGORITHMS:
            raise BadInputError(f"unknown algorithm {self.alg!r}; choose one of {', '.join(ALGORITHMS)}")
        if self.steps is not None and self.steps < 1:
            raise BadInputError(f"steps must be >= 1, got {self.steps}")
        if self.tokens_per_step < 1:
            raise BadInputError(f"tokens_per_step must be >= 1, got {self.tokens_per_step}")
        if self.temperature < 0:
            raise BadInputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise BadInputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise BadInputError(f"top_k must be >= 1, got {self.top_k}")
        if self.alg_temp < 0:
            raise BadInputError(f"alg_temp must be >= 0, got {self.alg_temp}")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise BadInputError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.threshold is not None and (self.exact or self.alg == "origin"):
            raise BadInputError(
                "threshold decoding cannot be combined with exact mode or the origin algorithm"
            )
        if self.entropy_bound is not None:
            if not self.entropy_bound >= 0:
                raise BadInputError(f"entropy_bound must be >= 0, got {self.entropy_bound}")
            if self.threshold is not None:
                raise BadInputError("choose either threshold or entropy_bound, not both")
            if self.exact or self.alg == "origin":
                raise BadInputError(
                    "entropy-bounded decoding cannot be combined with exact mode or the origin algorithm"
                )
        if self.block_size is not None:
            if self.block_size < 1:
                raise BadInputError(f"block_size must be >= 1, got {self.block_size}")
            if self.exact or self.alg == "origin":
                raise BadInputError(
                    "block decoding cannot be combined with exact mode or the origin algorithm"
                )

    @property
    def runs(self) -> bool:
        """Left-to-right runs: a threshold with blocks of one position. Each step reveals the first masked
        position (canvas order) and then each next one while its token is at least ``threshold`` sure, so a
        step may write several tokens without leaving the one-position order; it asks the model about the first
        :data:`RUN_WINDOW` masked positions."""
        return self.threshold is not None and self.block_size == 1

    @property
    def adaptive(self) -> bool:
        """Whether the tokens revealed per step depend on the model's certainty (threshold or entropy bound)."""
        return self.threshold is not None or self.entropy_bound is not None

    def pace(self, max_masked: int) -> int:
        """Tokens per step in block decoding: ``tokens_per_step``, or what ``steps`` implies when given."""
        if self.steps is not None and not self.adaptive:
            return max(1, math.ceil(max_masked / self.steps))
        return self.tokens_per_step

    def num_steps(self, max_masked: int, per_row: list[int] | None = None) -> int:
        """Steps to run. Block decoding needs every row's masked count (``per_row``): a block's last step may
        reveal fewer than the pace, so the count is summed block by block."""
        if self.block_size is not None:
            pace, size = self.pace(max_masked), self.block_size
            counts = per_row if per_row is not None else [max_masked]
            return max(
                1,
                max((m // size) * math.ceil(size / pace) + math.ceil((m % size) / pace) for m in counts),
            )
        if self.steps is not None and not self.adaptive:
            return self.steps
        # adaptive: an upper bound (>= tokens_per_step per step): usually far fewer steps are run
        return max(1, math.ceil(max_masked / self.tokens_per_step))


DECODINGS = ("fast", "plain", "exact")


@dataclass(frozen=True)
class Decoding:
    """A decoding mode resolved against the flags given: what ``fill``, the demo and the HTTP backend run.

    ``fast`` is the language server's decoding (context cache, its tokens per step and block size), ``plain`` a
    full-canvas pass per step revealing one token per step over every hole at once, ``exact`` the reference
    decoder. A flag given explicitly wins over its mode's value."""

    exact: bool
    tokens_per_step: int
    block_size: int | None
    cache: bool


def resolve_decoding(
    mode: str | None,
    *,
    exact: bool = False,
    cache: bool | None = None,
    tokens_per_step: int | None = None,
    block_size: int | None = None,
    alg: str = "entropy",
    bounded: bool = False,
    fast: Decoding,
) -> Decoding:
    """Fill in what ``mode`` (None: ``exact`` when ``exact``, else ``fast``) decides and the caller left unset.
    ``fast``: the language server's defaults (its ``Settings``), passed in so that this room never reads the
    server's. ``bounded``: an entropy bound was asked for (a one-position block widens then, see
    :func:`block_for_pace`). Raises :class:`BadInputError` for contradictions (``exact`` with another mode or
    with the cache)."""
    if mode is not None and mode not in DECODINGS:
        raise BadInputError(f"unknown decoding {mode!r}; choose one of {', '.join(DECODINGS)}")
    mode = mode or ("exact" if exact else "fast")
    if exact and mode != "exact":
        raise BadInputError(f"--exact is --decoding exact: it cannot be combined with --decoding {mode}")
    exact = mode == "exact"
    if exact and cache:
        raise BadInputError(
            "--cache cannot be combined with --exact (the reference decoder reads the full canvas)"
        )
    if mode == "fast":
        if block_size is None and fast.block_size and alg != "origin":  # origin has no order
            block_size = fast.block_size
        tokens_per_step = fast.tokens_per_step if tokens_per_step is None else tokens_per_step
        return Decoding(
            exact=False,
            tokens_per_step=tokens_per_step,
            block_size=block_for_pace(block_size, tokens_per_step, bounded),
            cache=fast.cache if cache is None else cache,
        )
    return Decoding(
        exact=exact,
        tokens_per_step=1 if tokens_per_step is None else tokens_per_step,
        block_size=block_size,
        cache=bool(cache),
    )
