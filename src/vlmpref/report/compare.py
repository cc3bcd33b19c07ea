"""Before/after comparison of two evaluation folders: every metric, its change, and a paired interval.

The change of each metric is computed from the per-example records of both folders, paired by row
(`samples.jsonl`) or by probe (`pope.jsonl`): a paired bootstrap resamples examples and scores the same
ones before and after, so the interval says whether the change is more than noise. When the two folders
hold different rows, only the change of the values is shown, without an interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from vlmpref.eval import stats
from vlmpref.eval.evaluate import EvalRun


@dataclass(frozen=True)
class MetricSpec:
    """One row of the comparison: where the metric is in metrics.json and how to recompute it per example."""

    path: str  # dotted key in metrics.json's "metrics"
    label: str
    group: str
    percent: bool = True
    higher_is_better: bool | None = True  # None: no better direction (the share of "yes")
    source: str = "samples"  # the records a paired change is computed from: samples or pope
    select: Callable[[dict], bool] | None = None  # which records the metric covers
    statistic: str = "mean"  # mean of `field`, or a named statistic (chair_instance, precision, ...)
    field: str | None = None
    headline: bool = True  # shown in the terminal table (the report shows every row)


def _type_is(qtype: str) -> Callable[[dict], bool]:
    return lambda s: (s.get("question_type") or "all") == qtype


def _annotated(s: dict) -> bool:
    return s.get("objects") is not None


def _compat(s: dict) -> bool:
    return s.get("chair_compat_mentioned") is not None


STRATEGY_ORDER = ("random", "popular", "adversarial")


def _strategy_is(strategy: str) -> Callable[[dict], bool]:
    return lambda p: p["strategy"] == strategy


def metric_specs(before: dict, after: dict) -> list[MetricSpec]:
    """The rows to show for these two metrics dicts, in report order."""
    specs = [MetricSpec("answer_accuracy", "answer accuracy", "Answers", field="correct"),
             MetricSpec("answer_token_f1", "answer token-F1", "Answers", field="token_f1")]
    types = sorted(set(before.get("answer_accuracy_by_type", {})) | set(after.get("answer_accuracy_by_type", {})))
    specs += [MetricSpec(f"answer_accuracy_by_type.{t}", f"  accuracy: {t}", "Answers", select=_type_is(t),
                         field="correct") for t in types if len(types) > 1]
    specs += [MetricSpec("chair_sentence", "hallucination (CHAIR-sentence, vlmpref)", "Hallucination",
                         higher_is_better=False, select=_annotated, statistic="any_hallucinated"),
              MetricSpec("chair_instance", "hallucination (CHAIR-instance, vlmpref)", "Hallucination",
                         higher_is_better=False, select=_annotated, statistic="chair_instance")]
    types = sorted(set(before.get("chair_sentence_by_type", {})) | set(after.get("chair_sentence_by_type", {})))
    specs += [MetricSpec(f"chair_sentence_by_type.{t}", f"  CHAIR-sentence: {t}", "Hallucination",
                         higher_is_better=False, select=lambda s, t=t: _annotated(s) and _type_is(t)(s),
                         statistic="any_hallucinated", headline=False) for t in types if len(types) > 1]
    # the published scorer's reading, to quote next to papers
    specs += [MetricSpec("chair_compat.chair_sentence", "CHAIR-sentence (chair_compat, as in papers)", "Hallucination",
                         higher_is_better=False, select=_compat, statistic="any_hallucinated",
                         field="chair_compat_hallucinated"),
              MetricSpec("chair_compat.chair_instance", "CHAIR-instance (chair_compat, as in papers)", "Hallucination",
                         higher_is_better=False, select=_compat, statistic="chair_instance",
                         field="chair_compat_hallucinated")]
    for key, reading, field in (("pope", "vlmpref", "says_yes"), ("pope_compat", "pope_compat, as in papers",
                                                                   "says_yes_compat")):
        strategies = list(dict.fromkeys([*STRATEGY_ORDER, *before.get(key, {}), *after.get(key, {})]))
        for strategy in strategies:
            if strategy not in before.get(key, {}) and strategy not in after.get(key, {}):
                continue
            for name, label, better, headline in (("f1", "F1", True, True), ("accuracy", "accuracy", True, False),
                                                  ("precision", "precision", True, False),
                                                  ("recall", "recall", True, False),
                                                  ("yes_ratio", "yes-ratio", None, strategy == "adversarial")):
                specs.append(MetricSpec(f"{key}.{strategy}.{name}", f"POPE {strategy} {label} ({reading})",
                                        "Hallucination", higher_is_better=better, source="pope",
                                        select=_strategy_is(strategy), statistic=f"pope_{name}", field=field,
                                        headline=headline and (key == "pope" or name == "f1")))
    method = str((after.get("relevance") or before.get("relevance") or {}).get("method", "lexical"))
    embedding = "embedding" in method
    specs.append(MetricSpec("relevance", f"relevance ({'embedding' if embedding else 'lexical'})", "Relevance",
                            field="relevant"))
    if embedding:
        specs += [MetricSpec("relevance_lexical", "relevance (lexical)", "Relevance", field="lexical_relevant",
                             headline=False),
                  MetricSpec("relevance_similarity_reference", "similarity to reference", "Relevance", percent=False,
                             field="similarity_reference", headline=False),
                  MetricSpec("relevance_similarity_question", "similarity to question", "Relevance", percent=False,
                             field="similarity_question", headline=False)]
    specs += [MetricSpec("length_normalized_accuracy", "prefers chosen (per-token log-prob)", "Preference",
                         field="prefers_chosen_per_token"),
              MetricSpec("logprob_accuracy", "prefers chosen (summed log-prob)", "Preference", field="prefers_chosen",
                         headline=False),
              MetricSpec("reward_accuracy", "DPO reward accuracy (vs base)", "Preference", field=None),
              MetricSpec("reward_margin", "DPO reward margin (vs base)", "Preference", percent=False, field=None)]
    return [s for s in specs if lookup(before, s.path) is not None or lookup(after, s.path) is not None]


def lookup(metrics: dict, path: str) -> dict | None:
    node = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) and "value" in node else None


# ---- per-example statistics, for paired intervals


def _statistic(spec: MetricSpec, records: list[dict]) -> Callable[[np.ndarray], float]:
    """A function from an index array over `records` to the metric's value on those records."""
    if spec.statistic == "mean":
        values = np.array([float(r.get(spec.field) or 0.0) for r in records])
        return lambda idx: values[idx].mean() if len(idx) else float("nan")
    hallucinated = spec.field or "hallucinated"
    if spec.statistic == "any_hallucinated":
        values = np.array([float(bool(r.get(hallucinated))) for r in records])
        return lambda idx: values[idx].mean() if len(idx) else float("nan")
    if spec.statistic == "chair_instance":
        mentioned = hallucinated.replace("hallucinated", "mentioned")
        num = np.array([len(r.get(hallucinated) or []) for r in records], dtype=float)
        den = np.array([len(r.get(mentioned) or []) for r in records], dtype=float)
        return lambda idx: num[idx].sum() / den[idx].sum() if den[idx].sum() else float("nan")
    label = np.array([bool(r["label"]) for r in records])
    yes = np.array([bool(r.get(spec.field or "says_yes")) for r in records])
    name = spec.statistic.removeprefix("pope_")

    def pope(idx):
        y, p = label[idx], yes[idx]
        tp = float((y & p).sum())
        if name == "accuracy":
            return float((y == p).mean()) if len(idx) else float("nan")
        if name == "yes_ratio":
            return float(p.mean()) if len(idx) else float("nan")
        if name == "precision":
            return tp / p.sum() if p.sum() else float("nan")
        if name == "recall":
            return tp / y.sum() if y.sum() else float("nan")
        return 2 * tp / (y.sum() + p.sum()) if (y.sum() + p.sum()) else float("nan")

    return pope


def _paired_records(spec: MetricSpec, before: EvalRun, after: EvalRun) -> tuple[list[dict], list[dict]] | None:
    """The records both runs share for this metric, in the same order; None when they cannot be paired."""
    if spec.source == "pope":
        key = lambda r: (r["strategy"], r["image"], r["object"])
        b_records, a_records = before.pope, after.pope
    else:
        key = lambda r: (r["row_id"], r["question"])
        b_records, a_records = before.samples, after.samples
    if spec.select is not None:
        b_records = [r for r in b_records if spec.select(r)]
        a_records = [r for r in a_records if spec.select(r)]
    b_by_key = {key(r): r for r in b_records}
    a_by_key = {key(r): r for r in a_records}
    if not b_by_key or set(b_by_key) != set(a_by_key):
        return None
    keys = list(b_by_key)
    return [b_by_key[k] for k in keys], [a_by_key[k] for k in keys]


@dataclass
class ComparisonRow:
    spec: MetricSpec
    before: dict | None
    after: dict | None
    change: dict | None  # {"value", "n", "ci95", "ci"}: paired bootstrap, or the plain difference

    @property
    def verdict(self) -> str:
        """"better" / "worse" when the 95% interval of the change excludes 0, else "within noise"."""
        if self.change is None or self.spec.higher_is_better is None:
            return ""
        low, high = self.change.get("ci95") or (None, None)
        if low is None or high is None:
            return ""
        if low > 0 or high < 0:
            up = low > 0
            return "better" if up == self.spec.higher_is_better else "worse"
        return "within noise"


def compare_runs(before: EvalRun, after: EvalRun) -> list[ComparisonRow]:
    """Every metric present in either run, with its paired change where both runs hold it."""
    rows = []
    for spec in metric_specs(before.metrics, after.metrics):
        b, a = lookup(before.metrics, spec.path), lookup(after.metrics, spec.path)
        change = None
        if b is not None and a is not None and b.get("value") is not None and a.get("value") is not None:
            paired = _paired_records(spec, before, after) if (spec.field or spec.statistic != "mean") else None
            if paired is not None and spec.source == "pope" and not all(spec.field in r for r in paired[0] + paired[1]):
                paired = None  # a schema-1 folder holds no compat reading of its probes
            if paired is not None:
                b_records, a_records = paired
                change = stats.paired_change(len(b_records), _statistic(spec, b_records), _statistic(spec, a_records))
                change["value"] = a["value"] - b["value"]  # the reported values' difference, exactly
            else:
                change = {"value": a["value"] - b["value"], "n": None, "ci95": [None, None], "ci": None}
        rows.append(ComparisonRow(spec, b, a, change))
    return rows


def warnings(before: EvalRun, after: EvalRun) -> list[str]:
    """Reasons the two evaluations may not be comparable, one sentence each."""
    out = []
    b_doc, a_doc = before.document, after.document
    b_data, a_data = b_doc.get("dataset", {}), a_doc.get("dataset", {})
    scored = b_data.get("split", "") is None and a_data.get("split", "") is None  # two `vlmpref score` answer files
    if b_data and a_data and not scored and \
            (b_data.get("source"), b_data.get("split")) != (a_data.get("source"), a_data.get("split")):
        out.append(f"The runs evaluated different data ({b_data.get('source')} [{b_data.get('split')}] vs "
                   f"{a_data.get('source')} [{a_data.get('split')}]).")
    for key, what in (("relevance_method", "relevance methods"), ("vocabulary", "object vocabularies"),
                      ("max_new_tokens", "answer lengths (max_new_tokens)")):
        b, a = b_doc.get("settings", {}).get(key), a_doc.get("settings", {}).get(key)
        if b != a and b is not None and a is not None:
            out.append(f"The runs used different {what}: {b} before, {a} after.")
    versions = (b_doc.get("schema_version"), a_doc.get("schema_version"))
    if versions[0] != versions[1] and min(v or 0 for v in versions) < 2:
        out.append(f"The runs were scored by different vlmpref versions (metrics.json schema {versions[0]} before, "
                   f"{versions[1]} after): schema 2 reads answers more sharply and samples POPE's negatives as the "
                   "paper does, so CHAIR and POPE changes mix that with the model's; re-score both to compare them.")
    b_rows = {(s["row_id"], s["question"]) for s in before.samples}
    a_rows = {(s["row_id"], s["question"]) for s in after.samples}
    if b_rows != a_rows:
        out.append("The runs hold different examples, so changes carry no paired interval.")
    return out
