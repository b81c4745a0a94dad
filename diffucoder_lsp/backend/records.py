"""An engine result as each API answers it: the ``fill --json`` record, stream events, OpenAI choices.

``/v1/infill`` answers exactly what ``diffucoder fill --json`` prints for the same text and options (the record
of :func:`~diffucoder_lsp.engine.confidence.infill_record`, with the editor's cut of ``auto`` holes unless
``raw``), so a script can move between the two. Its stream sends a ``canvas`` event (the laid-out text, for
a client that draws the holes being filled), then one ``step`` event per denoising step with the positions,
tokens, token texts and confidences revealed, then ``done`` with the record.

OpenAI choices follow the completions API: the hole's text up to the model's end token or the first ``stop``
string, ``finish_reason`` ``stop`` when either cut it and ``length`` when the span ran out.
"""

from __future__ import annotations

import time
from typing import Any

from ..engine.batch import RowStep
from ..engine.confidence import infill_record
from ..engine.infill import InfillCanvas, InfillResult, split_holes, text_to_stop
from ..server.postprocess import edited_text
from .schema import CompletionSpec, InfillSpec


def infill_answer(result: InfillResult, lm, spec: InfillSpec, statistic: str) -> dict[str, Any]:
    """The ``fill --json`` record of a finished request."""
    record = infill_record(result, lm, spec.options.alg, spec.confidence_statistic or statistic)
    if spec.cut_at_stop:
        for hole, out in zip(result.holes, record["holes"], strict=True):
            out["text"] = text_to_stop(lm.tokenizer, hole)
    if spec.length == "auto" and not spec.raw:  # as fill prints it: the editor's cut of each hole
        text, shown = edited_text(split_holes(spec.text, spec.marker), [h.text for h in result.holes])
        record["text"] = text
        for out, piece in zip(record["holes"], shown, strict=True):
            out["shown"] = piece
    return record


def canvas_event(canvas: InfillCanvas, tok) -> dict[str, Any]:
    return {
        "ids": canvas.ids,
        "hole_spans": [list(s) for s in canvas.hole_spans],
        "auto": canvas.auto,
        "segments": canvas.segments,
        "leads": list(canvas.leads),
        "kept_prefix": canvas.kept_prefix,
        "kept_suffix": canvas.kept_suffix,
        "mask_id": tok.mask_id,
        "stop_ids": sorted(tok.stop_ids),
    }


def step_event(step: RowStep, tok) -> dict[str, Any]:
    return {
        "step": step.step,
        "total_steps": step.total_steps,
        "positions": list(step.positions),
        "tokens": list(step.tokens),
        "texts": [tok.decode([t], skip_special=False) for t in step.tokens],
        "confidences": [round(c, 6) for c in step.confidences],
        "remaining": step.remaining,
    }


def completion_choice(result: InfillResult, tok, spec: CompletionSpec, index: int) -> tuple[dict, int]:
    """One OpenAI choice and the tokens it used."""
    hole = result.holes[0]
    ids = hole.token_ids
    used = next((i for i, t in enumerate(ids) if t in tok.stop_ids), len(ids))
    text = text_to_stop(tok, hole)
    finish = "stop" if used < len(ids) else "length"
    cuts = [i for i in (text.find(s) for s in spec.stop) if i >= 0]
    if cuts:
        text, finish = text[: min(cuts)], "stop"
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}, used


def completion_answer(
    choices: list[dict], model: str, prompt_tokens: int, completion_tokens: int, request_id: str
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
