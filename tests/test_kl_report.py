"""task=kl's llama.cpp-style report against a numpy computation on the same logits."""

import re

import mlx.core as mx
import numpy as np
import pytest
from conftest import read_run, run_cli, run_dirs
from helpers.table_model import TableModel

from mlxhydra.stats import report_text, summarize
from mlxhydra.tasks.kl import compare, write_reference


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def stats(tmp_path_factory):
    """(summary, numpy's per-token values) for two random 11-token 'models' on 30 x 21 tokens."""
    rng = np.random.default_rng(1)
    vocab = 11
    ref_table = rng.normal(0, 2.0, (vocab, vocab))
    model_table = ref_table + rng.normal(0, 0.7, (vocab, vocab))
    tokens = rng.integers(0, vocab, (30, 21))
    path = tmp_path_factory.mktemp("kl") / "ref"
    write_reference(TableModel(ref_table), mx.array(tokens), 4, "float32", path, {})
    summary = summarize(compare(TableModel(model_table), mx.array(tokens), 4, path))
    lp_ref = log_softmax(ref_table)[tokens[:, :-1]]
    lp = log_softmax(model_table)[tokens[:, :-1]]
    targets = tokens[:, 1:, None]
    nll_ref = -np.take_along_axis(lp_ref, targets, -1).ravel()
    nll = -np.take_along_axis(lp, targets, -1).ravel()
    values = {
        "kl": (np.exp(lp_ref) * (lp_ref - lp)).sum(-1).ravel(),
        "same": (lp_ref.argmax(-1) == lp.argmax(-1)).ravel(),
        "dp": np.exp(-nll) - np.exp(-nll_ref),
        "nll": nll, "nll_ref": nll_ref,
    }
    return summary, values


def se(x):
    return x.std(ddof=1) / np.sqrt(x.size)


def test_kl_distribution(stats):
    s, v = stats
    kl = v["kl"]
    assert s["tokens_evaluated"] == kl.size == 600
    assert s["kl_mean"] == pytest.approx(kl.mean(), rel=1e-5)
    assert s["kl_mean_stderr"] == pytest.approx(se(kl), rel=1e-4)
    points = dict((p, x) for p, x in s["kl_percentiles"])
    assert list(points) == [100.0, 99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1, 0.0]
    assert points[100.0] == pytest.approx(kl.max(), rel=1e-5) == s["kl_max"]
    assert points[0.0] == pytest.approx(kl.min(), rel=1e-4, abs=1e-7)
    for p in (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1):
        assert points[p] == pytest.approx(np.percentile(kl, p), rel=1e-4, abs=1e-7)
    assert points[50.0] == pytest.approx(s["kl_median"]) and points[99.0] == pytest.approx(s["kl_p99"])
    assert sorted(x for _, x in s["kl_percentiles"]) == [x for _, x in reversed(s["kl_percentiles"])]


def test_agreement_and_delta_p(stats):
    s, v = stats
    p = v["same"].mean()
    assert 0.3 < p < 1
    assert s["top1_agreement"] == p
    assert s["top1_agreement_stderr"] == pytest.approx(np.sqrt(p * (1 - p) / 599))
    dp = v["dp"]
    assert s["delta_p_mean"] == pytest.approx(dp.mean(), rel=1e-4, abs=1e-7)
    assert s["delta_p_mean_stderr"] == pytest.approx(se(dp), rel=1e-4)
    rms = np.sqrt((dp ** 2).mean())
    assert s["delta_p_rms"] == pytest.approx(rms, rel=1e-4)
    # d sqrt(m) = dm / (2 sqrt(m)): the error of the mean square carried to its root.
    assert s["delta_p_rms_stderr"] == pytest.approx(se(dp ** 2) / (2 * rms), rel=1e-4)
    points = dict((q, x) for q, x in s["delta_p_percentiles"])
    assert list(points) == [100.0, 99.9, 99.0, 95.0, 90.0, 75.0, 50.0, 25.0, 10.0, 5.0, 1.0, 0.1, 0.0]
    for q in (99.9, 99.0, 95.0, 90.0, 75.0, 50.0, 25.0, 10.0, 5.0, 1.0, 0.1):
        assert points[q] == pytest.approx(np.percentile(dp, q), rel=1e-4, abs=1e-7)
    assert points[100.0] == pytest.approx(dp.max(), abs=1e-6)
    assert points[0.0] == pytest.approx(dp.min(), abs=1e-6)


def test_perplexities_ratio_and_correlation(stats):
    s, v = stats
    nll, ref = v["nll"], v["nll_ref"]
    ppl, ppl_ref = np.exp(nll.mean()), np.exp(ref.mean())
    assert s["perplexity"] == pytest.approx(ppl, rel=1e-5)
    assert s["reference_perplexity"] == pytest.approx(ppl_ref, rel=1e-5)
    assert s["perplexity_stderr"] == pytest.approx(ppl * se(nll), rel=1e-4)
    assert s["reference_perplexity_stderr"] == pytest.approx(ppl_ref * se(ref), rel=1e-4)
    assert s["ln_perplexity_correlation"] == pytest.approx(np.corrcoef(nll, ref)[0, 1], rel=1e-4)
    diff = nll - ref  # the paired difference: its error is the ratio's
    assert s["ln_perplexity_ratio"] == pytest.approx(diff.mean(), rel=1e-4)
    assert s["ln_perplexity_ratio_stderr"] == pytest.approx(se(diff), rel=1e-4)
    assert s["ln_perplexity_ratio_stderr"] < np.hypot(se(nll), se(ref))  # correlated: smaller
    assert s["perplexity_ratio"] == pytest.approx(ppl / ppl_ref, rel=1e-5)
    assert s["perplexity_ratio_stderr"] == pytest.approx(ppl / ppl_ref * se(diff), rel=1e-4)
    # PPL(Q) - PPL(base) by the delta method: gradient (ppl, -ppl_ref) on the two mean NLLs.
    cov = np.cov(nll, ref, ddof=1) / nll.size
    grad = np.array([ppl, -ppl_ref])
    assert s["perplexity_difference"] == pytest.approx(ppl - ppl_ref, rel=1e-4)
    assert s["perplexity_difference_stderr"] == pytest.approx(np.sqrt(grad @ cov @ grad), rel=1e-4)


def test_report_reads_like_llama_cpp(stats):
    s, _ = stats
    text = report_text(s)
    mean = re.search(r"^Mean    KLD:\s+([-\d.]+) ±\s+([-\d.]+)$", text, re.M)
    assert float(mean[1]) == pytest.approx(s["kl_mean"], abs=1e-6)
    assert float(mean[2]) == pytest.approx(s["kl_mean_stderr"], abs=1e-6)
    top = re.search(r"^Same top p:\s+([\d.]+) ±\s+([\d.]+) %$", text, re.M)
    assert float(top[1]) == pytest.approx(100 * s["top1_agreement"], abs=1e-3)
    cor = re.search(r"^Cor\(ln\(PPL\(Q\)\), ln\(PPL\(base\)\)\):\s+([\d.]+)%$", text, re.M)
    assert float(cor[1]) == pytest.approx(100 * s["ln_perplexity_correlation"], abs=0.01)
    assert re.search(r"^99\.9%   KLD:", text, re.M) and re.search(r"^ 0\.1%   Δp:", text, re.M)
    for header in ("Perplexity statistics", "KL divergence statistics", "Token probability statistics"):
        assert f"====== {header} ======" in text


@pytest.mark.slow
def test_kl_run_writes_the_report(tmp_path):
    r = run_cli("task=kl", "quant.bits=3", "task.num_samples=4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = run_dirs(tmp_path)[-1]
    m = read_run(run)["metrics"]
    text = (run / "kl_report.txt").read_text()
    assert m["report"] == str(run / "kl_report.txt")
    assert text == report_text(m)
    assert m["kl_percentiles"][0] == [100.0, m["kl_max"]] and m["kl_mean"] > 0
    assert 0 < m["ln_perplexity_correlation"] < 1
