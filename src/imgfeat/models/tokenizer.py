"""The tokens of a CLIP text query without torch: open_clip's ``SimpleTokenizer`` (OpenAI CLIP's byte-level BPE,
``bpe_simple_vocab_16e6.txt.gz``), rebuilt on Hugging Face ``tokenizers`` the way ``transformers``'
``CLIPTokenizerFast`` is, so a recorded text-tower export (``engines.quick``) is fed without importing torch or
open_clip (which imports torch).

It is only used where it was shown to agree: :func:`matching` builds it beside a model's own open_clip tokenizer
and compares the two on :data:`PROBES`; a tokenizer of another kind (a Hugging Face tokenizer, SigLIP's, a
reduction mask, ``canonicalize`` cleaning) or any disagreement gives None, and queries keep the torch path.
Torch-free (``tokenizers`` and ``ftfy``); imports nothing of imgfeat.
"""

from __future__ import annotations

import gzip
import html
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

# what SimpleTokenizer's regular expression splits a cleaned text into (its special tokens are matched first)
_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
SPECIAL = ("<start_of_text>", "<end_of_text>")
N_MERGES = 49152 - 256 - 2  # the merges SimpleTokenizer reads from the file

# texts the two tokenizers must agree on before the fast one is trusted: case, punctuation, digits, contractions,
# accents, HTML entities, mojibake (ftfy), other scripts, emoji, extra whitespace, and one beyond 77 tokens
PROBES = ("a photo of a cat", "A Photo Of A CAT!", "it's the dog's bone, isn't it?", "route 66 in 1999",
          "  spaces\tand\nnew lines  ", "café crème brûlée", "&amp; &lt;b&gt; tom &amp; jerry", "naÃ¯ve",
          "東京の夜景", "Москва зимой", "a 🐱 on a 🛋️", "x" * 40 + " y", " ".join(["word"] * 100), "",
          "<start_of_text> hi", "e-mail: someone@example.com #tag $5.00")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's (and CLIP's) reversible map of the 256 bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _clean(text: str) -> str:
    """SimpleTokenizer's ``lower`` cleaning: ftfy, HTML entities (twice), whitespace collapsed, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """``encode(texts)`` -> int64 ``N x context_length``: start token, BPE tokens, end token, zero padding, truncated
    with the end token kept last (as open_clip does)."""

    def __init__(self, tokenizer, context_length: int) -> None:
        self._tok, self.context_length = tokenizer, int(context_length)
        self.sot, self.eot = (tokenizer.token_to_id(t) for t in SPECIAL)

    @classmethod
    def from_bpe(cls, bpe_path: str, context_length: int) -> "ClipTokenizer":
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1:N_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        symbols = list(_bytes_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(SPECIAL)
        tok = Tokenizer(models.BPE(vocab={v: i for i, v in enumerate(vocab)}, merges=merges,
                                   end_of_word_suffix="</w>", fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(list(SPECIAL))  # matched in the text before the split, as SimpleTokenizer does
        return cls(tok, context_length)

    @classmethod
    def load(cls, path: Path, context_length: int) -> "ClipTokenizer":
        """What :meth:`to_json` wrote."""
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), context_length)

    def to_json(self) -> str:
        return self._tok.to_str()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        n = self.context_length
        out = np.zeros((len(texts), n), np.int64)
        for i, enc in enumerate(self._tok.encode_batch([_clean(t) for t in texts], add_special_tokens=False)):
            ids = [self.sot, *enc.ids, self.eot]
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = self.eot
            out[i, :len(ids)] = ids
        return out


def matching(reference: Callable[[list[str]], np.ndarray], bpe_path: Optional[str], context_length: int,
             reduction: bool = False) -> Optional[ClipTokenizer]:
    """A :class:`ClipTokenizer` equal to ``reference`` (a model's own tokenizer, texts -> ids) on :data:`PROBES`, or
    None: no BPE file, a reduction mask (random or by syntax: not reproducible), or any token differing (another
    cleaning than ``lower`` shows in the probes' capitals)."""
    if bpe_path is None or reduction or not Path(bpe_path).is_file():
        return None
    try:
        fast = ClipTokenizer.from_bpe(bpe_path, context_length)
    except ImportError:
        return None
    probes = list(PROBES)
    return fast if np.array_equal(fast.encode(probes), np.asarray(reference(probes), np.int64)) else None
