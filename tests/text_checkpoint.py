"""A small random Llama checkpoint with a real tokenizer, built offline: a
byte-level BPE trained on local text, with a chat template."""
import torch

TEXT = ["The quick brown fox jumps over the lazy dog.", "Paged attention keeps KV in blocks.",
        "héllo wörld, 世界 and 🎉 emoji", "def f(x):\n    return x + 1", "a b c d e f g"] * 20
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_text_checkpoint(path, max_position_embeddings=256, hidden_size=64, num_attention_heads=4,
                         num_hidden_layers=2):
    import tokenizers
    import transformers

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    bpe.train_from_iterator(TEXT, tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>",
                                               eos_token="</s>")
    tok.chat_template = CHAT
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size,
                                      intermediate_size=3 * hidden_size // 2,
                                      num_hidden_layers=num_hidden_layers,
                                      num_attention_heads=num_attention_heads,
                                      num_key_value_heads=num_attention_heads // 2,
                                      max_position_embeddings=max_position_embeddings,
                                      eos_token_id=tok.eos_token_id)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return str(path)
