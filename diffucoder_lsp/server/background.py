"""Work the server does while nobody waits: warming the context, and speculating the completion after this one.

Both run as background jobs on the model thread (:mod:`diffucoder_lsp.server.scheduler`): any request the user
makes preempts them, at the next layer (warming) or denoising step (speculation), so they never cost a request
more than that (speculation also starts with the context pass, as warming does, for the same reason); they
are not shown in the status bar, and a failure is logged, never shown (the next request
reports one that persists).

* **Warming** (``warmContext``): after a document is opened, the cursor moves (an editor's code-action request
  says where) or an edit gets no completion, the server waits :data:`WARM_DELAY_S` of quiet and computes the
  keys/values of the canvas the next completion there would have, into the document's reuse store; that
  completion then makes no full context pass.
* **Speculation** (``speculate``): after a completion is shown, the server computes the one that would follow
  it once accepted (the document with the suggestion inserted, the cursor after it) into the completion cache,
  in a reuse store of its own (the document's keeps the text as it is, for when the suggestion is rejected).
  Accepting a suggestion makes editors ask again at once, and that request is answered from the cache; a chain
  of accepted suggestions stays instant as long as the model keeps ahead of the user (llama.vscode's
  "speculative FIM" does the same).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..errors import BadInputError
from .scheduler import Cancelled

if TYPE_CHECKING:
    from .host import Answer, ServerHost

log = logging.getLogger(__name__)
T = TypeVar("T")

WARM_DELAY_S = 0.3  # quiet time after an open, a cursor move or an edit before the context is warmed
# after a suggestion is shown: a user who types on (rather than reading it) preempts the speculation before it starts
SPECULATE_DELAY_S = 0.15
SPECULATION_STREAM = "#speculation"  # appended to a document's URI: the reuse store speculation works in


def in_background(
    ls: ServerHost,
    kind: str,
    uri: str,
    work: Callable[[Callable[[], bool]], T],
    is_current: Callable[[], bool],
    delay_s: float,
    done: Callable[[T], None] | None = None,
) -> None:
    """Run ``work`` as the background job ``kind`` of document ``uri`` (a newer one of the same kind replaces
    it) after ``delay_s``; ``done`` gets its result on the event loop. Stopped jobs end silently."""

    async def run() -> None:
        try:
            result = await ls.scheduler.run(
                work, key=(kind, uri), is_current=is_current, debounce_s=delay_s, label=kind, background=True
            )
        except Cancelled:
            return
        except BadInputError as exc:  # the request itself would say so (at info), once per request
            log.debug("no %s job for %s: %s", kind, uri, exc)
            return
        except Exception as exc:
            log.warning("%s job for %s failed: %s: %s", kind, uri, type(exc).__name__, exc)
            return
        if done is not None:
            done(result)

    ls.spawn(run())


def warm_later(ls: ServerHost, uri: str) -> None:
    """Once the user pauses, compute the context keys/values the next completion in ``uri`` will start from (at
    the last place the user worked; a document opened and not yet edited is warmed whole when it fits the
    window). Nothing to do when a completion already ran for this version."""
    ls.last_uri = uri
    s = ls.settings
    if not (s.warm_context and s.context_cache and s.context_reuse) or not ls.engine.ready:
        return
    doc = ls.usable_document(uri)
    if doc is None:
        return
    version, text, cursor = doc.version, doc.text, doc.cursor
    if cursor is None:
        prefix, suffix, max_tokens = "", text, 0
    else:
        prefix, suffix = text[:cursor], text[cursor:]
        max_tokens = ls.span_at(prefix, suffix)[1]
    engine = ls.engine

    def work(should_stop) -> bool:
        if doc.completed_version == version:
            return False
        return engine.warm(
            prefix, suffix, settings=s, max_tokens=max_tokens, should_stop=should_stop, stream=uri
        )

    in_background(ls, "warm", uri, work, ls.is_current(uri, doc, version), WARM_DELAY_S)


def speculate_after(ls: ServerHost, answer: Answer, prefix: str, suffix: str) -> None:
    """Compute the completion that follows ``answer`` once it is accepted, into the completion cache.

    ``prefix``/``suffix`` are the document around the answer's cursor; accepting inserts the answer's text and
    replaces ``completion.replace`` characters of the suffix. Runs while the document is open (its version
    changes when the suggestion is accepted, which is when the result is wanted).
    """
    s = ls.settings
    text = answer.completion.text
    if not s.speculate or not text.strip():
        return
    after_prefix = prefix + text
    after_suffix = suffix[answer.completion.replace :]
    mode, max_tokens = ls.span_at(after_prefix, after_suffix)
    key = (s.sampling_key(), mode)
    if ls.cache.has(key, after_prefix, after_suffix):
        return
    doc = answer.doc
    uri = doc.uri
    engine = ls.engine

    def work(should_stop):
        # Its own reuse store: the document's keeps the keys/values of the text as it is, which is what the next
        # request starts from when the suggestion is not accepted (most are not).
        args = dict(
            settings=s, max_tokens=max_tokens, should_stop=should_stop, stream=uri + SPECULATION_STREAM
        )
        if s.context_cache and s.context_reuse:
            # the context pass first, as warming does: it stops between layers, where the completion's own first
            # step (that same pass) could not, and the completion then starts from it
            engine.warm(after_prefix, after_suffix, **args)
        return engine.complete(after_prefix, after_suffix, **args)

    def done(fill) -> None:
        ls.cache.put(key, after_prefix, after_suffix, fill.texts[0])

    in_background(ls, "speculate", uri, work, lambda: ls.documents.get(uri) is doc, SPECULATE_DELAY_S, done)
