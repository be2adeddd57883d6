"""`finetune web`: a page to fine-tune, watch, compare, chat with and export models.

The page is another face of the one configuration: its knobs, their help text and defaults
come from the dataclasses in `finetuning_suite.config`, and its "Advanced" box is the resolved
`FinetuneConfig.to_yaml()`. One concern per module: `form` (page values <-> a validated
`FinetuneConfig`), `preview` (the first rows as the model sees them: chat template and which
tokens carry loss), `jobs` (training runs as separate `python -m finetuning_suite train`
processes: start, stop through `output_dir/STOP`, resume), `runs` (reading a workspace of run
folders: status, progress, loss curves, before/after metrics), `models` (`FineTuner`s kept in
this process for chat and export), `charts` (loss curves as inline SVG), `messages` (errors as
one readable message, never a traceback) and `app` (the gradio page). The UI library is gradio:
LLaMA-Board, the closest anchor, is built on it; it is maintained, pip-installable (the
optional `web` extra), has the widgets this page needs (file upload, a streaming chatbot, tabs,
a timer that refreshes the page from the run's files) and runs in this Python process, so the
page calls the package directly instead of going through a second API. May import everything
below the facade (`config`, `errors`, `model`, `data`, `infer`, `train`, `export`) and the
facade (`finetuner`); never `cli`.
"""
