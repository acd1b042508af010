"""A tiny Llama model folder that real vLLM can serve on CPU with ``load_format="dummy"``.

No model can be downloaded here, and dummy loading makes random weights from the
config alone; so a model is a config plus a tokenizer. Text it generates is random, but
the engine, its scheduler, streaming, prefix cache and token counts are real.

    python -m alto_workers.lm.tiny_model FOLDER
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<s>", "</s>")   # ids 0 and 1: the trainer puts specials first
BOS_ID, EOS_ID = 0, 1

# head_dim 64: vLLM's CPU attention refuses smaller head sizes (16 fails at the first
# request). architectures must be explicit, else vLLM resolves the headless LlamaModel.
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
}

# Files whose presence means a finished folder (written last into a temp folder that
# is then renamed, so a half-written folder is never reused).
_REQUIRED = ("config.json", "tokenizer.json", "tokenizer_config.json")


def make_tiny_model(folder: str | Path) -> Path:
    """Write the tiny model into ``folder`` (or reuse it if already there); return it."""
    target = Path(folder).resolve()
    if _is_complete(target):
        return target
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} is neither empty nor a tiny model folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-model-", dir=target.parent))
    try:
        staging.chmod(0o755)             # mkdtemp's 0700 would hide it from other users
        _write_model(staging)
        try:
            staging.rename(target)       # POSIX: replaces an empty directory atomically
        except OSError:
            if not _is_complete(target):  # someone else finished first: reuse theirs
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED)


def _write_model(folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": BOS_ID, "eos_token_id": EOS_ID}, indent=2) + "\n"
    )
    _train_tokenizer().save_pretrained(str(folder))


def _train_tokenizer():  # -> transformers.PreTrainedTokenizerFast (imported lazily)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte encodes
        show_progress=False,
    )
    tok.train_from_iterator(_made_up_text(), trainer=trainer)
    # Prompts start with <s>, as Llama's do.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[1]
    )


def _made_up_text(lines: int = 4000, seed: int = 8) -> Iterator[str]:
    """Seeded sentences of invented words: varied enough to fill all 512 ids."""
    rng = random.Random(seed)
    onsets = ["", "b", "br", "c", "ch", "d", "f", "g", "gr", "h", "k", "l", "m", "n",
              "p", "pl", "qu", "r", "s", "sh", "st", "t", "th", "tr", "v", "w", "z"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "oo", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "ng", "ck", "x"]
    for _ in range(lines):
        words = []
        for _ in range(rng.randint(4, 14)):
            word = "".join(
                rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                for _ in range(rng.randint(1, 3))
            )
            if rng.random() < 0.1:
                word = word.capitalize()
            elif rng.random() < 0.05:
                word = str(rng.randint(0, 9999))
            words.append(word)
        yield " ".join(words) + rng.choice([".", ".", "?", "!", ",", ":"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m alto_workers.lm.tiny_model FOLDER", file=sys.stderr)
        return 2
    print(make_tiny_model(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
