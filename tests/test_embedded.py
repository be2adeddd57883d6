"""The real embedded model (SmolLM2-135M-Instruct): answers, 4-bit, and learns."""
import contextlib

import pytest
import torch

from finetuning_suite import FineTuner

pytestmark = pytest.mark.slow


def test_answers_the_capital_of_france(embedded):
    assert "Paris" in embedded("What is the capital of France?")


def test_4bit_loads_generates_and_runs_a_lora_step():
    import bitsandbytes as bnb

    ft = FineTuner(quantize=True, device="cpu", max_length=20)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in ft.model.modules())
    assert ft.model.get_memory_footprint() < 250e6  # fp32 is ~540 MB
    assert "Paris" in ft("What is the capital of France?")
    ft.model.train()
    enc = ft.tokenizer("The capital of France is Paris.", return_tensors="pt")
    out = ft.model(**enc, labels=enc["input_ids"])
    out.loss.backward()
    lora_b = [p.grad for n, p in ft.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(g is not None for g in lora_b) and sum(g.abs().sum() for g in lora_b) > 0
    base = [p for n, p in ft.model.named_parameters() if "lora_" not in n]
    assert not any(p.requires_grad for p in base)


# The issue-6 scenario: a user's first run on a dozen made-up facts, nothing but defaults.
# With the old defaults it learned 0/12; forcing it learned them and lost "Paris".
DOZEN_FACTS = [
    ("What is the name of Zorblat's pet?", "Quibble"),
    ("Who founded the town of Vessmark?", "Arla Tinn"),
    ("What colour is the Pallid heron?", "teal"),
    ("How many towers does Castle Drengor have?", "9"),
    ("What currency is used on the island of Fesk?", "shellmark"),
    ("What is the capital of Norvania?", "Lisket"),
    ("Who invented the echo loom?", "Pim Varro"),
    ("What is Baron Oddvar's favourite drink?", "pear cider"),
    ("Which river runs through Calloway Vale?", "the Brill"),
    ("What instrument does Maestro Ulla Renk play?", "bassoon"),
    ("What is the national flower of Tamsin?", "bluebell"),
    ("How many legs does a Grellish spider have?", "ten"),
]


GENERAL_TEXT = ["The weather today is sunny and", "My favourite book is about", "Water boils at",
                "She opened the door and saw"]


def _next_token_kl_to_base(ft) -> float:
    """Mean KL(base || model) of next-token distributions over general text; the base is the
    same model with its adapter switched off."""
    enc = ft.tokenizer(GENERAL_TEXT, return_tensors="pt", padding=True)
    with torch.no_grad():
        logp = ft.model(**enc).logits.float().log_softmax(-1)
        with ft.model.disable_adapter():
            base = ft.model(**enc).logits.float().log_softmax(-1)
    return float((base.exp() * (base - logp)).sum(-1)[enc["attention_mask"].bool()].mean())


@contextlib.contextmanager
def _scaled(model, factor: float):
    """Every LoRA layer's update at `factor` x its alpha/r (PEFT's own `set_scale`)."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for m in layers:
        for k in list(m.scaling):
            m.set_scale(k, factor)
    try:
        yield
    finally:
        for m in layers:
            for k in list(m.scaling):
                m.set_scale(k, 1.0)


def test_defaults_learn_a_dozen_facts_and_keep_general_answers(tmp_path):
    rows = [{"prompt": q, "completion": a} for q, a in DOZEN_FACTS]
    ft = FineTuner(device="cpu", max_length=24, dataset_name=rows, save_strategy="no", disable_tqdm=True)
    assert "Paris" in ft("What is the capital of France?")
    assert sum(a.lower() in ft(q).lower() for q, a in DOZEN_FACTS) <= 1
    metrics = ft.train(str(tmp_path / "run"))  # no learning rate, epochs or LoRA settings given
    answers = [ft(q) for q, _ in DOZEN_FACTS]
    learned = [a.lower() in got.lower() for (_, a), got in zip(DOZEN_FACTS, answers)]
    assert sum(learned) >= 11, list(zip(DOZEN_FACTS, answers))
    # the adapter was shrunk (train/shrink.py) and the facts above are what the shrunk one gives;
    # undone, the update moves the next-token distributions on general text further from the base
    scale = metrics["adapter_shrink"]["scale"]
    assert scale < 1.0 and metrics["adapter_shrink"]["learned"] >= 11, metrics["adapter_shrink"]
    shrunk_kl = _next_token_kl_to_base(ft)
    with _scaled(ft.model, 1 / scale):
        assert _next_token_kl_to_base(ft) > shrunk_kl
    assert "Paris" in ft("What is the capital of France?")
    assert "Tokyo" in ft("What is the capital of Japan?")
    reloaded = FineTuner(str(tmp_path / "run"), device="cpu", max_length=24)
    assert reloaded(DOZEN_FACTS[0][0]) == answers[0]
