"""Stage plumbing: metrics files, resumable outputs, the notebook runner's paths, which models a profile needs."""
import json
import math

import numpy as np
import pytest

from lib import config, report, run_notebook


def test_write_metrics_rounds_and_cleans(tmp_path):
    path = report.write_metrics("x", {"b": 1 / 3, "a": np.float32(0.5), "nan": math.nan, "n": np.int64(3),
                                      "nested": {"t": (1.23456789, "s")}}, root=tmp_path)
    assert path == tmp_path / "reports" / "metrics" / "x.json"
    assert json.loads(path.read_text()) == {"a": 0.5, "b": 0.3333, "nan": None, "n": 3,
                                            "nested": {"t": [1.2346, "s"]}}
    assert list(json.loads(path.read_text())) == ["a", "b", "n", "nan", "nested"]  # sorted keys: stable diffs


def test_resumable_dir_keeps_work_with_same_params_and_sets_stale_work_aside(tmp_path):
    out = tmp_path / "06_synthesize"
    report.resumable_dir(out, "aaa")
    (out / "dialogues.jsonl").write_text('{"id": "1"}\n')
    report.resumable_dir(out, "aaa")  # same params: resume
    assert (out / "dialogues.jsonl").read_text() == '{"id": "1"}\n'
    report.resumable_dir(out, "bbb")  # other params: moved aside, never deleted
    assert not (out / "dialogues.jsonl").exists() and (out / "FINGERPRINT").read_text().strip() == "bbb"
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("06_synthesize.stale-")]
    assert len(aside) == 1 and (aside[0] / "dialogues.jsonl").read_text() == '{"id": "1"}\n'


def test_versions_names_the_device():
    info = report.versions()
    assert info["torch"].startswith("2.13.0") and "device" in info


def test_runner_output_path():
    nb = config.ROOT / "notebooks" / "08_sft_jic.ipynb"
    assert run_notebook.output_path(nb, "raft") == config.ROOT / "reports/notebooks/08_sft_jic_raft.ipynb"
    assert run_notebook.output_path(nb) == config.ROOT / "reports/notebooks/08_sft_jic.ipynb"


def test_executed_notebooks_carry_no_absolute_path(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "ROOT", tmp_path / "repo")
    nb = tmp_path / "x.ipynb"
    nb.write_text(json.dumps({"metadata": {"papermill": {"input_path": f"{tmp_path}/repo/notebooks/x.ipynb"}},
                              "cells": [{"outputs": [{"text": f"cwd {tmp_path}/repo\n"}]}]}))
    run_notebook.relative_paths(nb)
    assert str(tmp_path) not in nb.read_text()
    assert json.loads(nb.read_text())["metadata"]["papermill"]["input_path"] == "notebooks/x.ipynb"


def test_a_notebook_run_by_hand_writes_metrics_and_figures_under_scratch(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(config, "_output_root", config.ROOT)  # restored after the test
    assert config.output_root("scratch") == config.SCRATCH == config.ROOT / "scratch"
    metrics = report.write_metrics("test_scratch_only", {"a": 1})
    figure = report.save_figure(plt.figure(), "test_scratch_only")
    try:
        assert metrics == config.SCRATCH / "reports" / "metrics" / "test_scratch_only.json"
        assert figure == config.SCRATCH / "figures" / "test_scratch_only.png"
        assert not (config.ROOT / "reports" / "metrics" / "test_scratch_only.json").exists()
        assert config.output_root("pipeline") == config.ROOT
        assert report.write_metrics("x", {}, root=config.SCRATCH).parent == metrics.parent  # an explicit root wins
    finally:
        for path in (metrics, figure, config.SCRATCH / "reports" / "metrics" / "x.json"):
            path.unlink(missing_ok=True)


def test_output_root_names_a_bad_value():
    with pytest.raises(config.ParamsError, match="outputs = 'repo'"):
        config.output_root("repo")


def test_00_models_prepares_every_model_the_profile_names_but_not_an_endpoint_teacher():
    cpu = config.model_specs(config.load("cpu"))  # local SmolLM2 teachers
    assert {k for k, v in cpu.items() if v == "gguf:smollm2"} == {
        "models.student", "synthesize.jic.model", "label.pchat.model", "synthesize.pchat.model",
        "label.persllm.model"}
    assert not any(k.endswith(".model") and "sft" not in k for k in config.model_specs(config.load("tiny")))
    paper = config.model_specs(config.load("paper", check_files=False))  # teachers behind endpoints: names only
    assert set(paper.values()) == {"meta-llama/Meta-Llama-3-8B-Instruct", "microsoft/deberta-large",
                                   "facebook/bart-base", "sentence-transformers/all-MiniLM-L6-v2",
                                   "google-bert/bert-base-uncased", "sentence-transformers/gtr-t5-base"}
    assert {"sft.pchat.model", "eval.pchat.mcn_encoder", "eval.jic.bertscore_model",
            "label.persllm.encoder"} <= set(paper)
    # PersLLM's encoder: gtr-t5-base on the Hub for paper, the packaged MiniLM (offline) for tiny and cpu
    assert {config.model_specs(config.load(p))["label.persllm.encoder"] for p in ("tiny", "cpu")} == {"package:minilm"}
    # tiny and cpu name no BERTScore model (null: the offline embedder), so 00_models stays offline there
    assert not any(k.startswith("eval.jic") for p in ("tiny", "cpu") for k in config.model_specs(config.load(p)))


def test_resumable_dir_restarts_after_a_finished_run(tmp_path):
    out = tmp_path / "08_sft"
    report.resumable_dir(out, "aaa")
    (out / "checkpoint-30").mkdir()
    report.mark_complete(out)
    report.resumable_dir(out, "aaa")  # same params, but DVC only re-runs a finished stage when code changed
    assert not (out / "checkpoint-30").exists() and not (out / "COMPLETE").exists()
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("08_sft.stale-")]) == 1


def test_finished_runs_leave_no_checkpoints_and_at_most_one_finished_copy_aside(tmp_path):
    out = tmp_path / "09_dpo"
    stale = lambda: sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("09_dpo.stale-"))
    report.resumable_dir(out, "aaa")
    (out / "checkpoints" / "checkpoint-40").mkdir(parents=True)
    (out / "expert_C_high" / "checkpoints" / "checkpoint-8").mkdir(parents=True)
    (out / "adapter").mkdir()
    report.mark_complete(out)  # checkpoints exist only to resume: gone; the adapter stays
    assert (out / "adapter").is_dir() and not list(out.rglob("checkpoint*")) and (out / "COMPLETE").is_file()
    report.resumable_dir(out, "aaa")  # the finished run set aside
    first = stale()
    (out / "unfinished.jsonl").write_text("work\n")
    report.resumable_dir(out, "bbb")  # params changed mid-run: unfinished work set aside, never deleted
    assert len(stale()) == 2
    report.mark_complete(out)
    report.resumable_dir(out, "bbb")  # a second finished run set aside: the older finished copy goes
    kept = stale()
    assert len(kept) == 2 and first[0] not in kept
    assert any((tmp_path / k / "unfinished.jsonl").exists() for k in kept)


def test_markdown_table_and_interval_text_are_the_tables_one_format():
    from lib import stats

    assert report.markdown_table(["method", "O"], [["SFT", 0.5], ("DPO", "+0.10")]) == [
        "| method | O |", "|---|---|", "| SFT | 0.5 |", "| DPO | +0.10 |"]
    assert report.markdown_table(["a"], []) == ["| a |", "|---|"]
    summary = {"mean": 0.1234, "lo": -0.01, "hi": 0.25, "n": 9}
    assert stats.interval_text(summary) == "+0.123 [-0.010, +0.250]"
    assert stats.interval_text(summary, ".2f") == "0.12 [-0.01, 0.25]"
