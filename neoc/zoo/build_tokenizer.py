"""Train the two small tokenizers the tiny model ("builtin:pyramid-tiny") ships with.

Real Pyramid-Flow SD3 checkpoints carry their own tokenizers (`tokenizer/`, `tokenizer_2/` = CLIP BPE,
`tokenizer_3/` = T5 SentencePiece Unigram; pyramid-flow-facts.md §5-6). No pretrained tokenizer is
available offline, so the tiny model gets tokenizers of the same *kinds*, trained here with the
`tokenizers` library:

* a Unigram tokenizer in the T5 style: Metaspace pre-tokenisation, case kept, `<pad>` = 0,
  `</s>` = 1 appended to every sequence, `<unk>` = 2;
* a byte-level BPE tokenizer in the CLIP style: lower-cased, CLIP's word-splitting pattern,
  `</w>` end-of-word suffix, every sequence wrapped as `<|startoftext|> ... <|endoftext|>`.

Training text: the real prompt lists in /work/shared/data/prompts/*.txt plus a few hundred synthetic
toy-world captions ("a red circle moves left on a gradient background"). Padding and truncation are
not stored in the files; the HF wrapper (neoc.models.tokenizers) applies them per call, exactly as
for the real tokenizers.

Rebuild (writes neoc/zoo/assets/tiny_t5_unigram.json and neoc/zoo/assets/tiny_clip_bpe.json):

    cd /work/main && PYTHONPATH=. python3 -m neoc.zoo.build_tokenizer \\
        --prompts-dir /work/shared/data/prompts

The output is deterministic for a given corpus (synthetic captions come from a seeded RNG; corpus
lines are de-duplicated and sorted before training).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from pathlib import Path

# Single-threaded training keeps merges and piece scores reproducible run to run.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import (  # noqa: E402  (environment must be set first)
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
T5_TOKENIZER_FILE = "tiny_t5_unigram.json"
CLIP_TOKENIZER_FILE = "tiny_clip_bpe.json"
DEFAULT_PROMPTS_DIR = Path("/work/shared/data/prompts")

VOCAB_SIZE = 2000

# T5 special tokens and their fixed ids (same ids as google/t5-v1_1: pad 0, eos 1, unk 2).
T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
# CLIP special tokens (names as in openai/clip-vit-large-patch14); here they take ids 0 and 1.
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's published word-splitting pattern (contractions, letter runs, single digits, punctuation runs).
CLIP_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

# The toy world's vocabulary (fixed by the tiny-model spec).
TOY_SHAPES = ["circle", "square", "triangle", "star", "diamond", "heart", "cross"]
TOY_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "cyan"]
TOY_MOTIONS = ["left", "right", "up", "down", "grow", "shrink", "rotate", "still"]
TOY_BACKGROUNDS = ["solid", "gradient", "textured", "striped"]

# Several phrasings per motion so the tokenizer sees the words in varied contexts.
_MOTION_PHRASES = {
    "left": ["moves left", "slides to the left", "drifts left", "travels left", "moves to the left"],
    "right": ["moves right", "slides to the right", "drifts right", "travels right", "moves to the right"],
    "up": ["moves up", "rises", "floats up", "drifts upward", "moves upward"],
    "down": ["moves down", "falls", "sinks down", "drifts downward", "moves downward"],
    "grow": ["grows", "grows larger", "gets bigger", "expands", "slowly grows"],
    "shrink": ["shrinks", "gets smaller", "shrinks away", "contracts", "slowly shrinks"],
    "rotate": ["rotates", "spins", "rotates in place", "turns around", "slowly rotates"],
    "still": ["stays still", "does not move", "rests in place", "stands still", "remains still"],
}
_BACKGROUND_PHRASES = [
    "on a {bg} background",
    "against a {bg} backdrop",
    "in front of a {bg} background",
    "over a {bg} background",
    "on a {bg} {bgcolour} background",
]


def synthetic_toy_captions(count: int = 600, seed: int = 0) -> list[str]:
    """Toy-world captions with varied wording, e.g. "a red circle moves left on a gradient background"."""
    rng = random.Random(seed)
    captions = []
    for index in range(count):
        shape, colour = rng.choice(TOY_SHAPES), rng.choice(TOY_COLOURS)
        motion = rng.choice(TOY_MOTIONS)
        background = rng.choice(_BACKGROUND_PHRASES).format(
            bg=rng.choice(TOY_BACKGROUNDS), bgcolour=rng.choice(TOY_COLOURS)
        )
        subject = f"a {colour} {shape}"
        if index % 5 == 0:  # two objects now and then
            other = f"a {rng.choice(TOY_COLOURS)} {rng.choice(TOY_SHAPES)}"
            subject = f"{subject} and {other}"
            verb = _MOTION_PHRASES[motion][0].replace("moves", "move").replace("stays", "stay")
            verb = verb.replace("grows", "grow").replace("shrinks", "shrink").replace("rotates", "rotate")
        else:
            verb = rng.choice(_MOTION_PHRASES[motion])
        caption = f"{subject} {verb} {background}"
        if index % 7 == 3:
            caption = caption[0].upper() + caption[1:] + "."
        captions.append(caption)
    # Every vocabulary word also appears on its own line.
    captions += TOY_SHAPES + TOY_COLOURS + TOY_MOTIONS + TOY_BACKGROUNDS
    return captions


def read_prompt_corpus(prompts_dir: Path) -> list[str]:
    """All non-empty lines of prompts_dir/*.txt (UTF-8)."""
    files = sorted(prompts_dir.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{prompts_dir}: no *.txt prompt files")
    lines = []
    for path in files:
        lines += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines


_CJK_PATTERN = re.compile(r"[\u3000-\u9fff\uac00-\ud7af\uff00-\uffef]")


def training_corpus(prompts_dir: Path) -> list[str]:
    """De-duplicated, sorted training lines: real English prompts plus synthetic toy captions.

    The few Chinese prompt lines (CJK / full-width characters, ~100 lines) are left out: their
    hundreds of one-off characters make the Unigram trainer's choice among equal-scored single
    characters vary run to run, and T5 v1.1's own SentencePiece vocabulary is English-centric too.
    """
    english = {line for line in read_prompt_corpus(prompts_dir) if not _CJK_PATTERN.search(line)}
    return sorted(english | set(synthetic_toy_captions()))


def train_t5_unigram(corpus: list[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """T5-style Unigram tokenizer: '▁' word marker, case kept, `</s>` appended to every sequence."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=[T5_PAD, T5_EOS, T5_UNK],  # ids 0, 1, 2
        unk_token=T5_UNK,
        max_piece_length=16,
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    eos_id = tokenizer.token_to_id(T5_EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {T5_EOS}", pair=f"$A {T5_EOS} $B {T5_EOS}", special_tokens=[(T5_EOS, eos_id)]
    )
    return tokenizer


def train_clip_bpe(corpus: list[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """CLIP-style byte-level BPE: lower-cased, `</w>` suffix, `<|startoftext|> ... <|endoftext|>`."""
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=CLIP_EOS))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.Sequence([decoders.BPEDecoder(suffix="</w>"), decoders.ByteLevel()])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[CLIP_BOS, CLIP_EOS],  # ids 0, 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos_id, eos_id = tokenizer.token_to_id(CLIP_BOS), tokenizer.token_to_id(CLIP_EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_BOS} $A {CLIP_EOS}",
        pair=f"{CLIP_BOS} $A {CLIP_EOS} $B {CLIP_EOS}",
        special_tokens=[(CLIP_BOS, bos_id), (CLIP_EOS, eos_id)],
    )
    return tokenizer


def _canonical_unigram(model: dict, special_count: int) -> dict:
    """Order Unigram pieces by (score rounded to 1e-4, piece), specials first.

    The trainer's piece scores jitter in the last bits from run to run (hash-map summation order),
    which can swap neighbouring ids; rounding and a total order make the ids reproducible. The
    trainer also appends the rare single characters it must keep with scores a hair apart
    (min, min + 1e-4, ...) in hash-map order; those get the same score, so they sort by character.
    """
    specials = model["vocab"][:special_count]
    pieces = [[piece, round(score, 4)] for piece, score in model["vocab"][special_count:]]
    floor = min(score for _, score in pieces)
    for entry in pieces:
        if len(entry[0]) == 1 and entry[1] < floor + 0.01:
            entry[1] = floor
    pieces.sort(key=lambda entry: (-entry[1], entry[0]))
    return {**model, "vocab": specials + pieces}


def _canonical_bpe(model: dict, special_count: int) -> dict:
    """Renumber BPE ids: specials, then the sorted base alphabet, then merge results in merge order.

    The trainer's merges are reproducible but its id assignment for the alphabet is not.
    """
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
    specials = [token for token, _ in by_id[:special_count]]
    merged = list(dict.fromkeys(left + right for left, right in merges))
    merged_set = set(merged) | set(specials)
    alphabet = sorted(token for token, _ in by_id if token not in merged_set)
    order = specials + alphabet + merged
    return {**model, "vocab": {token: index for index, token in enumerate(order)}}


def canonical_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """Tokenizer with a reproducible id assignment (see _canonical_unigram / _canonical_bpe)."""
    payload = json.loads(tokenizer.to_str())
    special_count = len(payload["added_tokens"])
    if payload["model"]["type"] == "Unigram":
        payload["model"] = _canonical_unigram(payload["model"], special_count)
    elif payload["model"]["type"] == "BPE":
        payload["model"] = _canonical_bpe(payload["model"], special_count)
    return Tokenizer.from_str(json.dumps(payload))


def write_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    """Write tokenizer.json with sorted keys and indentation, so diffs stay readable."""
    payload = json.loads(tokenizer.to_str())
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def build(prompts_dir: Path = DEFAULT_PROMPTS_DIR, out_dir: Path = ASSETS_DIR) -> dict[str, int]:
    """Train both tokenizers and write them to out_dir. Returns {file name: vocab size}."""
    corpus = training_corpus(prompts_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for file_name, train in ((T5_TOKENIZER_FILE, train_t5_unigram), (CLIP_TOKENIZER_FILE, train_clip_bpe)):
        tokenizer = canonical_tokenizer(train(corpus))
        write_tokenizer(tokenizer, out_dir / file_name)
        sizes[file_name] = tokenizer.get_vocab_size()
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts-dir", type=Path, default=DEFAULT_PROMPTS_DIR)
    parser.add_argument("--out-dir", type=Path, default=ASSETS_DIR)
    args = parser.parse_args(argv)
    for file_name, size in build(args.prompts_dir, args.out_dir).items():
        print(f"{args.out_dir / file_name}: vocab {size}")


if __name__ == "__main__":
    main()
