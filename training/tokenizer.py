"""Tokenizers: a real Qwen2 tokenizer from a checkpoint directory, or a tiny offline one for tests.

BAGEL frames text with <|im_start|> ... <|im_end|> and images with <|vision_start|> ... <|vision_end|>;
both tokenizers carry these four tokens under these names.
"""

from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]

# The tiny tokenizer's BPE merges are learned from this fixed text, so it is the same on every machine
# and never depends on the shards; any text still encodes (byte-level alphabet).
_TINY_CORPUS = """
put the subject from image 1 and the subject from image 2 together in one scene
the dog from image 1 and the red mug from image 2 on a wooden table in a sunny kitchen
generate an image of the cat on the left in image 1 sitting next to the person in image 2
use only the largest bird in image 1 the small blue car on the right the green bottle at the top
a photo of a man a woman a child a bicycle a chair a couch a cup a bowl a banana an apple an orange
place them in a park on a beach in a living room at night under the snow white black yellow brown
"""


def build_tiny_tokenizer(vocab_size: int = 384):
    """Byte-level BPE trained in memory on a fixed corpus; returns a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS.strip().splitlines() * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


def load_tokenizer(path: str | Path):
    """AutoTokenizer from a checkpoint directory (BAGEL's Qwen2 files or one we saved)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    missing = [t for t in SPECIAL_TOKENS[1:] if t not in tok.get_vocab()]
    if missing:  # BAGEL's add_special_tokens adds whichever are absent
        tok.add_special_tokens({"additional_special_tokens": missing})
    return tok


def special_ids(tok) -> dict:
    """Ids of the framing tokens: bos (<|im_start|>), eos (<|im_end|>), vision start / end."""
    ids = tok.convert_tokens_to_ids(SPECIAL_TOKENS[1:])
    return dict(zip(["bos", "eos", "vision_start", "vision_end"], ids))


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)
