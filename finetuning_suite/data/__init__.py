"""The data: from a dataset name to token ids and labels.

Sources (`sources`: built-in names, files, folders, hub caches, in-memory datasets), formats
detected from the columns (`formats`), the chat template used by both training and generation
(`chat_template`), and tokenization with label masks (`preprocessing`). The built-in datasets'
files live in `builtin/`. Imports `errors` and `model.facts` only.
"""
