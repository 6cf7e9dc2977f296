"""A small random transformers checkpoint of a model family, saved with
save_pretrained, whose biases and norm weights are not their trivial init."""
import torch


def save_random_checkpoint(path, family="Llama", **overrides):
    """Saves ``{family}ForCausalLM`` to ``path``; returns the transformers model."""
    import transformers

    torch.manual_seed(0)
    kwargs = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512)
    config = getattr(transformers, f"{family}Config")(**{**kwargs, **overrides})
    model = getattr(transformers, f"{family}ForCausalLM")(config).eval()
    with torch.no_grad():  # biases are zero and norms one at init: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()
            elif name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return model
