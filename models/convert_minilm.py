#!/usr/bin/env python3
"""Convert a sentence-transformers BERT model (all-MiniLM-L6-v2: config.json, model.safetensors,
tokenizer.json) to a BERT GGUF that llama.cpp loads as an embedding model with mean pooling.

Dependencies: gguf, safetensors, numpy (no torch). Usage: convert_minilm.py MODEL_DIR OUT.gguf

The tensor names and metadata follow llama.cpp's own BERT conversion: WordPiece vocabulary in
"phantom space" form (word-initial pieces get U+2581, "##" continuations lose their prefix),
control tokens kept as they are, [CLS]/[SEP] as BOS/EOS, all weights in F32.
"""

import json
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file


def main(src: Path, out: Path) -> None:
    cfg = json.loads((src / "config.json").read_text())
    tok = json.loads((src / "tokenizer.json").read_text())
    pooling = json.loads((src / "1_Pooling" / "config.json").read_text())
    if cfg.get("model_type") != "bert":
        sys.exit(f"unsupported model_type {cfg.get('model_type')!r}: only BERT is converted")
    if not pooling.get("pooling_mode_mean_tokens"):
        sys.exit("only mean pooling is supported")

    n_layer = cfg["num_hidden_layers"]
    w = gguf.GGUFWriter(str(out), "bert")
    w.add_name("all-MiniLM-L6-v2")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(n_layer)
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    # Vocabulary: WordPiece ids in order.
    vocab = tok["model"]["vocab"]
    tokens = [None] * len(vocab)
    for piece, idx in vocab.items():
        tokens[idx] = piece
    special = {t["content"] for t in tok.get("added_tokens", []) if t.get("special")}
    toktypes = []
    out_tokens = []
    for t in tokens:
        if t in special:
            toktypes.append(gguf.TokenType.CONTROL)
            out_tokens.append(t)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
            out_tokens.append(t[2:] if t.startswith("##") else "\u2581" + t)
    w.add_token_type_count(cfg.get("type_vocab_size", 2))
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(out_tokens)
    w.add_token_types(toktypes)
    ids = {t: i for i, t in enumerate(tokens)}
    w.add_bos_token_id(ids["[CLS]"])
    w.add_eos_token_id(ids["[SEP]"])
    w.add_unk_token_id(ids["[UNK]"])
    w.add_sep_token_id(ids["[SEP]"])
    w.add_pad_token_id(ids["[PAD]"])
    w.add_mask_token_id(ids["[MASK]"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    tensors = load_file(str(src / "model.safetensors"))
    for name, data in sorted(tensors.items()):
        if name.startswith("pooler.") or name.endswith("position_ids"):
            continue
        key = name[len("bert."):] if name.startswith("bert.") else name
        new = tmap.get_name(key, try_suffixes=(".weight", ".bias"))
        if new is None:
            sys.exit(f"cannot map tensor {name}")
        w.add_tensor(new, np.ascontiguousarray(data.astype(np.float32)))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({len(tokens)} tokens, {n_layer} layers)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
