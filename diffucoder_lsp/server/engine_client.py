"""The server's only door to the model: loading it, running infills, reporting state and failures.

* Lifecycle: the model loads in the background (on the model thread, after ``initialized``) under a
  ``$/progress`` work-done progress when the client supports it; a settings change that touches the model
  (path, device, dtype, quant) reloads it, dropping the old one first so two models never share memory.
* State goes out as ``diffucoder/status`` notifications: ``{state: loading|ready|busy|error, model, device,
  lastLatencyMs, message}`` for editor status bars.
* Failures: an out-of-memory or backend error during a completion is shown once per kind with
  ``window/showMessage`` and the server keeps serving (that request answers empty); a failed load puts the state
  in ``error`` and completions answer empty until the settings change.
* :meth:`EngineClient.infill` is the one place that calls the engine (``infill_stream``), checking
  ``should_stop`` between denoising steps; it picks the denoiser (the context key/value cache by default,
  ``contextCache: false`` for full-canvas passes) and the sampling options from the settings.
* Confidence gate: :meth:`EngineClient.complete` scores each completion (:mod:`diffucoder_lsp.engine.confidence`)
  and withholds one scored below ``minConfidence`` (default: the loaded model's ``calibration.json``, else off)
  as a :class:`WithheldText`; being a completion result like any other, it is cached (and speculated) as such.

* A ``model`` that is a backend's URL loads a :class:`~diffucoder_lsp.server.remote_engine.RemoteModel`: the
  same fills, denoised there. Torch is never imported here: the engine and the loader do that, lazily, on the
  model thread (and never for a backend's URL).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from lsprotocol import types

from ..engine.confidence import DEFAULT_STATISTIC, Calibration, read_calibration, statistic, suggestion_tokens
from ..engine.remote import is_url
from .context import build_context
from .postprocess import SINGLE, decide_mode, settled, split_at_cursor, trim_settled
from .remote_engine import RemoteModel
from .results import Fill, WithheldText
from .scheduler import Cancelled, Scheduler
from .settings import Settings

log = logging.getLogger(__name__)

MARKER = "<|mask|>"
STATUS_METHOD = "diffucoder/status"
LOADING, READY, BUSY, ERROR = "loading", "ready", "busy", "error"
_progress_ids = itertools.count(1)


def completion_span(prefix: str, suffix: str, s: Settings) -> tuple[str, int]:
    """The completion mode at a cursor (single line or block) and its span in tokens."""
    line_prefix, line_suffix, _ = split_at_cursor(prefix, suffix)
    mode = decide_mode(line_prefix, line_suffix)
    return mode, s.max_tokens_single_line if mode == SINGLE else s.max_tokens


def sampling_options(s: Settings):
    from ..engine.sampler import SamplingOptions

    return SamplingOptions(
        steps=s.steps,
        tokens_per_step=s.tokens_per_step,
        alg=s.alg,
        temperature=s.temperature,
        top_p=s.top_p,
        seed=s.seed,
        eos_penalty=s.eos_penalty,
        threshold=s.threshold,
        entropy_bound=s.entropy_bound,
        block_size=s.decoding_block(),
    )


def make_denoiser(lm, s: Settings, store=None, between_layers=None):
    """The engine's context-cached denoiser (Fast-dLLM-style) unless disabled; None = full-canvas passes.
    ``store`` (a ContextStore) lets it start from the previous request's context keys/values;
    ``between_layers`` runs before each layer of its full passes (the job's step-boundary check, through which
    a long job lets interactive work in)."""
    if not s.context_cache:
        return None
    from ..engine.cache import CachedContextDenoiser

    return CachedContextDenoiser(
        lm.model,
        refresh_every=s.cache_refresh_every,
        store=store if s.context_reuse else None,
        between_layers=between_layers,
    )


STORED_STREAMS = 4  # documents whose last context keys/values are kept, at most ...
# ... and at most this many bytes of them besides the current document's, which are held in bf16
# (ContextStore.compact): the bundled model's keys/values take 46 KB a token in fp32 (30 layers), 26 MB for a
# 560-token canvas, 13 MB compacted, where the 10.5M model's took 2 MB
STORED_BYTES = 64 * 2**20


def error_kind(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".lower()
    if "out of memory" in text or type(exc).__name__ == "OutOfMemoryError":
        return "oom"
    return type(exc).__name__


class EngineClient:
    def __init__(self, ls: Any, scheduler: Scheduler) -> None:
        self.ls = ls
        self.scheduler = scheduler
        self.lm: Any = None
        self.state = LOADING
        self.model_name = ""
        self.device = ""
        self.message = ""
        self.last_latency_ms: float | None = None
        self.loaded_key: tuple | None = None
        self._reported: set[str] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stores: OrderedDict[str, Any] = OrderedDict()  # document -> ContextStore, most recent last
        self.calibration: Calibration | None = None  # the loaded model's calibration.json
        self._gate_noted: set[tuple] = set()

    @classmethod
    def for_model(cls, lm: Any) -> EngineClient:
        """A client with no editor behind it, for tools that run completions exactly as the server does
        (``diffucoder eval calibrate``); its calibration is the model folder's."""
        client = cls(ls=None, scheduler=None)  # type: ignore[arg-type]
        client.lm, client.state = lm, READY
        client.calibration = read_calibration(getattr(lm, "path", None))
        return client

    # --- status ---------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.lm is not None and self.state in (READY, BUSY)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "model": self.model_name,
            "device": self.device,
            "lastLatencyMs": None if self.last_latency_ms is None else round(self.last_latency_ms, 1),
            "message": self.message,
        }

    def set_state(self, state: str, message: str | None = None) -> None:
        """Change state and notify the client; safe to call from any thread."""
        self.state = state
        if message is not None:
            self.message = message
        self._on_loop(self._send_status, self.status())

    def _on_loop(self, send: Callable[..., None], *args: Any) -> None:
        """Run ``send(*args)`` on the server's event loop: at once when called on it (so notifications sent
        from the loop go out in the order they were made: a failed load's message before its error status),
        else queued there from the calling thread. Nothing when the loop is gone."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            send(*args)
        else:
            loop.call_soon_threadsafe(send, *args)

    def _send_status(self, payload: dict[str, Any]) -> None:
        try:
            self.ls.protocol.notify(STATUS_METHOD, payload)
        except Exception:  # the client went away
            log.debug("status notification failed", exc_info=True)

    def report_once(self, exc: BaseException, doing: str) -> None:
        """Show an engine failure to the user, once per kind of failure; always log it."""
        kind = error_kind(exc)
        log.error("%s failed: %s: %s", doing, type(exc).__name__, exc, exc_info=kind != "oom")
        if kind in self._reported:
            return
        self._reported.add(kind)
        if kind == "oom":
            text = (
                f"DiffuCoder ran out of memory while {doing}. Try a smaller contextTokens or maxTokens, "
                "quant 4bit/8bit, or device cpu. The server keeps running."
            )
        else:
            text = f"DiffuCoder failed while {doing}: {type(exc).__name__}: {exc}. The server keeps running."
        self.show(types.MessageType.Error, text)

    def show(self, kind: types.MessageType, text: str) -> None:
        def send() -> None:
            try:
                self.ls.window_show_message(types.ShowMessageParams(type=kind, message=text))
            except Exception:
                log.debug("showMessage failed", exc_info=True)

        self._on_loop(send)

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def load(self, settings: Settings) -> bool:
        """(Re)load the model for ``settings`` on the model thread; True when it is ready."""
        self.loop = asyncio.get_running_loop()
        name = settings.model or "default"
        self.model_name = name
        self.set_state(LOADING, f"loading {name}")
        token = await self._progress_begin(f"Loading {name}")
        ok = False
        try:
            lm = await self.scheduler.run(
                lambda _stop: self._load_blocking(settings), key="__model__", label="load"
            )
            ok = True
        except Cancelled:
            return False  # a newer load took over
        except Exception as exc:
            self.lm, self.loaded_key, self.device = None, None, ""
            self._reported.discard(error_kind(exc))
            self.report_once(exc, f"loading the model {name!r}")
            self.set_state(ERROR, f"cannot load {name}: {exc}")
            return False
        finally:
            self._progress_end(token, ok)
        self.lm = lm
        self.loaded_key = settings.model_key()
        self.model_name = str(getattr(lm, "name", name))
        self.device = str(getattr(lm, "device", ""))
        self._reported.clear()
        self.calibration = (
            lm.calibration if isinstance(lm, RemoteModel) else read_calibration(getattr(lm, "path", None))
        )
        self._gate_noted.clear()
        if self.calibration is not None:
            cal = self.calibration
            log.info(
                "%s is calibrated: completions scored below %.3f (%s) are withheld by default",
                self.model_name,
                cal.min_confidence,
                cal.statistic,
            )
        self.set_state(READY, f"{self.model_name} on {self.device}")
        return True

    def _load_blocking(self, settings: Settings) -> Any:
        if isinstance(self.lm, RemoteModel):
            self.lm.close()
        self.lm = None  # drop the old model before reading the new one
        self.calibration = None
        self._stores.clear()  # keys/values of the old model
        if is_url(settings.model):
            # the token: the backendToken setting, else DIFFUCODER_TOKEN
            return RemoteModel(settings.model, settings.backend_token).connect()
        gc.collect()
        from ..model.loading import load_model

        return load_model(settings.model, device=settings.device, dtype=settings.dtype, quant=settings.quant)

    async def _progress_begin(self, title: str) -> str | None:
        caps = getattr(self.ls, "client_capabilities", None)
        window = getattr(caps, "window", None)
        if not getattr(window, "work_done_progress", False):
            return None
        token = f"diffucoder/load/{next(_progress_ids)}"
        try:
            await asyncio.wait_for(self.ls.work_done_progress.create_async(token), timeout=10)
        except Exception:
            log.debug("client refused a progress token", exc_info=True)
            return None
        self.ls.work_done_progress.begin(
            token, types.WorkDoneProgressBegin(title="DiffuCoder", message=title, cancellable=False)
        )
        return token

    def _progress_end(self, token: str | None, ok: bool) -> None:
        if token is None:
            return
        try:
            self.ls.work_done_progress.end(
                token, types.WorkDoneProgressEnd(message="ready" if ok else "failed")
            )
        except Exception:
            log.debug("progress end failed", exc_info=True)

    # --- inference (called on the model thread) -------------------------------------------------------------

    def store_for(self, stream: str | None):
        """The ContextStore of a document (created on first use; the least recently used are dropped beyond
        ``STORED_STREAMS`` documents or ``STORED_BYTES`` of the others' keys/values, which bounds memory
        without a hook on didClose), or None without a stream. Called on the model thread only."""
        if stream is None:
            return None
        store = self._stores.pop(stream, None)
        if store is None:
            from ..engine.reuse import ContextStore

            store = ContextStore()
        self._stores[stream] = store
        for other in self._stores.values():
            if other is not store:
                other.compact()
        others = sum(s.nbytes for s in self._stores.values()) - store.nbytes
        while len(self._stores) > STORED_STREAMS or (len(self._stores) > 1 and others > STORED_BYTES):
            _, dropped = self._stores.popitem(last=False)
            others -= dropped.nbytes
        return store

    def count_tokens(self, text: str) -> int:
        lm = self.lm  # read once: a model change on the model thread may drop it at any moment
        if lm is None:
            raise Cancelled("no model loaded (it is being replaced)")
        if isinstance(lm, RemoteModel):
            return lm.count_tokens(text)
        return len(lm.tokenizer.encode(text)) if text else 0

    def invoked(self, settings: Settings) -> Settings:
        """The settings of a request the user made by hand: ranked lines ``rankInvoked`` wide (None: the width
        the model's calibration measured them at, when it did), else ``settings`` unchanged. Ranking runs the
        model in process, so a backend's model is not ranked."""
        width = settings.rank_invoked
        cal = self.calibration
        if width is None:
            measured = (
                (cal.ranked.decoding or {}).get("rankLines") if cal is not None and cal.ranked else None
            )
            width = measured if isinstance(measured, int) and 0 < measured <= 16 else 0
        if width <= 0 or width == settings.rank_lines or isinstance(self.lm, RemoteModel):
            return settings
        return dataclasses.replace(settings, rank_lines=width)

    def gate(self, settings: Settings, ranked: bool = False) -> tuple[str, float]:
        """(statistic, threshold) of the confidence gate: ``minConfidence`` when set, else the model's calibrated
        threshold when it was measured under the same unmasking algorithm and temperature (a confidence means
        something else under another), else 0 (off). The statistic is the calibration's, else the shipped default.
        ``ranked``: the completion is a ranked line (``rankLines``), gated by the calibration's ranked part when
        it has one (a beam search: no unmasking algorithm or temperature to match)."""
        cal = self.calibration
        if ranked and cal is not None and cal.ranked is not None:
            cal = cal.ranked
            name = cal.statistic
            return name, (cal.min_confidence if settings.min_confidence is None else settings.min_confidence)
        name = cal.statistic if cal is not None else DEFAULT_STATISTIC
        if settings.min_confidence is not None:
            return name, settings.min_confidence
        if cal is None:
            return name, 0.0
        measured_t = (cal.decoding or {}).get("temperature")
        differs = []
        if cal.alg is not None and cal.alg != settings.alg:
            differs.append(f"alg {cal.alg}, not {settings.alg}")
        if isinstance(measured_t, (int, float)) and float(measured_t) != settings.temperature:
            # a token's confidence is read after temperature scaling: at 0.2 most are 1.0 and the gate is blind
            differs.append(f"temperature {measured_t:g}, not {settings.temperature:g}")
        if differs:
            note = tuple(differs)
            if note not in self._gate_noted:
                self._gate_noted.add(note)
                log.info(
                    "the model's confidence calibration was measured with %s: no gate by default "
                    "(set minConfidence to choose one)",
                    " and ".join(differs),
                )
            return name, 0.0
        return name, cal.min_confidence

    def complete(
        self,
        prefix: str,
        suffix: str,
        *,
        settings: Settings,
        max_tokens: int,
        should_stop: Callable[[], bool],
        stream: str | None = None,
    ) -> Fill:
        """Fill ``max_tokens`` masks between the context around the cursor (cut to the token budget).
        ``stream`` (the document) lets consecutive completions reuse context keys/values. A completion scored
        below the confidence gate (:meth:`gate`) comes back as a :class:`WithheldText`."""
        ctx = self._context(prefix, suffix, settings)
        text, window = self._completion_text(ctx, max_tokens)
        line_prefix, line_suffix, _ = split_at_cursor(prefix, suffix)
        block = decide_mode(line_prefix, line_suffix) != SINGLE
        ranked = settings.rank_lines > 0 and line_prefix.strip() != ""
        ranked_fill = ranked and self.lm is not None and not isinstance(self.lm, RemoteModel)
        if ranked_fill:
            # the rest of a line the user is typing: one line, ranked (at a blank line a block is the diffusion's)
            fill = self._ranked(ctx, settings, min(max_tokens, settings.max_tokens_single_line), should_stop)
        else:
            fill = self._denoised(
                prefix, suffix, text, window, block, line_prefix, settings, max_tokens, should_stop, stream
            )
        name, threshold = self.gate(settings, ranked=ranked_fill)
        score = fill.confidence  # a backend scored it already
        if score is None and fill.tokens:
            score = statistic(fill.tokens[0], name)
        texts = fill.texts
        if score is not None and threshold > 0 and score < threshold and texts[0].strip():
            texts = [WithheldText(name, score, threshold)]
            log.debug("completion withheld: %s", texts[0].reason())
        return Fill(texts, fill.steps, fill.elapsed_ms, ctx.tokens, fill.tokens, score)

    def _denoised(
        self, prefix, suffix, text, window, block, line_prefix, settings, max_tokens, should_stop, stream
    ):
        """The completion through the diffusion engine (:meth:`infill`), cut where the editor cuts it."""
        # shown up to its first line break, so a newline token ends it; not at the start of a line, where token
        # healing has the first token re-write the newline before the cursor
        single = not block and line_prefix.strip() != ""
        # a block ends once what is written decides where the editor cuts it (it left the cursor's scope)

        def decided(written: str) -> bool:
            return settled(written, prefix, suffix)

        fill = self.infill(
            text,
            [max_tokens],
            settings=settings,
            should_stop=should_stop,
            window=window,
            stream=stream,
            end_at_newline=single,
            settle=[decided] if block else None,
        )
        if block and isinstance(fill.texts[0], str) and decided(fill.texts[0]):
            # the unfinished line that decided the cut is not part of the completion, nor of what the cache
            # offers again after the user types part of it
            fill = dataclasses.replace(fill, texts=[trim_settled(fill.texts[0])])
        return fill

    def _ranked(self, ctx, settings: Settings, max_tokens: int, should_stop: Callable[[], bool]) -> Fill:
        """The rest of the cursor's line as the best of ``rankLines`` candidate lines (:mod:`..engine.ranking`)."""
        import time

        from ..engine.ranking import rank_with

        start = time.perf_counter()
        ranking = rank_with(
            self.lm,
            ctx.prefix,
            ctx.suffix,
            width=settings.rank_lines,
            max_tokens=max_tokens,
            max_context_tokens=settings.context_tokens,
            should_stop=should_stop,
        )
        if ranking is None:
            raise Cancelled("ranking stopped")
        elapsed = (time.perf_counter() - start) * 1000.0
        best = ranking.best
        # the gate reads the line's tokens as the base wrote them (their probabilities under it)
        probs = [math.exp(lp) for lp in best.token_logprobs]
        tokens = suggestion_tokens(best.token_ids, probs, "maskgit_plus", self.lm.tokenizer, ranking.lead)
        return Fill([best.text], ranking.passes, elapsed, ctx.tokens, (tokens,))

    def _context(self, prefix: str, suffix: str, settings: Settings):
        return build_context(
            prefix,
            suffix,
            budget=settings.context_tokens,
            count=self.count_tokens,
            prefix_share=settings.prefix_share,
        )

    @staticmethod
    def _completion_text(ctx, max_tokens: int) -> tuple[str, int]:
        """The text with its one hole and the context window a completion runs with (what :meth:`warm` must
        reproduce exactly for the request to find its context computed)."""
        return ctx.prefix + MARKER + ctx.suffix, ctx.tokens + max_tokens + 64

    def warm(
        self,
        prefix: str,
        suffix: str,
        *,
        settings: Settings,
        max_tokens: int,
        should_stop: Callable[[], bool],
        stream: str,
    ) -> bool:
        """While the user pauses: compute the context keys/values of the completion :meth:`complete` would run
        at this cursor (same window, same ``max_tokens`` masks) into the document's store, so that request skips
        its context pass. ``max_tokens`` 0 (cursor unknown, as after opening) warms the document without a hole,
        and only when it fits the window whole: elsewhere there is no telling which part the user will edit.
        Returns whether the store was filled; stops between layers when asked."""
        from ..engine.infill import prepare_infill
        from ..engine.reuse import warm_store

        lm = self.lm
        if lm is None or isinstance(lm, RemoteModel):  # a backend keeps no state between requests
            return False
        ctx = self._context(prefix, suffix, settings)
        tok = lm.tokenizer
        if max_tokens:
            text, window = self._completion_text(ctx, max_tokens)
            window = min(lm.config.max_position_embeddings, window)  # as infill_stream clamps it
            heal = not sampling_options(settings).exact  # the canvas the request will build (infill_stream)
            ids = prepare_infill(
                tok, text, length=[max_tokens], marker=MARKER, context_window=window, heal=heal
            ).ids
        elif ctx.prefix_cut or ctx.suffix_cut:
            return False
        else:
            ids = tok.encode(ctx.prefix) + tok.encode(ctx.suffix)
        return warm_store(lm.model, ids, self.store_for(stream), should_stop)

    def infill(
        self,
        text: str,
        lengths: Sequence[int],
        *,
        settings: Settings,
        should_stop: Callable[[], bool],
        window: int | None = None,
        stream: str | None = None,
        end_at_newline: bool = False,
        settle: Sequence[Callable[[str], bool] | None] | None = None,
    ) -> Fill:
        """THE engine call: fill every ``MARKER`` hole of ``text`` jointly; stops between steps when asked.
        ``end_at_newline``: a hole also ends at its first newline token (a single-line completion is cut there:
        the steps after it would be wasted). ``settle``: per hole, a test that the text written so far already
        decides the editor's cut (``infill_stream``'s ``settle``; a backend is asked to apply the same test to a
        single hole, with the text it is sent)."""
        lm = self.lm
        if lm is None:
            raise Cancelled("no model loaded")
        if isinstance(lm, RemoteModel):  # the gate's statistic: the backend scores the fill under it
            window = window or settings.context_tokens + sum(lengths) + 64
            args = (settings, should_stop, window, stream, end_at_newline, self.gate(settings)[0])
            return lm.infill(text, lengths, *args, settle=bool(settle and any(settle)) and len(lengths) == 1)
        from ..engine.infill import infill_stream, text_to_stop

        gen = infill_stream(
            lm,
            text,
            length=list(lengths),
            options=sampling_options(settings),
            marker=MARKER,
            max_context_tokens=window or settings.context_tokens + sum(lengths) + 64,
            denoiser=make_denoiser(lm, settings, self.store_for(stream), between_layers=should_stop),
            end_early=settings.end_early,  # every completion is cut at its first stop token below
            end_ids=(lm.tokenizer.stop_ids | lm.tokenizer.newline_ids) if end_at_newline else None,
            settle=settle,
        )
        try:
            while True:
                if should_stop():
                    raise Cancelled("stopped between denoising steps")
                try:
                    next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
        finally:
            gen.close()
        tok = lm.tokenizer
        texts, tokens = [], []
        for hole in result.holes:
            texts.append(text_to_stop(tok, hole))  # token healing: the lead re-spelled text before the hole
            tokens.append(suggestion_tokens(hole.token_ids, hole.confidence, settings.alg, tok, hole.lead))
        return Fill(texts, result.steps, result.elapsed_ms, tokens=tuple(tokens))
