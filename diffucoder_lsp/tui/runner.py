"""What the demo runs fills with: a small protocol, its engine implementation, and the user's settings.

The screens never import the model: they talk to a :class:`FillRunner`. The real one, :class:`EngineRunner`,
loads a checkpoint through :func:`diffucoder_lsp.model.loading.load_model` (lazily, on a worker thread, so the
app appears at once) and streams :func:`diffucoder_lsp.engine.infill.infill_stream`; :class:`RemoteRunner`
streams the same fill from a backend (``--model http://host:port``), one server-sent event per step. Tests pass
a scripted runner instead, which is how they check the UI shows tokens in the order the sampler revealed them without a
model in the loop.

The demo imports the engine's torch-free modules only (:mod:`~diffucoder_lsp.engine.canvas`, ``options``,
``remote``); :class:`EngineRunner` imports the model stack when it loads or fills, so the demo against a backend
runs on a machine without torch.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..engine.canvas import AUTO_LENGTH, HoleResult, InfillCanvas, InfillResult, StepEvent
from ..engine.options import SamplingOptions
from .history import StepRecord
from .render import STOP_GLYPH

FillStream = Generator[tuple[InfillCanvas, StepEvent], None, InfillResult]


@dataclass(frozen=True)
class DemoSettings:
    """The knobs the settings screen edits: the sampler options and the tokens per hole."""

    options: SamplingOptions = dataclasses.field(default_factory=SamplingOptions)
    length: int | str = "auto"

    @property
    def hole_width(self) -> int:
        """How many mask tokens one hole gets on the canvas (``auto`` holes get a generous trimmed span)."""
        return AUTO_LENGTH if self.length == "auto" else int(self.length)

    def rows(self) -> tuple[tuple[str, str], ...]:
        """(name, value) pairs for the side panel."""
        o = self.options
        return (
            ("algorithm", o.alg),
            ("temperature", f"{o.temperature:g}"),
            ("steps", _pace(o)),
            (
                "length",
                f"auto ({AUTO_LENGTH}, trimmed)" if self.length == "auto" else f"{self.length} tokens",
            ),
        )


def _pace(o) -> str:
    """What the steps setting means for this run: a fixed count, or how many tokens each step reveals."""
    if o.steps is not None:
        return str(o.steps)
    per = "1 token" if o.tokens_per_step == 1 else f"{o.tokens_per_step} tokens"
    if o.threshold is None:
        extra = ""
    elif o.runs:
        extra = f", and the run after it while >= {o.threshold:g}"
    else:
        extra = f", or all >= {o.threshold:g}"
    return f"{per} per step{extra}"


@dataclass(frozen=True)
class RunnerInfo:
    """What the side panel says about the model."""

    name: str
    device: str
    dtype: str
    note: str = ""  # e.g. that the fallback tiny model produces noise


class FillRunner(Protocol):
    """A source of fills. ``load`` and ``stream`` run on a worker thread; the token helpers on the UI thread."""

    def load(self) -> RunnerInfo:
        """Make the model ready (idempotent, may take long) and describe it."""
        ...

    def stream(self, text: str, settings: DemoSettings) -> FillStream:
        """Start a fill of every ``<|mask|>`` hole of ``text``: one ``(canvas, event)`` per denoising step."""
        ...

    def token_text(self, token_id: int) -> str:
        """How to show a token in the code view."""
        ...


SPECIAL_GLYPH = "◆"


class EngineRunner:
    """Fills with a real checkpoint (or the bundled default) through the engine's infill stream.

    ``cache``: denoise with the context key/value cache (``fill``'s and the editor's fast decoding); each step
    then costs a pass over the holes' block instead of the whole canvas, so the sample's first fill takes
    seconds, not a minute, and still reveals one token per step in the sampler's order.

    ``lookahead_block_size``: the block width to decode in instead of the settings' when the model has a learned
    lookahead (the bundled default): its heads read little past a mask, so it writes well only left to right, as
    ``fill`` and the editors decode it (in the demo's blocks of 8 the built-in sample came out as ``a, = b,``).
    None keeps the settings' width for every model (the user chose it).

    ``settle``: text -> one test per hole (or None) of whether the hole's cut, as the editor would cut it, is
    decided (:func:`~diffucoder_lsp.engine.infill.infill_stream`); a hole then stops instead of writing on to its
    full width. ``cut``: (text, the holes' fills) -> each hole's text as the editor would insert it, which the
    screen shows by striking through the rest. The caller supplies both, the tests and the cut being the
    language server's."""

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        quant: str = "none",
        max_context_tokens: int | None = None,
        cache: bool = False,
        lookahead_block_size: int | None = None,
        settle: Callable[[str], list | None] | None = None,
        cut: Callable[[str, list[str]], list[str]] | None = None,
    ) -> None:
        self.model_spec = model
        self.cache = cache
        self.lookahead_block_size = lookahead_block_size
        self.settle = settle
        self.cut = cut  # the screen strikes through what the editor would cut (None: nothing struck)
        self.device = device
        self.dtype = dtype
        self.quant = quant
        self.max_context_tokens = max_context_tokens
        self._lm = None
        self._info: RunnerInfo | None = None
        self._lock = threading.Lock()
        self._text_cache: dict[int, str] = {}

    def load(self) -> RunnerInfo:
        with self._lock:  # the startup load and a first fill may both ask; load once
            if self._info is None:
                from ..model.loading import default_model_status, load_model

                lm = load_model(self.model_spec, device=self.device, dtype=self.dtype, quant=self.quant)
                note = ""
                if (
                    self.model_spec in (None, "", "default")
                    and default_model_status()["kind"] == "tiny-fallback"
                ):
                    note = "tiny random fallback model: its output is noise"
                elif self._left_to_right(lm):
                    note = (
                        "decoded left to right: this model reads little past a mask (--block-size N to widen)"
                    )
                self._lm = lm
                local = lm.name == "default" or Path(lm.name).expanduser().exists()
                self._info = RunnerInfo(
                    name=lm.path.name if local else lm.name,  # a folder by its name, a hub id as given
                    device=str(lm.device),
                    dtype=str(lm.dtype).removeprefix("torch."),
                    note=note,
                )
            return self._info

    def _left_to_right(self, lm) -> bool:
        return self.lookahead_block_size is not None and bool(getattr(lm.config, "learned_lookahead", False))

    def stream(self, text: str, settings: DemoSettings) -> FillStream:
        from ..engine.infill import infill_stream

        self.load()
        options = settings.options
        denoiser = None
        if self.cache and not options.exact:  # the reference decoder reads the full canvas
            from ..engine.cache import CachedContextDenoiser

            denoiser = CachedContextDenoiser(self._lm.model, 0)
        if self._left_to_right(self._lm) and not options.exact and options.alg != "origin":
            options = dataclasses.replace(options, block_size=self.lookahead_block_size)
        # the reference decoder stays the reference; a fixed length asks for every position
        settle = (
            self.settle(text) if self.settle and not options.exact and settings.length == "auto" else None
        )
        return infill_stream(
            self._lm,
            text,
            length=settings.length,
            options=options,
            max_context_tokens=self.max_context_tokens,
            denoiser=denoiser,
            settle=settle,
        )

    def token_text(self, token_id: int) -> str:
        cached = self._text_cache.get(token_id)
        if cached is not None:
            return cached
        tok = self._lm.tokenizer
        if token_id in tok.stop_ids:
            text = STOP_GLYPH
        elif token_id in tok.special_ids or token_id >= tok.vocab_size:
            text = SPECIAL_GLYPH
        else:
            text = tok.decode([token_id], skip_special=False)
        self._text_cache[token_id] = text
        return text


class RemoteRunner:
    """Fills on a backend (``diffucoder backend``): the same stream, denoised on another machine. The canvas
    and every step's tokens (with their texts) come as server-sent events; closing the stream cancels the fill
    there. The token comes from ``DIFFUCODER_TOKEN``."""

    def __init__(self, url: str, *, max_context_tokens: int | None = None, transport=None) -> None:
        from ..engine.remote import RemoteBackend, RemoteConfig

        self.client = RemoteBackend(RemoteConfig(url), transport=transport)
        self.max_context_tokens = max_context_tokens
        self._info: RunnerInfo | None = None
        self._texts: dict[int, str] = {}
        self._stops: frozenset[int] = frozenset()

    def load(self) -> RunnerInfo:
        if self._info is None:
            info = self.client.model_info()
            self._info = RunnerInfo(name=str(info.get("id", "?")), device=self.client.url, dtype="remote")
        return self._info

    def stream(self, text: str, settings: DemoSettings) -> FillStream:
        o = settings.options
        body = {
            "text": text,
            "length": settings.length,
            "decoding": "exact" if o.exact else "plain",
            "steps": o.steps,
            "tokens_per_step": o.tokens_per_step,
            "alg": o.alg,
            "alg_temp": o.alg_temp,
            "temperature": o.temperature,
            "top_p": o.top_p,
            "top_k": o.top_k,
            "seed": o.seed,
            "eos_penalty": o.eos_penalty,
            "threshold": o.threshold,
            "entropy_bound": o.entropy_bound,
            "block_size": o.block_size,
            "cache": False,  # as EngineRunner: full-canvas passes
            "context_tokens": self.max_context_tokens,
            "raw": True,
        }
        return self._events(body)

    def _events(self, body: dict) -> FillStream:
        from ..engine.remote import BackendError, error_from_event

        start = time.perf_counter()
        canvas = None
        events = self.client.stream(body)
        try:
            for kind, data in events:
                if kind == "canvas":
                    canvas = InfillCanvas(
                        ids=list(data["ids"]),
                        hole_spans=[tuple(s) for s in data["hole_spans"]],
                        auto=list(data["auto"]),
                        kept_prefix=data["kept_prefix"],
                        kept_suffix=data["kept_suffix"],
                        segments=list(data["segments"]),
                        leads=list(data["leads"]),
                    )
                    self._stops = frozenset(data.get("stop_ids", ()))
                elif kind == "step" and canvas is not None:
                    self._texts.update(zip(data["tokens"], data["texts"], strict=True))
                    yield (
                        canvas,
                        StepRecord(
                            step=data["step"],
                            total_steps=data["total_steps"],
                            positions=tuple(data["positions"]),
                            tokens=tuple(data["tokens"]),
                            confidences=tuple(data["confidences"]),
                            remaining=data["remaining"],
                            elapsed=time.perf_counter() - start,
                        ),
                    )
                elif kind == "done":
                    return _result(data)
                elif kind == "error":
                    raise error_from_event(data)
        finally:
            events.close()  # a cancelled run: the backend drops the request at its next step
        raise BackendError("the backend closed the stream before the fill ended")

    def token_text(self, token_id: int) -> str:
        if token_id in self._stops:
            return STOP_GLYPH
        return self._texts.get(token_id, SPECIAL_GLYPH)


def _result(record: dict) -> InfillResult:
    holes = [
        HoleResult(
            text=h["text"],
            token_ids=list(h["token_ids"]),
            reveal_step=list(h["reveal_step"]),
            confidence=list(h["confidence"]),
            lead=h.get("lead", ""),
        )
        for h in record["holes"]
    ]
    return InfillResult(
        text=record["text"],
        holes=holes,
        steps=record["steps"],
        elapsed_ms=record["elapsed_ms"],
        forward_passes=record.get("forward_passes", 0),
    )
