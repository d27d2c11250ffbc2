"""mlx-lm's DWQ on a local text file: the baseline of ``bench_methods.py`` for ``quant.method=dwq``.

    python bench/mlx_lm_dwq.py --model DIR --mlx-path OUT --data TEXT [--bits 4 ...]

``mlx_lm.dwq`` reads a Hugging Face dataset (the ``datasets`` package and a
download); this runs its ``main`` step by step with mlx-lm's own functions on
rows of a local text instead, drawn as its ``load_data`` draws documents:
seed numpy and mlx, tokenize, cut ``max_seq_length``-token rows, permute with
numpy (the first ``num_samples`` train, the next ``num_valid_samples``
validate), load the model lazily, quantize a copy, distill, save.
Prints ``BENCH_RESULT {json}`` with mlx's peak memory.
"""

import argparse
import copy
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--mlx-path", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--num-samples", type=int, default=2048)
    p.add_argument("--num-valid-samples", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=1025)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--batch-size", type=int, default=4)
    a = p.parse_args()

    import mlx.core as mx
    import mlx.optimizers as optimizers
    import numpy as np
    from mlx_lm.quant.dwq import dwq_quantize
    from mlx_lm.utils import load, load_tokenizer, quantize_model, save

    np.random.seed(a.seed)
    mx.random.seed(a.seed)
    tokenizer = load_tokenizer(Path(a.model))
    tokens = tokenizer.encode(Path(a.data).read_text())
    n = len(tokens) // a.max_seq_length
    rows = np.array(tokens[: n * a.max_seq_length]).reshape(n, a.max_seq_length)
    perm = np.random.permutation(n)
    train = [(rows[i].tolist(), 0) for i in perm[: a.num_samples]]
    valid = [(rows[i].tolist(), 0)
             for i in perm[a.num_samples: a.num_samples + a.num_valid_samples]]
    model, tokenizer, config = load(a.model, return_config=True, lazy=True)
    q_model = copy.deepcopy(model)
    _, config = quantize_model(q_model, config, group_size=a.group_size, bits=a.bits)
    opt = optimizers.Adam(learning_rate=a.learning_rate, bias_correction=True)
    dwq_quantize(q_model, lambda batch, idx, split: model(batch), opt, train, valid,
                 batch_size=a.batch_size, max_seq_length=a.max_seq_length, seed=a.seed)
    save(a.mlx_path, a.model, q_model, tokenizer, config)
    print("BENCH_RESULT " + json.dumps({"mx_peak_bytes": mx.get_peak_memory()}), flush=True)


if __name__ == "__main__":
    main()
