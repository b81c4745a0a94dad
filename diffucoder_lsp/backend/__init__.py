"""The HTTP inference backend (``diffucoder backend``): one model, many editors, batched denoising.

Modules, one concern each: :mod:`.config` (limits and options, frozen), :mod:`.schema` (request bodies checked
into specs, the one place a 400 is decided), :mod:`.batcher` (the model thread: gathers requests into padded
batches, cancels, splits on out-of-memory), :mod:`.records` (an engine result as each API answers it),
:mod:`.metrics` (Prometheus text), :mod:`.app` (the Starlette routes, auth and errors). Clients live in
:mod:`diffucoder_lsp.engine.remote`, below every room that uses one.
"""
