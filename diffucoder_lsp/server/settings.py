"""Server settings: one frozen dataclass, read from ``initializationOptions`` and ``didChangeConfiguration``.

Clients send camelCase keys (``maxTokens``), optionally nested under a ``diffucoder`` section; snake_case keys
are accepted too. Validation never fails the request: each key is checked for type, finiteness and range on its
own, an invalid value leaves that setting at its previous value, the valid keys of the same message apply, and
the problems are returned as messages, which the server shows once with ``window/showMessage``. Unknown keys are
reported the same way (a typo in a settings file should not be silent) and ignored.

The sampling defaults are chosen for latency: a few tokens revealed per denoising step, a short span for a
single-line completion and a longer one for a block, trailing padding trimmed (length "auto").

``minConfidence`` withholds completions the model is unsure of (see :mod:`diffucoder_lsp.engine.confidence`);
its default (None, also written "auto") is the threshold calibrated for the loaded model, if its folder has a
``calibration.json``, and off otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from ..engine.options import EDITOR_BLOCK_SIZE, block_for_pace
from ..engine.remote import check_url, is_url
from ..errors import BadInputError, short_repr

SECTION = "diffucoder"
ALGORITHMS = ("entropy", "maskgit_plus", "topk_margin", "origin")
QUANTS = ("none", "8bit", "4bit")
DTYPES = ("auto", "bf16", "fp32", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
MAX_SPAN_TOKENS = 1024  # the engine's limit for one hole


@dataclass(frozen=True)
class Settings:
    model: str | None = (
        None  # checkpoint folder, hub id or a backend's http(s):// URL; None = the bundled model
    )
    # the bearer token of a backend given as ``model`` (diffucoder backend --token-file); None: DIFFUCODER_TOKEN
    backend_token: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    quant: str = "none"
    steps: int | None = None  # denoising steps per completion; None = span / tokensPerStep
    # one token per step: the bundled model reads ahead only as far as it learned to (learned lookahead) and
    # writes nonsense at 3 (idioms right: 8/16 at 1, 0/16 at 3); a threshold still reveals sure runs together
    tokens_per_step: int = 1
    # greedy: the same context gives the same suggestion (cacheable, no flicker), HumanEval-Infilling is no worse
    # (5.5 % at 0 against 5.0 % at 0.2, first 200 single-line tasks), and the suggestion's confidence is the
    # model's own probability: at 0.2 the sharpened probabilities of 56 % of suggestions were exactly 1.0, and
    # the confidence gate could not tell them apart
    temperature: float = 0.0
    top_p: float = 0.95
    alg: str = "entropy"
    eos_penalty: float = 0.0
    seed: int = 0
    threshold: float | None = None  # parallel unmasking: reveal every position at least this sure
    entropy_bound: float | None = None  # entropy-bounded unmasking (nats); an alternative to threshold
    block_size: int = (
        EDITOR_BLOCK_SIZE  # block decoding: fill the masks in order, this many at a time; 0 = all at once
    )
    end_early: bool = True  # stop denoising what follows a completion's first revealed end (stop) token
    context_cache: bool = True  # keys/values of the context computed once (refreshed every cacheRefreshEvery)
    cache_refresh_every: int = 0  # 0: never (one full pass per completion), as the engine bench defaults
    context_reuse: bool = True  # with contextCache: start from the previous request's context keys/values
    warm_context: bool = True  # with contextReuse: compute the next request's context while the user pauses
    speculate: bool = True  # after showing a completion, compute the one that follows it once accepted
    max_tokens: int = 48  # multi-line completion span
    max_tokens_single_line: int = 20
    # a completion after code on the cursor's line: the rest of that line, the best of this many candidate lines
    # by how well the code after the cursor follows each (engine/ranking.py; an adapted model ranks as its base).
    # 0: off. Gated by minConfidence like any completion; ~2x a completion's time on a CPU. At most 16: each
    # beam holds its own keys/values of the context (8 beams, 512 tokens: ~100 MB for the bundled model)
    rank_lines: int = 0
    # the same for a request the user made by hand (the editor's manual trigger, an invoked completion menu), who
    # waits for it: None takes the width the model's calibration measured ranked lines at (the bundled model: 8),
    # off for a model without one; 0: as automatic requests (rankLines)
    rank_invoked: int | None = None
    min_confidence: float | None = None  # withheld below this score; None: the model's calibrated threshold
    context_tokens: int = 512  # prefix + suffix budget (the bundled model trained on 512-token rows)
    prefix_share: float = 0.7
    debounce_ms: int = 50
    enabled_languages: tuple[str, ...] = ("*",)
    max_document_chars: int = 1_000_000
    cache_size: int = 64

    # --- derived --------------------------------------------------------------------------------------------

    def model_key(self) -> tuple:
        """What identifies the loaded model: a change here means a reload."""
        return (self.model, self.backend_token, self.device, self.dtype, self.quant)

    def sampling_key(self) -> tuple:
        """What changes a completion for the same text: part of every cache key."""
        return (
            self.model_key(),
            self.steps,
            self.tokens_per_step,
            self.temperature,
            self.top_p,
            self.alg,
            self.eos_penalty,
            self.seed,
            self.threshold,
            self.entropy_bound,
            self.block_size,
            self.end_early,
            self.context_cache,
            self.cache_refresh_every,
            self.context_reuse,
            self.warm_context,
            self.max_tokens,
            self.max_tokens_single_line,
            self.rank_lines,
            self.min_confidence,  # a withheld completion is cached as withheld
            self.context_tokens,
            self.prefix_share,
        )

    def decoding_block(self) -> int | None:
        """The block the sampler runs: ``blockSize`` widened for a parallel pace (a block of 1 leaves nothing to
        reveal in parallel), None for all at once or for ``origin`` (which has no order). In-process and over a
        backend alike."""
        if self.alg == "origin":
            return None
        return block_for_pace(self.block_size, self.tokens_per_step, self.entropy_bound is not None) or None

    def language_enabled(self, language_id: str) -> bool:
        langs = self.enabled_languages
        return "*" in langs or (language_id or "").lower() in {x.lower() for x in langs}

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[_camel(f.name)] = list(value) if isinstance(value, tuple) else value
        return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


_BY_KEY = {}
for _f in dataclasses.fields(Settings):
    _BY_KEY[_f.name] = _f.name
    _BY_KEY[_camel(_f.name)] = _f.name


# --- validators: value -> converted value, or raise ValueError with the reason -----------------------------

MAX_SEED = 2**32 - 1  # numpy's and torch's generators both take it; JSON allows integers far beyond
MAX_TEXT = 4096  # a model path or hub id, a language id


def _finite(v) -> float:
    """A JSON number as a finite float: booleans, strings, NaN, +-Infinity and 1e999 are refused."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, got {_short(v)}")
    try:
        f = float(v)
    except OverflowError:  # an integer beyond float range (JSON has no limit)
        raise ValueError("the number is too large") from None
    if not math.isfinite(f):
        raise ValueError(f"expected a finite number, got {_short(v)}")
    return f


def _int(lo: int, hi: int, optional: bool = False):
    def check(v):
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"expected an integer, got {_short(v)}")
        if isinstance(v, float) and (not math.isfinite(v) or not v.is_integer()):
            raise ValueError(f"expected an integer, got {_short(v)}")
        v = int(v)
        if not lo <= v <= hi:
            raise ValueError(
                f"must be between {lo} and {hi}, got {v if abs(v) < 10**30 else 'a huge number'}"
            )
        return v

    return check


def _float(lo: float, hi: float, lo_open: bool = False):
    def check(v):
        v = _finite(v)
        if v > hi or v < lo or (lo_open and v == lo):
            raise ValueError(f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
        return v

    return check


def _optional_float(lo: float, hi: float):
    inner = _float(lo, hi, lo_open=True)

    def check(v):
        return None if v is None else inner(v)

    return check


def _optional_bound(v):
    """An entropy bound in nats: >= 0 (0 still reveals runs of certain tokens), or None for off."""
    if v is None:
        return None
    f = _finite(v)
    if not 0 <= f <= 100:
        raise ValueError(f"expected a number of nats between 0 and 100, got {_short(v)}")
    return f


def _min_confidence(v):
    """A confidence threshold in [0, 1] (0: show everything), or None / "auto" for the model's calibrated one."""
    if v is None or (isinstance(v, str) and v.strip().lower() == "auto"):
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f'expected a number in [0, 1] or "auto", got {_short(v)}')
    f = _finite(v)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"must be in [0, 1], got {_short(v)}")
    return f


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {_short(v)}")
    return v


def _choice(options: tuple[str, ...]):
    def check(v):
        if not isinstance(v, str) or v.lower() not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {_short(v)}")
        return v.lower()

    return check


def _model(v):
    if v is None or v == "" or v == "default":
        return None
    if not isinstance(v, str):
        raise ValueError(f"expected a path or hub id, got {_short(v)}")
    if len(v) > MAX_TEXT or "\x00" in v:
        raise ValueError("expected a path or hub id (at most 4096 characters, no NUL)")
    if is_url(v):
        try:
            return check_url(v)
        except BadInputError as exc:
            raise ValueError(str(exc)) from None
    return v


def _token(v):
    """A bearer token: printable ASCII without spaces (it goes into an HTTP header), or None / "" for none."""
    if v is None or v == "":
        return None
    if not isinstance(v, str) or len(v) > MAX_TEXT or not all("!" <= c <= "~" for c in v):
        raise ValueError("expected a token of printable characters without spaces (at most 4096)")
    return v


def _device(v):
    if not isinstance(v, str) or not _DEVICE.match(v.strip().lower()):
        raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {_short(v)}")
    return v.strip().lower()


def _languages(v):
    if isinstance(v, str):
        v = [v]
    if (
        not isinstance(v, (list, tuple))
        or len(v) > 1000
        or not all(isinstance(x, str) and x and len(x) <= MAX_TEXT for x in v)
    ):
        raise ValueError(f"expected a list of language ids, got {_short(v)}")
    return tuple(v)


def _short(v: Any) -> str:
    """A value for a one-line message: a pasted megabyte must not become a megabyte popup."""
    return short_repr(v, 80)


VALIDATORS = {
    "model": _model,
    "backend_token": _token,
    "device": _device,
    "dtype": _choice(DTYPES),
    "quant": _choice(QUANTS),
    "steps": _int(1, 4096, optional=True),
    "tokens_per_step": _int(1, 256),
    "temperature": _float(0.0, 5.0),
    "top_p": _float(0.0, 1.0, lo_open=True),
    "alg": _choice(ALGORITHMS),
    "eos_penalty": _float(0.0, 100.0),
    "seed": _int(0, MAX_SEED),
    "threshold": _optional_float(0.0, 1.0),
    "entropy_bound": _optional_bound,
    "block_size": _int(0, MAX_SPAN_TOKENS),
    "end_early": _bool,
    "context_cache": _bool,
    "cache_refresh_every": _int(0, 100_000),
    "context_reuse": _bool,
    "warm_context": _bool,
    "speculate": _bool,
    "max_tokens": _int(1, MAX_SPAN_TOKENS),
    "max_tokens_single_line": _int(1, MAX_SPAN_TOKENS),
    "rank_lines": _int(0, 16),
    "rank_invoked": _int(0, 16, optional=True),
    "min_confidence": _min_confidence,
    "context_tokens": _int(16, 32768),
    "prefix_share": _float(0.0, 1.0),
    "debounce_ms": _int(0, 5000),
    "enabled_languages": _languages,
    "max_document_chars": _int(1, 1_000_000_000),
    "cache_size": _int(0, 10_000),
}


def known_key(key: str) -> bool:
    """Whether ``key`` (camelCase or snake_case) names a setting."""
    return key in _BY_KEY


def section_of(raw: Any) -> Any:
    """The ``diffucoder`` section of a settings object (clients nest it or not)."""
    if isinstance(raw, dict) and isinstance(raw.get(SECTION), dict):
        return raw[SECTION]
    if isinstance(raw, dict) and set(raw) == {SECTION} and raw[SECTION] in (None, []):
        return None  # {"diffucoder": {}} from a Lua client: an empty table encodes as []
    return raw


def parse_settings(raw: Any, base: Settings | None = None) -> tuple[Settings, list[str]]:
    """Settings from a client's object, starting from ``base`` (the defaults when None).

    Keys absent from ``raw`` keep their ``base`` value, and so do invalid ones: a setting the user chose is never
    silently replaced by a default because a later message got one field wrong. Every key is checked for type,
    finiteness and range on its own, so one bad field never drops the others. Never raises: returns the settings
    and one human-readable problem per invalid or unknown key. ``null`` and an empty list (what an empty Lua
    table encodes as) mean "no settings", without a problem.
    """
    base = base or Settings()
    raw = section_of(raw)
    if raw is None or (isinstance(raw, list) and not raw):
        return base, []
    if not isinstance(raw, dict):
        return base, [f"settings must be an object, got {type(raw).__name__}: keeping the previous settings"]
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        name = _BY_KEY.get(key) if isinstance(key, str) else None
        if name is None:
            problems.append(f"unknown setting {_short(key)} ignored")
            continue
        try:
            changes[name] = VALIDATORS[name](value)
        except Exception as exc:  # noqa: BLE001 - a validator's surprise must not fail the request either
            reason = str(exc) if isinstance(exc, ValueError) else f"invalid value {_short(value)}"
            previous = getattr(base, name)
            shown = list(previous) if isinstance(previous, tuple) else previous
            problems.append(f"invalid {_camel(name)}: {reason}; keeping the previous value ({shown!r})")
    out = dataclasses.replace(base, **changes)
    # the origin algorithm reveals positions at random: no threshold rule, no block order. A threshold, or a
    # blockSize asked for here, is turned off with a message; the default blockSize just does not apply to it
    adaptive = out.threshold is not None or out.entropy_bound is not None
    if out.alg == "origin" and (adaptive or (changes.get("block_size") or 0) > 0):
        problems.append("alg 'origin' cannot use threshold, entropyBound or blockSize: they are turned off")
        out = dataclasses.replace(out, threshold=None, entropy_bound=None, block_size=0)
    # two rules for how many tokens a step reveals: keep the one set last (this message's, else the threshold)
    if out.threshold is not None and out.entropy_bound is not None:
        keep = "entropyBound" if "entropy_bound" in changes and "threshold" not in changes else "threshold"
        problems.append(f"threshold and entropyBound are alternatives: using {keep}")
        drop = "threshold" if keep == "entropyBound" else "entropy_bound"
        out = dataclasses.replace(out, **{drop: None})
    return out, problems


def problems_message(problems: list[str]) -> str:
    return "DiffuCoder settings: " + "; ".join(problems)


__all__ = ["SECTION", "Settings", "known_key", "parse_settings", "problems_message", "section_of"]
