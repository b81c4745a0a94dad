"""``diffucoder analyze``: the paper's decoding analysis (AR-ness, reveal order, entropy sink) on any model.

:mod:`.collect` picks the infill tasks, decodes them and records reveal orders and first-step confidences;
:mod:`.report` pools them into a JSON and draws the PNGs. The metrics themselves are
pure functions in :mod:`diffucoder_lsp.analysis`.
"""
