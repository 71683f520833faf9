"""The tiny model generates with the real vLLM engine on CPU (the foundation's end-to-end check).

The engine runs in the script's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: ~15 s less than EngineCore and a
worker process) and eager (no torch.compile: ~20 s less); the separate-process engine is started by the actor tests,
the compiled one by ``test_actor_engine.py`` (merged mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow


def test_tiny_model_generates_with_vllm(tiny_model, tmp_path):
    script = textwrap.dedent(f"""
        import json, math
        if __name__ == "__main__":
            from vllm import LLM, SamplingParams
            llm = LLM(model={str(tiny_model)!r}, dtype="float32", kv_cache_memory_bytes=128 * 2**20,
                      max_model_len=256, enable_prefix_caching=True, enforce_eager=True, seed=0)
            sp = SamplingParams(n=4, temperature=1.0, max_tokens=16, logprobs=0, seed=1, ignore_eos=True)
            out = llm.chat([[{{"role": "user", "content": "Resuma a avaliação: chegou atrasado."}}]], sp)[0]
            tok = llm.get_tokenizer()
            rows = [dict(ids=list(c.token_ids), text=c.text, decoded=tok.decode(c.token_ids),
                         finite=all(math.isfinite(next(iter(lp.values())).logprob) for lp in c.logprobs))
                    for c in out.outputs]
            print("RESULT " + json.dumps(rows))
    """)
    path = tmp_path / "gen.py"
    path.write_text(script)
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    rows = json.loads(line[len("RESULT "):])
    assert len(rows) == 4
    for r in rows:
        assert len(r["ids"]) == 16 and r["finite"] and r["text"] == r["decoded"]
