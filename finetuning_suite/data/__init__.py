"""The data: from a dataset name to token ids and labels.

Sources (`sources`: built-in names, files, folders, hub caches, in-memory datasets, and the
split a run evaluates on), formats detected from the columns (`formats`), the chat format every
part renders prompts with (`chat_template`), tokenization with label masks (`preprocessing`),
all of it for one run (`prepare`), and self-replay rows (`replay`). The built-in datasets' files
live in `builtin/`, the retention prompts in `retention/`. Imports `errors` and `model.facts`
only.
"""
