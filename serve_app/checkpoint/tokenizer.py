"""A small byte-level tokenizer with DeepSeek-OCR's special tokens in their real roles.

Every UTF-8 byte is a token, so any text round-trips; the special tokens are single tokens,
as in the real tokenizer, so prompts, grounding tags and the ``<td>`` whitelist behave the same.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaTokenizerFast, PreTrainedTokenizerBase

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE = "<image>"
# Markup the model emits; skip_special_tokens=True strips these (as with the real tokenizer).
CONTROL_TOKENS = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>")
# Table cells repeat legitimately; the n-gram processor whitelists <td> and </td>.
TABLE_TOKENS = ("<td>", "</td>", "<tr>", "</tr>")
ROLE_TOKENS = ("<|User|>", "<|Assistant|>")


def build_tokenizer() -> PreTrainedTokenizerBase:
    """The tokenizer: 256 byte tokens, then the special and added tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    special = (BOS, EOS, PAD, IMAGE, *CONTROL_TOKENS, *ROLE_TOKENS)
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in TABLE_TOKENS])
    return LlamaTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )
