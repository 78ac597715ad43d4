"""A plugin's view of lmtrain: one module per kind (cell, tokenizer, optimiser, logger), each
adding its kind through that kind's own register() and nothing else of lmtrain's code.
tests/test_toy_kinds.py trains with all four at once."""
