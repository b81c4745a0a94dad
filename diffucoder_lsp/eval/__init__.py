"""Measuring completion quality: HumanEval-Infilling pass@1 (executed in :mod:`diffucoder_lsp.sandbox`) and an
intrinsic exact-match / edit-similarity metric on held-out files. Fill functions are injected, so the harness
itself is tested with oracle and empty fillers, without a model."""
