#!/usr/bin/env python3
"""Write a LoRA adapter GGUF for a llama-architecture base GGUF, for tests and demos.

The adapter targets every layer's attn_q and attn_v with rank-8 matrices drawn from a seeded
normal distribution (so it changes what the model says), or with B = 0 (--zero, the standard
LoRA initialisation: the model's output must not change). Shapes are read from the base.

Usage: make_lora.py BASE.gguf OUT.gguf [--zero] [--seed N] [--std X]
Dependencies: gguf, numpy (the models/ venv has them).
"""

import argparse

import gguf
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("out")
    ap.add_argument("--zero", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--std", type=float, default=0.3)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args()

    base = gguf.GGUFReader(args.base)
    arch = bytes(base.fields["general.architecture"].parts[-1]).decode()
    # ggml shapes are [in, out]; numpy's are reversed.
    shapes = {t.name: [int(x) for x in t.shape] for t in base.tensors}
    targets = sorted(n for n in shapes if n.endswith((".attn_q.weight", ".attn_v.weight")))
    if not targets:
        raise SystemExit(f"no attn_q/attn_v tensors in {args.base}")

    rng = np.random.default_rng(args.seed)
    w = gguf.GGUFWriter(args.out, arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(args.rank))
    w.add_name("test-lora-zero" if args.zero else f"test-lora-{args.seed}")
    for name in targets:
        n_in, n_out = shapes[name]
        a = rng.normal(0, args.std, size=(args.rank, n_in)).astype(np.float32)
        b = (np.zeros if args.zero else lambda s: rng.normal(0, args.std, size=s))((n_out, args.rank)).astype(np.float32)
        stem = name.removesuffix(".weight")
        w.add_tensor(f"{stem}.weight.lora_a", a)
        w.add_tensor(f"{stem}.weight.lora_b", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
