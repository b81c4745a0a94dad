"""The language server: pygls ``LanguageServer`` subclass, document sync, settings and completion handlers.

Request flow for a completion: the handler snapshots the document text and version on the event loop, decides
single-line or block, answers from the cache when it can, otherwise schedules the engine on the model thread
(debounced for automatic triggers, cancelling the previous job of the same document), drops the result if the
document moved on meanwhile, and post-processes it into an edit. While the user pauses (a document opened, the
cursor moved as a code-action request reports, an edit with no completion after it) a background job computes
the context the next completion there starts from, and after a completion is shown another one computes the
completion that follows it once accepted (:mod:`diffucoder_lsp.server.background`). Commands and code actions
live in :mod:`diffucoder_lsp.server.actions`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from ..errors import BadInputError
from .actions import register_actions
from .background import speculate_after, warm_later
from .cache import CompletionCache
from .documents import UTF16, Document, DocumentStore
from .engine_client import BUSY, ERROR, READY, EngineClient, WithheldText, completion_span
from .host import Answer
from .postprocess import postprocess
from .protocol import DiffuCoderProtocol
from .scheduler import Cancelled, Job, Scheduler
from .settings import SECTION, Settings, known_key, parse_settings, problems_message, section_of

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("diffucoder-lsp")
    except Exception:
        return "0"


class LspLogHandler(logging.Handler):
    """Forwards this package's log records to the client as ``window/logMessage`` (thread-safe)."""

    LEVELS = {
        logging.ERROR: types.MessageType.Error,
        logging.WARNING: types.MessageType.Warning,
        logging.INFO: types.MessageType.Info,
    }

    def __init__(self, server: DiffuCoderServer) -> None:
        super().__init__(level=logging.INFO)
        self.server = server

    def emit(self, record: logging.LogRecord) -> None:
        loop = self.server.engine.loop
        if loop is None or loop.is_closed():
            return
        kind = self.LEVELS.get(record.levelno, types.MessageType.Log)
        if record.levelno >= logging.ERROR:
            kind = types.MessageType.Error
        text = record.getMessage()

        def send() -> None:
            try:
                self.server.window_log_message(types.LogMessageParams(type=kind, message=text))
            except Exception:
                pass

        try:
            loop.call_soon_threadsafe(send)
        except RuntimeError:  # loop closed meanwhile
            pass


class DiffuCoderServer(LanguageServer):
    def __init__(self, base_settings: Settings | None = None) -> None:
        super().__init__(
            "diffucoder",
            _version(),
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            protocol_cls=DiffuCoderProtocol,
        )
        self.base_settings = base_settings or Settings()
        self.settings = self.base_settings
        self.documents = DocumentStore()
        self.cache = CompletionCache(self.settings.cache_size)
        self.scheduler = Scheduler(on_start=self._job_started, on_finish=self._job_finished)
        self.engine = EngineClient(self, self.scheduler)
        self.encoding = UTF16
        self.pending_problems: list[str] = []
        self._tasks: set[asyncio.Task] = set()
        self.last_uri: str | None = None  # the document the user last opened, edited or completed in

    # --- plumbing -------------------------------------------------------------------------------------------

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start_io_async(self, stdin=None, stdout=None) -> None:
        """``start_io`` (pygls') lands here: serve stdio with our reader (:mod:`.transport`), not pygls'."""
        from .transport import start_io

        start_io(self, stdin, stdout)

    def shutdown(self) -> None:
        """Also on a lost connection (no LSP shutdown): stop the model thread's work at the next step."""
        self.scheduler.shutdown()
        super().shutdown()

    def report_server_error(self, error: Exception, source) -> None:
        """Malformed input from the client is logged, not shown: the server just carries on."""
        log.error("protocol error (%s): %s", getattr(source, "__name__", source), error)

    def _job_started(self, job: Job) -> None:
        # the status bar shows the user's requests only, and never hides a load or an error behind "busy"
        # (a request queued before a model change would otherwise end as "ready" while the model is replaced)
        if job.label != "load" and not job.background and self.engine.state == READY:
            self.engine.set_state(BUSY)

    def _job_finished(self, job: Job, elapsed_ms: float, error: BaseException | None) -> None:
        if job.label == "load" or job.background:
            return
        if self.scheduler.outer is not None and self.scheduler.outer is not job:
            return  # served between the steps of a long fill that still runs: the status stays busy
        if error is None:
            self.engine.last_latency_ms = (time.perf_counter() - job.created) * 1000
        if self.engine.state == BUSY and self.engine.lm is not None:
            self.engine.set_state(READY)

    def position_to_offset(self, doc: Document, pos: types.Position) -> int:
        return doc.offset_at(pos.line, pos.character, self.encoding)

    def offset_to_position(self, doc: Document, offset: int) -> types.Position:
        line, character = doc.position_at(offset, self.encoding)
        return types.Position(line=line, character=character)

    # --- settings -------------------------------------------------------------------------------------------

    def apply_settings(self, raw: Any, *, initial: bool = False) -> list[str]:
        """Merge ``raw`` into the current settings; reload the model when it changed. Returns the problems."""
        old = self.settings
        new, problems = parse_settings(raw, base=old)
        self.settings = new
        self.cache.resize(new.cache_size)
        if new.sampling_key() != old.sampling_key():
            self.cache.clear()
        if problems and not initial:
            self.show(types.MessageType.Warning, problems_message(problems))
        if not initial and new.model_key() != old.model_key():
            log.info("model settings changed: reloading %s", new.model or "the default model")
            self.spawn(self.load_model(new))
        return problems

    async def load_model(self, settings: Settings) -> None:
        """(Re)load the model, then warm the context of the document the user last worked in."""
        if await self.engine.load(settings) and self.last_uri is not None:
            warm_later(self, self.last_uri)

    def show(self, kind: types.MessageType, text: str) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=text))

    def client_supports(self, path: str) -> bool:
        obj: Any = self.client_capabilities
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return False
        return bool(obj)

    # --- completion -----------------------------------------------------------------------------------------

    def usable_document(self, uri: str) -> Document | None:
        doc = self.documents.get(uri)
        if doc is None:
            return None
        if not self.settings.language_enabled(doc.language_id):
            return None
        if self.documents.should_skip(doc, self.settings.max_document_chars) is not None:
            return None
        return doc

    def is_current(self, uri: str, doc: Document, version: int | None):
        return lambda: self.documents.get(uri) is doc and doc.version == version

    def span_at(self, prefix: str, suffix: str) -> tuple[str, int]:
        """The completion mode at a cursor (single line or block) and its span in tokens."""
        return completion_span(prefix, suffix, self.settings)

    async def complete_at(self, uri: str, position: types.Position, *, automatic: bool) -> Answer | None:
        doc = self.usable_document(uri)
        if doc is None or not self.engine.ready:
            return None
        s = self.settings if automatic else self.engine.invoked(self.settings)  # asked for by hand: ranked
        version, text = doc.version, doc.text
        offset = self.position_to_offset(doc, position)
        doc.cursor = offset
        self.last_uri = uri
        prefix, suffix = text[:offset], text[offset:]
        mode, max_tokens = self.span_at(prefix, suffix)
        key = (s.sampling_key(), mode)
        hit = self.cache.get(key, prefix, suffix)
        if hit is not None:
            raw = hit.fill
            doc.completed_version = version  # answered: nothing to warm here
        else:
            engine = self.engine

            def work(should_stop):
                return engine.complete(
                    prefix, suffix, settings=s, max_tokens=max_tokens, should_stop=should_stop, stream=uri
                )

            try:
                fill = await self.scheduler.run(
                    work,
                    key=uri,
                    is_current=self.is_current(uri, doc, version),
                    debounce_s=s.debounce_ms / 1000 if automatic else 0.0,
                    label="complete",
                )
            except Cancelled as exc:
                log.debug("completion for %s v%s dropped: %s", uri, version, exc.reason)
                return None
            except BadInputError as exc:
                log.info("no completion for %s: %s", uri, exc)
                return None
            except Exception as exc:
                self.engine.report_once(exc, "completing")
                if self.engine.state == BUSY:
                    self.engine.set_state(READY if self.engine.lm is not None else ERROR)
                return None
            doc.completed_version = version
            raw = fill.texts[0]
            self.cache.put(key, prefix, suffix, raw)
            if s is not self.settings and not isinstance(raw, WithheldText):
                # a suggestion asked for by hand stays while the user types through it (automatic requests)
                self.cache.put((self.settings.sampling_key(), mode), prefix, suffix, raw)
        if self.documents.get(uri) is not doc or doc.version != version:
            return None  # the document moved on while the model was working
        if isinstance(raw, WithheldText):
            self.withheld(raw, uri, automatic)
            return None
        completion = postprocess(raw, prefix, suffix, mode)
        if completion is None:
            return None
        answer = Answer(completion, offset, doc)
        speculate_after(self, answer, prefix, suffix)
        return answer

    def withheld(self, text: WithheldText, uri: str, automatic: bool) -> None:
        """A completion the confidence gate withheld answers empty. Automatic requests say why in the debug log
        only (they come at every pause); a request the user made (the editor's manual trigger) also gets one
        ``window/showMessage``, so the editor can say why nothing appeared."""
        log.debug("completion for %s withheld: %s", uri, text.reason())
        if automatic:
            return
        try:
            self.show(types.MessageType.Info, f"DiffuCoder: no suggestion, {text.reason()}")
        except Exception:  # no client attached (in-process use)
            log.debug("showMessage failed", exc_info=True)

    def answer_range(self, answer: Answer) -> types.Range:
        start = self.offset_to_position(answer.doc, answer.offset)
        end = self.offset_to_position(answer.doc, answer.offset + answer.completion.replace)
        return types.Range(start=start, end=end)


def build_server(base_settings: Settings | None = None) -> DiffuCoderServer:
    """A server with every handler registered."""
    server = DiffuCoderServer(base_settings)
    register_lifecycle(server)
    register_completion(server)
    register_actions(server)
    return server


def register_lifecycle(server: DiffuCoderServer) -> None:
    @server.feature(types.INITIALIZE)
    def initialize(ls: DiffuCoderServer, params: types.InitializeParams) -> None:
        enc = ls.workspace.position_encoding or UTF16
        ls.encoding = getattr(enc, "value", enc)
        ls.pending_problems = ls.apply_settings(params.initialization_options, initial=True)
        log.info("initialize: position encoding %s, settings %s", ls.encoding, ls.settings.to_json())

    @server.feature(types.INITIALIZED)
    def initialized(ls: DiffuCoderServer, params: types.InitializedParams) -> None:
        ls.engine.loop = asyncio.get_running_loop()
        handler = LspLogHandler(ls)
        logging.getLogger("diffucoder_lsp").addHandler(handler)
        if ls.pending_problems:
            ls.show(types.MessageType.Warning, problems_message(ls.pending_problems))
            ls.pending_problems = []
        ls.spawn(ls.load_model(ls.settings))

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: DiffuCoderServer, params: None) -> None:
        ls.scheduler.shutdown()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: DiffuCoderServer, params: types.DidOpenTextDocumentParams) -> None:
        td = params.text_document
        doc = ls.documents.open(td.uri, td.text, td.version, td.language_id)
        ls.documents.should_skip(doc, ls.settings.max_document_chars)
        warm_later(ls, td.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: DiffuCoderServer, params: types.DidChangeTextDocumentParams) -> None:
        doc = ls.documents.get(params.text_document.uri)
        if doc is None:
            log.warning("change for a document that is not open: %s", params.text_document.uri)
            return
        for change in params.content_changes:
            rng = getattr(change, "range", None)
            if rng is None:
                doc.apply_change(change.text)
            else:
                doc.apply_change(
                    change.text,
                    (rng.start.line, rng.start.character),
                    (rng.end.line, rng.end.character),
                    ls.encoding,
                )
        doc.version = params.text_document.version
        warm_later(ls, params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: DiffuCoderServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.scheduler.cancel(params.text_document.uri, "document closed")
        for kind in ("warm", "speculate"):
            ls.scheduler.cancel((kind, params.text_document.uri), "document closed")
        ls.documents.close(params.text_document.uri)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(
        ls: DiffuCoderServer, params: types.DidChangeConfigurationParams
    ) -> None:
        raw = params.settings
        ours = None
        if isinstance(raw, dict) and isinstance(raw.get(SECTION), dict):
            ours = raw[SECTION]
        elif isinstance(raw, dict) and any(known_key(k) for k in raw):
            ours = section_of(raw)
        elif ls.client_supports("workspace.configuration"):
            try:
                got = await ls.workspace_configuration_async(
                    types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
                )
                ours = got[0] if got else None
            except Exception:
                log.debug("workspace/configuration failed", exc_info=True)
        if ours is not None:
            ls.apply_settings(ours)


def register_completion(server: DiffuCoderServer) -> None:
    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: DiffuCoderServer, params: types.InlineCompletionParams):
        automatic = params.context is not None and (
            params.context.trigger_kind == types.InlineCompletionTriggerKind.Automatic
        )
        answer = await ls.complete_at(params.text_document.uri, params.position, automatic=automatic)
        if answer is None:
            return types.InlineCompletionList(items=[])
        item = types.InlineCompletionItem(insert_text=answer.completion.text, range=ls.answer_range(answer))
        return types.InlineCompletionList(items=[item])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))
    async def completion(ls: DiffuCoderServer, params: types.CompletionParams):
        automatic = params.context is None or (
            params.context.trigger_kind != types.CompletionTriggerKind.Invoked
        )
        answer = await ls.complete_at(params.text_document.uri, params.position, automatic=automatic)
        if answer is None:
            return types.CompletionList(is_incomplete=True, items=[])
        text = answer.completion.text
        first = text.lstrip().split("\n", 1)[0].rstrip("\r")
        label = first if len(first) <= 60 else first[:57] + "..."
        item = types.CompletionItem(
            label=label or text.strip()[:60],
            kind=types.CompletionItemKind.Text,
            detail="DiffuCoder",
            documentation=text if "\n" in text or len(first) > 60 else None,
            insert_text_format=types.InsertTextFormat.PlainText,
            text_edit=types.TextEdit(range=ls.answer_range(answer), new_text=text),
            filter_text=label or text.strip()[:60],
            sort_text="0",
            preselect=True,
        )
        return types.CompletionList(is_incomplete=True, items=[item])
