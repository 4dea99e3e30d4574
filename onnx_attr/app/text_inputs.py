"""Text as model inputs, through the user's own `tokenizer.json` (the `tokenizers` library, the
optional extra `pip install "onnx-attr[text]"`); nothing is downloaded.

Each line of a `.txt` file is one example. The tokenizer gives the token ids, and, where the
model takes them, the attention mask and the token type ids, padded and truncated to one length:
`max_length` when given, else the model's static sequence length, else (one file of `attribute`)
the longest example. The token strings go into reports and token pages. The tokenizer file is
identified by its sha256 in manifests, so a resume with another tokenizer is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from onnx_attr.errors import InputError
from onnx_attr.importing.specs import TensorSpec

TEXT_SUFFIXES = (".txt",)
#: A tokenizer.json of a large multilingual model is ~20 MB; more is refused before parsing.
MAX_TOKENIZER_BYTES = 64 * 2**20
#: Names a model gives its token id input, its attention mask and its token types, in order of preference.
ID_NAMES = ("input_ids", "ids", "token_ids", "tokens", "input")
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<PAD>")


@dataclass(frozen=True)
class TextPreprocessing:
    """The tokenizer file (and its content's sha256) and the padded length, as manifests record it."""

    tokenizer: str
    sha256: str
    max_length: Optional[int] = None

    def to_dict(self) -> dict:
        return {"tokenizer_sha256": self.sha256, "max_length": self.max_length}


def text_preprocessing(tokenizer: Optional[str], max_length: Optional[int] = None) -> Optional[TextPreprocessing]:
    if tokenizer is None:
        if max_length is not None:
            raise InputError("--max-length applies to text inputs; give the tokenizer with --tokenizer tokenizer.json")
        return None
    from onnx_attr.fileio import regular_file
    from onnx_attr.app.manifest import file_sha256

    if max_length is not None and max_length < 1:
        raise InputError(f"--max-length {max_length}: give a number of tokens >= 1")
    return TextPreprocessing(tokenizer, file_sha256(regular_file(tokenizer, "--tokenizer")), max_length)


def _load_tokenizer(prep: TextPreprocessing):
    try:
        from tokenizers import Tokenizer
    except ImportError as err:
        raise InputError("text inputs need the tokenizers library: pip install \"onnx-attr[text]\"") from err
    from onnx_attr.app.names import read_bounded_text

    text = read_bounded_text(prep.tokenizer, "--tokenizer", MAX_TOKENIZER_BYTES, "a tokenizer file")
    try:
        return Tokenizer.from_str(text)
    except Exception as err:  # the library raises its own exception type for any malformed file
        raise InputError(f"--tokenizer {prep.tokenizer!r} is not a tokenizer.json the tokenizers library reads "
                         f"({err}); save one with Tokenizer.save or a transformers tokenizer's "
                         "save_pretrained") from err


def _integer(spec: TensorSpec) -> bool:
    return spec.dtype is not None and np.issubdtype(spec.dtype, np.integer)


class TextEncoder:
    """Lines of text -> the model's id / mask / type-id inputs, and each example's token strings."""

    def __init__(self, prep: TextPreprocessing, specs: Sequence[TensorSpec]):
        self.prep = prep
        self.tokenizer = _load_tokenizer(prep)
        integer = [s for s in specs if _integer(s) and s.shape is not None and len(s.shape) == 2]
        self.mask = next((s for s in integer if "mask" in s.name.lower()), None)
        self.types = next((s for s in integer if "type" in s.name.lower()), None)
        rest = [s for s in integer if s is not self.mask and s is not self.types]
        named = [s for n in ID_NAMES for s in rest if s.name.lower() == n]
        self.ids = named[0] if named else (rest[0] if len(rest) == 1 else None)
        if self.ids is None:
            raise InputError("text feeds a model with one integer input of shape [batch, tokens] (token ids); this "
                             f"model's inputs are {', '.join(s.describe() for s in specs)}")
        fed = {s.name for s in (self.ids, self.mask, self.types) if s is not None}
        others = [s.name for s in specs if s.name not in fed]
        if others:
            raise InputError(f"text gives token ids, attention mask and token type ids; the model also takes {others}, "
                             "which text cannot give: save all inputs in an .npz instead")
        static = self.ids.shape[1] if isinstance(self.ids.shape[1], int) else None
        if prep.max_length is not None and static is not None and prep.max_length != static:
            raise InputError(f"--max-length {prep.max_length} differs from the {static} tokens input {self.ids.name!r} "
                             "takes")
        self.length = prep.max_length or static
        self.vocab = {int(i): t for t, i in self.tokenizer.get_vocab(with_added_tokens=True).items()}

    @property
    def fed(self) -> list[TensorSpec]:
        return [s for s in (self.ids, self.mask, self.types) if s is not None]

    def encode(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], list[list[str]]]:
        """The model's inputs for `texts` (one row each) and each row's token strings."""
        tokenizer = self.tokenizer
        pad_id, pad_token = self._pad()
        if self.length is not None:
            tokenizer.enable_truncation(max_length=self.length)
            tokenizer.enable_padding(length=self.length, pad_id=pad_id, pad_token=pad_token)
        else:
            tokenizer.no_truncation()
            tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)  # to the longest of the call
        encodings = tokenizer.encode_batch(list(texts)) if texts else []
        width = len(encodings[0].ids) if encodings else (self.length or 0)
        arrays: dict[str, np.ndarray] = {}
        for spec, field in ((self.ids, "ids"), (self.mask, "attention_mask"), (self.types, "type_ids")):
            if spec is not None:
                values = np.asarray([getattr(e, field) for e in encodings], dtype=np.int64)
                values = values.reshape(len(encodings), width)
                arrays[spec.name] = values.astype(spec.dtype)
        return arrays, [list(e.tokens) for e in encodings]

    def _pad(self) -> tuple[int, str]:
        configured: Optional[dict[str, Any]] = self.tokenizer.padding
        if configured:
            return int(configured["pad_id"]), str(configured["pad_token"])
        for token in PAD_TOKENS:
            found = self.tokenizer.token_to_id(token)
            if found is not None:
                return int(found), token
        return 0, self.vocab.get(0, "[PAD]")


def read_lines(path: str) -> list[str]:
    """The examples of a text file: one per non-empty line (UTF-8; line ends dropped)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return [line.rstrip("\r\n") for line in handle if line.strip()]
    except UnicodeDecodeError as err:
        raise InputError(f"{str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); give one example per "
                         "line in UTF-8") from err


__all__ = ["TextPreprocessing", "TextEncoder", "text_preprocessing", "read_lines", "TEXT_SUFFIXES"]
