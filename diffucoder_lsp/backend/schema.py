"""Request bodies, checked: JSON in, a frozen spec out, or :class:`BadInputError` with a one-line reason (400).

Nothing past this module sees a raw body. Every field is checked for type and range on its own and an unknown
field of ``/v1/infill`` is an error (a typo must not silently decode with the defaults); ``/v1/completions``
ignores fields it does not know, because OpenAI clients send more than any one server implements (``user``,
``presence_penalty``), and refuses only those whose meaning it cannot honour (``echo``, ``logprobs``).

``/v1/infill`` takes the options of ``diffucoder fill`` under the same names (snake_case), resolved the same way
(:func:`~diffucoder_lsp.engine.options.resolve_decoding` with the language server's fast defaults), so a body
and a command line with the same options decode the same.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..engine.confidence import STATISTICS
from ..engine.infill import AUTO_LENGTH, DEFAULT_MARKER, MAX_HOLE_TOKENS
from ..engine.options import Decoding, SamplingOptions, resolve_decoding
from ..errors import BadInputError, short_repr
from ..server.settings import Settings
from .config import Limits

Length = int | str
MAX_SEED = 2**32 - 1
_MISSING = object()


def parse_json(body: bytes) -> dict:
    """The body as a JSON object."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadInputError(f"the body must be a JSON object, got {type(value).__name__}")
    return value


class Fields:
    """Typed reads of a body's fields, each failing with the field's name and what was wrong."""

    def __init__(self, body: dict) -> None:
        self.body = body
        self.read: set[str] = set()

    def get(self, name: str, kinds: tuple[type, ...], default, *, optional: bool = False):
        self.read.add(name)
        value = self.body.get(name, _MISSING)
        if value is _MISSING or (value is None and optional):
            return default if value is _MISSING else None
        if isinstance(value, bool) and bool not in kinds:
            raise self.bad(name, value, kinds)
        if not isinstance(value, kinds):
            raise self.bad(name, value, kinds)
        if isinstance(value, float) and not math.isfinite(value):
            raise BadInputError(f"{name} must be a finite number, got {value}")
        return value

    def integer(self, name: str, default, lo: int, hi: int, *, optional: bool = False):
        value = self.get(name, (int,), default, optional=optional)
        if value is not None and not lo <= value <= hi:
            raise BadInputError(f"{name} must be between {lo} and {hi}, got {short_repr(value, 40)}")
        return value

    def number(self, name: str, default, lo: float, hi: float, *, optional: bool = False):
        value = self.get(name, (int, float), default, optional=optional)
        if value is not None:
            value = float(value)
            if not lo <= value <= hi:
                raise BadInputError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")
        return value

    def string(self, name: str, default, *, optional: bool = False) -> str | None:
        return self.get(name, (str,), default, optional=optional)

    def flag(self, name: str, default: bool) -> bool:
        return self.get(name, (bool,), default)

    @staticmethod
    def bad(name: str, value, kinds) -> BadInputError:
        names = [_KIND_NAMES.get(k, k.__name__) for k in kinds if not (k is int and float in kinds)]
        want = " or ".join(names)
        return BadInputError(f"{name} must be {want}, got {short_repr(value, 60)}")

    def unknown(self) -> list[str]:
        return sorted(set(self.body) - self.read)


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}


def fast_decoding() -> Decoding:
    """The language server's decoding: what ``decoding: fast`` (the default) means here, as in ``fill``."""
    s = Settings()
    return Decoding(False, s.tokens_per_step, s.block_size or None, s.context_cache)


# --- /v1/infill -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InfillSpec:
    """One ``/v1/infill`` request, checked. ``end_early`` as ``infill_stream`` takes it (None: the auto holes,
    True: every hole, False: none)."""

    text: str
    length: Length | tuple[Length, ...]
    marker: str
    options: SamplingOptions
    cache: bool
    refresh_every: int
    end_early: bool | None
    end_at_newline: bool
    context_tokens: int | None
    prefix_share: float
    raw: bool
    cut_at_stop: bool
    confidence_statistic: str | None
    stream: bool
    settle: bool = (
        False  # one hole: stop once the editor's cut of it is decided (``server.postprocess.settled``)
    )

    def batch_key(self) -> tuple:
        """What requests must share to be denoised in one batch (the sampler takes one set of options)."""
        return (self.options, self.cache, self.refresh_every, self.end_at_newline)


def parse_infill(body: dict, limits: Limits, model_window: int) -> InfillSpec:
    f = Fields(body)
    text = f.string("text", None, optional=True)
    prefix = f.string("prefix", None, optional=True)
    suffix = f.string("suffix", None, optional=True)
    marker = f.string("marker", DEFAULT_MARKER)
    if not marker or len(marker) > 64:
        raise BadInputError("marker must be 1 to 64 characters")
    if text is not None and (prefix is not None or suffix is not None):
        raise BadInputError("give either text (with holes) or prefix and suffix, not both")
    if text is None:
        if prefix is None:
            raise BadInputError("text (with holes) or prefix (and suffix) is required")
        suffix = suffix or ""
        if marker in prefix or marker in suffix:
            raise BadInputError(f"prefix and suffix must not contain the marker {marker!r}")
        text = prefix + marker + suffix
    holes = text.count(marker)
    if holes == 0:
        raise BadInputError(f"no holes: the text contains no {marker!r} marker")
    if holes > limits.max_holes:
        raise BadInputError(f"{holes} holes; this backend fills at most {limits.max_holes} per request")
    length = _length(f, holes)
    sizes = [
        AUTO_LENGTH if n == "auto" else n for n in (length if isinstance(length, tuple) else [length] * holes)
    ]
    if sum(sizes) > limits.max_new_tokens:
        raise BadInputError(
            f"{sum(sizes)} tokens to generate; this backend generates at most {limits.max_new_tokens} per request"
        )
    window = min(limits.max_context_tokens, model_window)
    end_early = f.get("end_early", (bool, str), True)
    if end_early not in (True, False, "all"):
        raise BadInputError(f'end_early must be true, false or "all", got {short_repr(end_early, 40)}')
    statistic = f.string("confidence_statistic", None, optional=True)
    if statistic is not None and statistic not in STATISTICS:
        raise BadInputError(
            f"unknown confidence_statistic {statistic!r}; choose one of {', '.join(STATISTICS)}"
        )
    options, decoding = _options(f, limits)
    spec = InfillSpec(
        text=text,
        length=length,
        marker=marker,
        options=options,
        cache=decoding.cache,
        refresh_every=f.integer("refresh_every", 0, 0, 100_000),
        end_early={True: None, False: False, "all": True}[end_early],
        end_at_newline=f.flag("end_at_newline", False),
        context_tokens=f.integer("context_tokens", None, 16, window, optional=True),
        prefix_share=f.number("prefix_share", 0.7, 0.0, 1.0),
        raw=f.flag("raw", False),
        cut_at_stop=f.flag("cut_at_stop", False),
        confidence_statistic=statistic,
        stream=f.flag("stream", False),
        settle=f.flag("settle", False),
    )
    if spec.settle and holes != 1:
        raise BadInputError(
            f"settle applies to one hole (the editor's cut of one completion); this text has {holes}"
        )
    unknown = f.unknown()
    if unknown:
        raise BadInputError(
            f"unknown field {short_repr(unknown[0], 60)} (see docs/backend.md for the fields)"
        )
    return spec


def _length(f: Fields, holes: int) -> Length | tuple[Length, ...]:
    value = f.get("length", (int, str, list), "auto")
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and len(values) != holes:
        raise BadInputError(f"{len(values)} lengths given for {holes} holes")
    for n in values:
        if n == "auto":
            continue
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_HOLE_TOKENS:
            raise BadInputError(
                f"length must be 'auto' or 1..{MAX_HOLE_TOKENS} tokens, got {short_repr(n, 40)}"
            )
    return tuple(values) if isinstance(value, list) else value


def _options(f: Fields, limits: Limits) -> tuple[SamplingOptions, Decoding]:
    alg = f.string("alg", "entropy")
    block_size = f.integer("block_size", None, 0, MAX_HOLE_TOKENS, optional=True)
    threshold = f.number("threshold", None, 0.0, 1.0, optional=True)
    entropy_bound = f.number("entropy_bound", None, 0.0, 100.0, optional=True)
    decoding = resolve_decoding(
        f.string("decoding", None, optional=True),
        exact=f.flag("exact", False),
        cache=f.get("cache", (bool,), None, optional=True),
        tokens_per_step=f.integer("tokens_per_step", None, 1, 256, optional=True),
        block_size=block_size,
        alg=alg,
        bounded=entropy_bound is not None,
        fast=fast_decoding(),
    )
    options = SamplingOptions(
        steps=f.integer("steps", None, 1, limits.max_steps, optional=True),
        tokens_per_step=decoding.tokens_per_step,
        alg=alg,
        temperature=f.number("temperature", 0.2, 0.0, 5.0),
        top_p=f.number("top_p", 0.95, 0.0, 1.0, optional=True),
        top_k=f.integer("top_k", None, 1, 1 << 20, optional=True),
        alg_temp=f.number("alg_temp", 0.0, 0.0, 100.0),
        seed=f.integer("seed", 0, 0, MAX_SEED),
        exact=decoding.exact,
        eos_penalty=f.number("eos_penalty", 0.0, 0.0, 100.0),
        threshold=threshold,
        entropy_bound=entropy_bound,
        block_size=decoding.block_size or None,  # 0: every hole at once
    )
    return options, decoding


# --- /v1/completions (OpenAI) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionSpec:
    """One OpenAI ``/v1/completions`` request: each prompt filled up to its suffix ``n`` times."""

    prompts: tuple[str, ...]
    suffix: str
    max_tokens: int
    options: SamplingOptions
    stop: tuple[str, ...]
    n: int
    stream: bool
    model: str | None


def parse_completion(body: dict, limits: Limits) -> CompletionSpec:
    f = Fields(body)
    prompt = f.get("prompt", (str, list), None)
    if prompt is None:
        raise BadInputError("prompt is required")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    if not prompts or len(prompts) > limits.max_prompts or not all(isinstance(p, str) for p in prompts):
        raise BadInputError(f"prompt must be a string or a list of 1 to {limits.max_prompts} strings")
    stop = f.get("stop", (str, list), None, optional=True)
    stops = [] if stop is None else stop if isinstance(stop, list) else [stop]
    if len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise BadInputError("stop must be a non-empty string or a list of at most 4 of them")
    if f.get("echo", (bool,), False):
        raise BadInputError("echo is not supported")
    if f.get("logprobs", (int,), None, optional=True):
        raise BadInputError("logprobs are not supported")
    n = f.integer("n", 1, 1, limits.max_n)
    best_of = f.integer("best_of", None, 1, limits.max_n, optional=True)
    if best_of is not None and best_of != n:
        raise BadInputError("best_of other than n is not supported")
    max_tokens = f.integer("max_tokens", 16, 1, min(MAX_HOLE_TOKENS, limits.max_new_tokens), optional=True)
    temperature = f.number("temperature", 0.2, 0.0, 5.0, optional=True)
    top_p = f.number("top_p", 0.95, 0.0, 1.0, optional=True)
    fast = fast_decoding()
    options = SamplingOptions(
        tokens_per_step=fast.tokens_per_step,
        temperature=0.2 if temperature is None else temperature,  # OpenAI's 1.0 is far too hot for FIM
        top_p=0.95 if top_p is None else top_p,
        seed=f.integer("seed", 0, 0, MAX_SEED, optional=True) or 0,
        block_size=fast.block_size,
    )
    return CompletionSpec(
        prompts=tuple(prompts),
        suffix=f.string("suffix", "", optional=True) or "",
        max_tokens=max_tokens or 16,
        options=options,
        stop=tuple(stops),
        n=n,
        stream=f.flag("stream", False),
        model=f.string("model", None, optional=True),
    )
