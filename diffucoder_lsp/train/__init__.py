"""Training the bundled default model: corpus, tokenizer, data, masked-diffusion loss, pretraining, export.

Modules import torch only where they need it (``corpus`` does not), so building a corpus stays light.
The stages are driven by ``diffucoder train corpus|tokenizer|pretrain|export`` (``commands/train.py``).
"""
