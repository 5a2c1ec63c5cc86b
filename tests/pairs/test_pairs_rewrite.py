"""Instruction rewriting by a local causal LM: a tiny random-weight GPT-2 saved offline (its output is
gibberish, so every rewrite must be refused and counted), and the acceptance rule on hand-written text."""

from collections import Counter

import pytest
from pairs_bank import make_bank

from scone_data.pairs import PairConfig, plan_samples
from scone_data.pairs.instructions import TEMPLATES
from scone_data.pairs.rewrite import acceptable, required_phrases, rewrite_plans

WORDS = sorted(
    {w.strip(".,;:'") for ts in TEMPLATES.values() for t in ts for w in t.lower().split()}
    | {"image", "1", "2", "3", "the", "red", "ball", "cup", "from", "rewritten", "instruction"}
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A 2-layer GPT-2 with random weights and a word-level tokenizer, saved as a model directory."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[EOS]", *[w for w in WORDS if w]])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=2, eos_token_id=2, pad_token_id=1)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny_gpt2")
    GPT2LMHeadModel(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


def test_random_lm_rewrites_are_refused_deterministically(tiny_lm):
    subjects, images, _ = make_bank(n_synthetic=6)
    base = dict(distractor_strategy="random", val_fraction=0.0, num_samples=16)
    plain, plain_rejects = plan_samples(subjects, images, PairConfig(**base))
    cfg = PairConfig(**base, rewrite_model=tiny_lm, rewrite_max_new_tokens=8, rewrite_batch_size=16)
    a, ra = plan_samples(subjects, images, cfg)
    b, rb = plan_samples(subjects, images, cfg)
    assert a == b and ra == rb
    # Gibberish keeps no reference mention: every template instruction is kept, and counted.
    assert [p.instruction for p in a] == [p.instruction for p in plain]
    assert ra["rewrite_kept_original"] == len(a) > 0
    assert ra - Counter({"rewrite_kept_original": len(a)}) == plain_rejects


def test_generated_text_is_used_only_when_it_keeps_the_references():
    subjects, images, _ = make_bank(n_synthetic=6)
    plans, _ = plan_samples(subjects, images, PairConfig(distractor_strategy="random", val_fraction=0.0,
                                                         num_samples=12))  # fmt: skip
    req = [required_phrases(p) for p in plans]

    asked: list[str] = []

    def fake(prompts):  # a "model" that keeps every required phrase for even rows and drops it for odd ones
        out = []
        for pr in prompts:
            i = len(asked)
            asked.append(pr)
            assert plans[i].instruction in pr
            good = "Please make a picture with " + " and ".join(req[i]) + ".\nextra line"
            out.append(good if i % 2 == 0 else "A nice picture of something.")
        return out

    notes: Counter = Counter()
    out = rewrite_plans(plans, fake, 5, notes)
    assert [p.key for p in out] == [p.key for p in plans]
    for i, (p, q) in enumerate(zip(plans, out)):
        if i % 2 == 0:
            assert q.instruction.startswith("Please make a picture with") and "\n" not in q.instruction
            assert all(r.lower() in q.instruction.lower() for r in req[i])
        else:
            assert q.instruction == p.instruction
    assert notes["rewrite_kept_original"] == len(plans) // 2


def test_acceptance_rule():
    req = ["image 1", "the second cup from the left", "image 2", "ball"]
    orig = "Generate an image containing the second cup from the left from image 1 and the ball from image 2."
    assert acceptable(orig, "Show image 1's The second cup from the left with the ball of image 2.", req)
    assert not acceptable(orig, "Show the cup from image 1 with the ball of image 2.", req)  # lost ordinal
    assert not acceptable(
        orig, "Show the second cup from the left of image 1 and the ball.", req
    )  # no image 2
    extra = "The second cup from the left from image 1, the ball from image 2 and image 3."
    assert not acceptable(orig, extra, req)  # a reference that does not exist
    assert not acceptable(orig, "", req)
    assert not acceptable(orig, orig * 4, req)  # rambling


def test_rewrite_model_must_be_a_directory(tmp_path):
    problems = PairConfig(rewrite_model=str(tmp_path / "missing")).validate()
    assert any(p.startswith("rewrite_model") for p in problems)
    assert any(p.startswith("embedding_model") for p in PairConfig(intra_strategy="embedding").validate())
