"""The Ollama `Modelfile` written beside a GGUF file (`ollama create NAME -f Modelfile`).

Ollama's TEMPLATE is a Go template, not the Jinja chat template transformers uses, so the
training template cannot be copied over. Instead we check, by rendering it, whether the training
template *is* ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n` per message, the assistant turn
opened at the end, optionally a default system message when the conversation has none): that is
the embedded SmolLM2's format and the one this package installs on models without a template.
When it is, the Modelfile gets the equivalent Go template, the default system message as SYSTEM
(Ollama puts it first when a conversation has no system message, as the Jinja template does)
and a stop on the EOS token. Any other template is written into the Modelfile as a comment, and
Ollama's own template detection (it reads `tokenizer.chat_template` from the GGUF metadata) is
left to choose; a model without a chat template gets the plain `{{ .Prompt }}` completion
template. Greedy decoding (this package's default) is written as `PARAMETER temperature 0`.
"""
from __future__ import annotations

# System messages come from .System (the conversation's, else the Modelfile's SYSTEM), so the
# loop skips them whether or not Ollama also lists them in .Messages; .Prompt is the legacy
# single-prompt path.
CHATML_GO_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- if .Messages }}
{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{ end }}
{{- else if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def _chatml(messages: list[dict], default_system: str | None, generation_prompt: bool) -> str:
    if default_system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": default_system}, *messages]
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if generation_prompt else "")


def chatml_default_system(tokenizer) -> tuple[bool, str | None]:
    """(the chat template is ChatML, its default system message or None)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or "<|im_start|>" not in template:
        return False, None

    def render(messages, generation_prompt=True):
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation_prompt)

    try:
        first = render([{"role": "user", "content": "U1"}])
        default = None
        head = "<|im_start|>system\n"
        if first.startswith(head):
            default = first[len(head):first.index("<|im_end|>\n")]
        cases = [
            [{"role": "user", "content": "U1"}],
            [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"}],
            [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
             {"role": "user", "content": "U2"}],
        ]
        same = all(render(c) == _chatml(c, default, True) for c in cases)
    except Exception:  # a template that cannot render these is not ChatML
        return False, None
    return same, default


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ValueError("text with triple quotes cannot go into a Modelfile")
    return f'"""{text}"""'


def modelfile_text(tokenizer, gguf_name: str, *, stop_tokens: list[str], greedy: bool) -> str:
    lines = [
        "# Ollama Modelfile written by finetuning_suite's export, beside the GGUF file.",
        "#   ollama create my-model -f Modelfile && ollama run my-model",
        f"FROM ./{gguf_name}",
        "",
    ]
    template = getattr(tokenizer, "chat_template", None)
    is_chatml, default_system = chatml_default_system(tokenizer)
    if is_chatml:
        lines += ["# The training chat template is ChatML; this is the same format in Go syntax.",
                  f"TEMPLATE {_quoted(CHATML_GO_TEMPLATE)}"]
        if default_system is not None:
            lines += ["# The system message the training template adds when a conversation has none.",
                      f"SYSTEM {_quoted(default_system)}"]
    elif template:
        lines += ["# The training chat template (Jinja, kept in the GGUF as tokenizer.chat_template)",
                  "# is not ChatML, so no TEMPLATE is written: Ollama picks one from the GGUF",
                  "# metadata. Check it with `ollama show --template`; the training template is:"]
        lines += [f"#   {line}" for line in str(template).splitlines()]
    else:
        lines += ["# The model has no chat template: prompts are completed as given.",
                  f"TEMPLATE {_quoted('{{ .Prompt }}')}"]
    lines.append("")
    for token in stop_tokens:
        quoted = _quoted(token) if '"' in token else '"' + token + '"'
        lines.append("PARAMETER stop " + quoted)
    if greedy:
        lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"
