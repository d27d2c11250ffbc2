"""The project's statistics, pure functions of numbers: ``task=kl``'s report and the binomial interval.

The KL report is llama.cpp's ``perplexity --kl-divergence``. From per-token values (KL(reference ‖ model), top-1 agreement, the correct
token's probability change Δp and both models' negative log-likelihoods):

- perplexity of both models ± standard error, the correlation of their
  per-token ln-probabilities, the mean ln PPL ratio (its error uses that
  covariance), the PPL ratio and difference;
- KL mean ± standard error and its distribution (maximum, 99.9 … 0.1
  percentiles, minimum);
- Δp mean ± standard error, RMS ± standard error and its distribution;
- top-1 agreement ("same top p") ± standard error.

Standard errors are those of a mean over tokens (sample standard deviation
/ √n); percentiles interpolate linearly between sorted values (numpy's
default, llama.cpp's too). Negative KL values from rounding are kept, as in
llama.cpp.

:func:`wilson_interval` is the 95% interval of an accuracy, in ``task=accuracy``'s
metrics and the summary figure's error bars.
"""

import math
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

KL_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)
DELTA_P_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 75.0, 50.0, 25.0, 10.0, 5.0, 1.0, 0.1)


def _mean_stderr(x: np.ndarray) -> Tuple[float, float]:
    n = x.size
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def _distribution(x: np.ndarray, percentiles: Sequence[float]) -> List[List[float]]:
    """``[[100, max], [p, value]..., [0, min]]``."""
    values = np.percentile(x, percentiles)
    return ([[100.0, float(x.max())]] + [[p, float(v)] for p, v in zip(percentiles, values)]
            + [[0.0, float(x.min())]])


def summarize(t: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """The statistics of per-token values ``kl``, ``same``, ``dp``, ``nll``, ``nll_ref``.

    Returns:
        Flat headline metrics (see the module doc), plus ``kl_percentiles`` and
        ``delta_p_percentiles``: ``[[percent, value], ...]`` from 100 (maximum) to 0
        (minimum).
    """
    n = int(t["kl"].size)
    kl, dp, same = t["kl"], t["dp"], t["same"].astype(np.float64)
    nll, nll_ref = t["nll"], t["nll_ref"]
    ln_ppl, ln_ppl_se = _mean_stderr(nll)
    ln_ref, ln_ref_se = _mean_stderr(nll_ref)
    # Covariance of the two means: the per-token covariance / n.
    cov = float(np.cov(nll, nll_ref, ddof=1)[0, 1] / n) if n > 1 else 0.0
    ln_ratio = ln_ppl - ln_ref
    ln_ratio_se = math.sqrt(max(ln_ppl_se ** 2 + ln_ref_se ** 2 - 2 * cov, 0.0))
    ppl, ppl_ref = math.exp(ln_ppl), math.exp(ln_ref)
    ppl_se, ppl_ref_se = ppl * ln_ppl_se, ppl_ref * ln_ref_se
    kl_mean, kl_se = _mean_stderr(kl)
    dp_mean, dp_se = _mean_stderr(dp)
    mse, mse_se = _mean_stderr(dp ** 2)
    rms = math.sqrt(mse)
    top1 = float(same.mean())
    return {
        "kl_mean": kl_mean,
        "kl_mean_stderr": kl_se,
        "kl_median": float(np.median(kl)),
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()),
        "kl_percentiles": _distribution(kl, KL_PERCENTILES),
        "top1_agreement": top1,
        "top1_agreement_stderr": math.sqrt(top1 * (1 - top1) / (n - 1)) if n > 1 else 0.0,
        "delta_p_mean": dp_mean,
        "delta_p_mean_stderr": dp_se,
        "delta_p_rms": rms,
        "delta_p_rms_stderr": 0.5 / rms * mse_se if rms > 0 else 0.0,
        "delta_p_percentiles": _distribution(dp, DELTA_P_PERCENTILES),
        "perplexity": ppl,
        "perplexity_stderr": ppl_se,
        "reference_perplexity": ppl_ref,
        "reference_perplexity_stderr": ppl_ref_se,
        "ln_perplexity_correlation": cov / (ln_ppl_se * ln_ref_se) if ln_ppl_se * ln_ref_se > 0 else None,
        "ln_perplexity_ratio": ln_ratio,
        "ln_perplexity_ratio_stderr": ln_ratio_se,
        "perplexity_ratio": math.exp(ln_ratio),
        "perplexity_ratio_stderr": math.exp(ln_ratio) * ln_ratio_se,
        "perplexity_difference": ppl - ppl_ref,
        "perplexity_difference_stderr": math.sqrt(max(
            ppl_se ** 2 + ppl_ref_se ** 2 - 2 * ppl * ppl_ref * cov, 0.0)),
        "tokens_evaluated": n,
    }


def _label(percent: float, name: str) -> str:
    if percent == 100.0:
        return f"Maximum {name}"
    if percent == 0.0:
        return f"Minimum {name}"
    if percent == 50.0:
        return f"Median  {name}"
    return f"{percent:4.1f}%   {name}"


def report_text(s: Dict[str, Any]) -> str:
    """The statistics laid out as llama.cpp prints them."""
    cor = s["ln_perplexity_correlation"]
    lines = [
        "====== Perplexity statistics ======",
        f"Mean PPL(Q)                   : {s['perplexity']:10.6f} ± {s['perplexity_stderr']:10.6f}",
        f"Mean PPL(base)                : {s['reference_perplexity']:10.6f} ± "
        f"{s['reference_perplexity_stderr']:10.6f}",
        "Cor(ln(PPL(Q)), ln(PPL(base))): " + (f"{100 * cor:6.2f}%" if cor is not None else "   n/a"),
        f"Mean ln(PPL(Q)/PPL(base))     : {s['ln_perplexity_ratio']:10.6f} ± "
        f"{s['ln_perplexity_ratio_stderr']:10.6f}",
        f"Mean PPL(Q)/PPL(base)         : {s['perplexity_ratio']:10.6f} ± "
        f"{s['perplexity_ratio_stderr']:10.6f}",
        f"Mean PPL(Q)-PPL(base)         : {s['perplexity_difference']:10.6f} ± "
        f"{s['perplexity_difference_stderr']:10.6f}",
        "",
        "====== KL divergence statistics ======",
        f"Mean    KLD: {s['kl_mean']:10.6f} ± {s['kl_mean_stderr']:10.6f}",
        *(f"{_label(p, 'KLD')}: {v:10.6f}" for p, v in s["kl_percentiles"]),
        "",
        "====== Token probability statistics ======",
        f"Mean    Δp: {100 * s['delta_p_mean']:6.3f} ± {100 * s['delta_p_mean_stderr']:5.3f} %",
        *(f"{_label(p, 'Δp')}: {100 * v:6.3f}%" for p, v in s["delta_p_percentiles"]),
        f"RMS Δp    : {100 * s['delta_p_rms']:6.3f} ± {100 * s['delta_p_rms_stderr']:5.3f} %",
        f"Same top p: {100 * s['top1_agreement']:6.3f} ± {100 * s['top1_agreement_stderr']:5.3f} %",
    ]
    return "\n".join(lines) + "\n"


# The normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson_interval(correct: float, total: float, z: float = Z95) -> Tuple[float, float]:
    """The binomial 95% (Wilson score) interval of ``correct / total``."""
    if total <= 0:
        return (0.0, 1.0)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))
