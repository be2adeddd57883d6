"""Facts about a model that several parts of the package need, each defined once here:
encoder-decoder or decoder-only, the context window, and the length cap used where a config
states no window. They are read from the model's config, which never changes after loading."""
from __future__ import annotations

# The most tokens a training example keeps by default (`max_seq_length`), and the most new
# tokens a model whose config states no window (T5's relative positions) may generate.
LENGTH_CAP = 2048
_WINDOW_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def is_encoder_decoder(model_config) -> bool:
    """True for seq2seq models (T5, BART): they take an input and produce a separate target."""
    return bool(getattr(model_config, "is_encoder_decoder", False))


def context_window(model_config) -> int | None:
    """The most positions the model can attend to, or None when the config does not say."""
    for name in _WINDOW_FIELDS:
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
