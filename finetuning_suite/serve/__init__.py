"""The OpenAI-compatible HTTP server behind `finetune serve`: request and response schemas
(`schemas`), OpenAI-style error bodies (`api_errors`), the bearer-key and body-size guards
(`guards`), the single engine worker that owns the model and batches requests (`engine`) and
the FastAPI app factory (`app.create_app`). It imports `errors`, `model`, `data`, `infer`, the
`FineTuner` facade and `AdapterSet`, plus fastapi (the optional `serve` extra, imported only
here); never `cli`, which builds a `FineTuner` (or an `AdapterSet`) and hands it to `create_app`.

    from finetuning_suite import FineTuner
    from finetuning_suite.serve import create_app
    app = create_app(FineTuner(), model_name="smollm2-135m-instruct")   # then: uvicorn.run(app)

    from finetuning_suite.adapter_set import AdapterSet                  # several runs, one base
    app = create_app(AdapterSet({"facts": "runs/facts", "dates": "runs/dates"}))
"""
from __future__ import annotations


def __getattr__(name: str):
    if name == "create_app":  # imported on use: fastapi is an optional extra
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'finetuning_suite.serve' has no attribute {name!r}")
