"""BIG5-CHAT reasoning evaluation (lib/big5chat/reasoning.py): the mirror loaders, the local task YAMLs against the
installed harness's own definitions, bad input, and a real lm_eval.simple_evaluate run on a micro Llama."""
import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lib.big5chat import reasoning as rs
from lib.big5chat.reasoning import (
    METRICS,
    PRIMARY,
    TASKS,
    accuracy,
    evaluate,
    harness_model,
    level_difference,
    load_items,
    persona_instruction,
    prompting_instruction,
    write_tasks,
)

MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reasoning"
needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason=f"reasoning mirror not at {MIRROR}")

COUNTS = {"gsm8k": 1319, "mathqa": 2985, "truthfulqa_mc1": 817, "truthfulqa_mc2": 817, "commonsense_qa": 1221,
          "piqa": 1838, "social_iqa": 1954, "mmlu": 14042}
FIELDS = {  # the Hub datasets' fields, as lm-eval's YAMLs read them
    "gsm8k": {"question", "answer"},
    "mathqa": {"Problem", "Rationale", "options", "correct", "annotated_formula", "linear_formula", "category"},
    "truthfulqa_mc1": {"question", "mc1_targets", "mc2_targets"},
    "truthfulqa_mc2": {"question", "mc1_targets", "mc2_targets"},
    "commonsense_qa": {"id", "question", "question_concept", "choices", "answerKey"},
    "piqa": {"goal", "sol1", "sol2", "label"},
    "social_iqa": {"context", "question", "answerA", "answerB", "answerC", "label"},
    "mmlu": {"question", "subject", "choices", "answer"},
}


# ---------------------------------------------------------------------------------------------------------------
# Loaders on the real mirror


@needs_mirror
@pytest.mark.parametrize("task", TASKS)
def test_load_items_counts_and_fields(task):
    items = load_items(MIRROR, task)
    assert len(items) == COUNTS[task]
    assert all(set(it) == FIELDS[task] for it in items)


@needs_mirror
def test_field_shapes_follow_the_hub_builders():
    piqa, siqa = load_items(MIRROR, "piqa"), load_items(MIRROR, "social_iqa")
    assert piqa[0]["goal"].startswith("How do I ready a guinea pig cage") and piqa[0]["label"] == 0
    assert {it["label"] for it in piqa} == {0, 1}
    assert siqa[0]["context"].startswith("Tracy didn't go home") and siqa[0]["label"] == "3"  # a string, as HF
    csqa = load_items(MIRROR, "commonsense_qa")[0]
    assert csqa["question"].startswith("A revolving door is convenient") and csqa["answerKey"] == "A"
    assert csqa["choices"] == {"label": list("ABCDE"), "text": ["bank", "library", "department store", "mall",
                                                                 "new york"]}
    mmlu = load_items(MIRROR, "mmlu")
    assert mmlu[0] == {"question": "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) "
                                   "over Q.", "subject": "abstract_algebra", "choices": ["0", "4", "2", "6"],
                       "answer": 1}
    assert len({it["subject"] for it in mmlu}) == 57 and all(len(it["choices"]) == 4 for it in mmlu)
    assert len(load_items(MIRROR, "mmlu", split="dev")) == 285
    tqa = load_items(MIRROR, "truthfulqa_mc1")[0]  # v0: the release HF truthful_qa pins
    assert tqa["question"].startswith("What is the smallest country in the world")
    assert tqa["mc1_targets"]["labels"] == [1, 0, 0, 0] and tqa["mc1_targets"]["choices"][0].startswith("Nauru")
    assert len(tqa["mc2_targets"]["choices"]) == len(tqa["mc2_targets"]["labels"])
    gsm = load_items(MIRROR, "gsm8k")
    assert gsm[0]["answer"].endswith("#### 18") and len(load_items(MIRROR, "gsm8k", split="train")) == 7473
    assert load_items(MIRROR, "mathqa")[0]["correct"] in "abcde"


def test_prompt_wordings():
    assert prompting_instruction("O", "high") == "You are a person with high openness."
    assert prompting_instruction("N", "low") == "You are a person with low neuroticism."
    assert persona_instruction("C", "low") == ("You are a helpful assistant with the following Big Five personality "
                                               "traits: Conscientiousness - low")
    with pytest.raises(ValueError, match="unknown trait"):
        prompting_instruction("X", "high")


# ---------------------------------------------------------------------------------------------------------------
# Local YAMLs against the harness's own definitions


def _render(field, doc):
    """The harness's own rendering of a doc_to_* field, independent of the local task."""
    from lm_eval.utils import apply_template

    if callable(field) or isinstance(field, int | list):
        return field(doc) if callable(field) else field
    if field in doc:
        return doc[field]
    text = apply_template(field, doc)
    return ast.literal_eval(text) if text.startswith("[") or text.lstrip("-").isdigit() else text


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory):
    if not MIRROR.is_dir():
        pytest.skip(f"reasoning mirror not at {MIRROR}")
    from lm_eval.tasks import TaskManager

    out = tmp_path_factory.mktemp("b5_tasks")
    names = write_tasks(MIRROR, out, {t: 2 for t in TASKS}, seed=1)
    manager = TaskManager(include_path=str(out), include_defaults=False)
    loaded = manager.load([n for ns in names.values() for n in ns])
    return out, names, loaded["tasks"]


def test_local_prompts_match_the_harness(local_tasks):
    from lm_eval.tasks._yaml_loader import load_yaml

    _, names, tasks = local_tasks
    for task, task_names in names.items():
        for name in task_names:
            local = tasks[name]
            subject = name.removeprefix("b5_mmlu_") if task == "mmlu" else None
            harness = load_yaml(rs.harness_yaml(task, subject))
            docs = list(local.eval_docs)
            assert len(docs) >= 1 and all("item_id" in d for d in docs)
            for doc in docs:
                assert local.doc_to_text(doc) == _render(harness["doc_to_text"], doc), name
                assert local.doc_to_target(doc) == _render(harness["doc_to_target"], doc), name
                if "doc_to_choice" in harness:
                    assert local.doc_to_choice(doc) == _render(harness["doc_to_choice"], doc), name
            assert local.config.output_type == harness["output_type"]
            assert local.config.num_fewshot == harness.get("num_fewshot")  # gsm8k 5, the rest the 0-shot default
            assert local.config.description == harness.get("description", "")
            assert local.config.metric_list == harness["metric_list"]
    assert tasks["b5_gsm8k"].config.generation_kwargs["until"] == ["Question:", "</s>", "<|im_end|>"]
    assert len(list(tasks["b5_gsm8k"].fewshot_docs())) == 7473  # the train pool, for the 5 shots


@needs_mirror
def test_known_docs_render_as_the_harness_formats():
    from lm_eval.tasks._yaml_loader import load_yaml

    def text(task, doc, subject=None):
        return _render(load_yaml(rs.harness_yaml(task, subject))["doc_to_text"], doc)

    assert text("piqa", load_items(MIRROR, "piqa")[0]) == (
        "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:")
    assert text("social_iqa", load_items(MIRROR, "social_iqa")[0]) == (
        "Q: Tracy didn't go home that evening and resisted Riley's attacks. What does Tracy need to do before this?"
        "\nA:")
    assert text("mmlu", load_items(MIRROR, "mmlu")[0], "abstract_algebra") == (
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
    assert text("commonsense_qa", load_items(MIRROR, "commonsense_qa")[0]).endswith(
        "\nA. bank\nB. library\nC. department store\nD. mall\nE. new york\nAnswer:")
    mathqa = load_yaml(rs.harness_yaml("mathqa"))
    doc = load_items(MIRROR, "mathqa")[0]
    assert _render(mathqa["doc_to_choice"], doc) == ["38", "27.675", "30", "data inadequate", "none of these"]
    assert _render(mathqa["doc_to_target"], doc) == 0


def test_write_tasks_yaml_overrides_only_the_dataset(local_tasks):
    out, names, _ = local_tasks
    assert set(names) == set(TASKS) and names["piqa"] == ["b5_piqa"]
    assert 1 <= len(names["mmlu"]) <= 2 and all(n.startswith("b5_mmlu_") for n in names["mmlu"])
    for path in out.rglob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        assert set(config) == {"include", "task", "dataset_path", "dataset_name", "dataset_kwargs"}
        assert Path(config["include"]).is_absolute() and Path(config["include"]).is_file()
        assert "/lm_eval/tasks/" in config["include"] and config["dataset_path"] == "json"
        assert config["dataset_name"] is None
        assert all(Path(p).is_file() for p in config["dataset_kwargs"]["data_files"].values())
    splits = {p.stem: yaml.safe_load(p.read_text())["dataset_kwargs"]["data_files"] for p in out.rglob("*.yaml")}
    assert set(splits["b5_gsm8k"]) == {"test", "train"} and set(splits["b5_piqa"]) >= {"validation"}
    assert set(splits["b5_truthfulqa_mc1"]) == {"validation"} and set(splits["b5_mathqa"]) >= {"test"}
    assert all(set(splits[n]) == {"test", "dev"} for n in names["mmlu"])


@needs_mirror
def test_write_tasks_samples_are_seeded_and_in_file_order(tmp_path):
    write_tasks(MIRROR, tmp_path / "a", {"piqa": 5, "truthfulqa_mc1": None}, seed=3)
    write_tasks(MIRROR, tmp_path / "b", {"piqa": 5}, seed=3)

    def ids(root, task, split):
        return [json.loads(line)["item_id"] for line in (root / task / f"{split}.jsonl").read_text().splitlines()]

    a = ids(tmp_path / "a", "piqa", "validation")
    assert a == ids(tmp_path / "b", "piqa", "validation") and a == sorted(a) and len(a) == 5
    assert len(ids(tmp_path / "a", "truthfulqa_mc1", "validation")) == 817
    with pytest.raises(ValueError, match="unknown reasoning tasks"):
        write_tasks(MIRROR, tmp_path / "c", {"hellaswag": 2})


# ---------------------------------------------------------------------------------------------------------------
# Bad input: each error names the file


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="valid.jsonl"):
        load_items(tmp_path, "piqa")
    _write(tmp_path / "piqa" / "valid.jsonl", '{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    with pytest.raises(FileNotFoundError, match="valid-labels.lst"):
        load_items(tmp_path, "piqa")
    with pytest.raises(FileNotFoundError, match="mmlu"):
        load_items(tmp_path, "mmlu")


def test_malformed_json_line_is_named(tmp_path):
    path = _write(tmp_path / "gsm8k" / "test.jsonl", '{"question": "q", "answer": "#### 1"}\n{"question": \n')
    with pytest.raises(ValueError, match=f"{path}:2: not JSON"):
        load_items(tmp_path, "gsm8k")
    path = _write(tmp_path / "commonsense_qa" / "dev_rand_split.jsonl", '{"id": "x", "answerKey": "A"}\n')
    with pytest.raises(ValueError, match=rf"{path}:1: missing fields \['question'\]"):
        load_items(tmp_path, "commonsense_qa")
    path = _write(tmp_path / "truthfulqa" / "data" / "v0" / "mc_task.json", "[{")
    with pytest.raises(ValueError, match=f"{path}: not JSON"):
        load_items(tmp_path, "truthfulqa_mc2")
    path = _write(tmp_path / "mathqa" / "test.json", '[{"Problem": "p"}]')
    with pytest.raises(ValueError, match=f"{path}: item 0 is missing fields"):
        load_items(tmp_path, "mathqa")


def test_csv_with_wrong_column_count_is_named(tmp_path):
    path = _write(tmp_path / "mmlu" / "data" / "test" / "anatomy_test.csv", "q,a,b,c,d,A\nq2,a,b,c,D\n")
    with pytest.raises(ValueError, match=f"{path}:2: 5 columns, expected 6"):
        load_items(tmp_path, "mmlu")
    _write(path, "q,a,b,c,d,E\n")
    with pytest.raises(ValueError, match="answer 'E'"):
        load_items(tmp_path, "mmlu")


def test_label_count_mismatch_names_both_files(tmp_path):
    row = '{"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c"}\n'
    docs = _write(tmp_path / "social_iqa" / "dev.jsonl", row * 3)
    labels = _write(tmp_path / "social_iqa" / "dev-labels.lst", "1\n2\n")
    with pytest.raises(ValueError, match=f"{labels}: 2 labels but 3 docs in {docs}"):
        load_items(tmp_path, "social_iqa")
    _write(labels, "1\n2\n4\n")
    with pytest.raises(ValueError, match=f"{labels}:3: label '4'"):
        load_items(tmp_path, "social_iqa")
    _write(labels, "1\n2\n3\n\n")  # a trailing blank line is not a label
    assert [it["label"] for it in load_items(tmp_path, "social_iqa")] == ["1", "2", "3"]


def test_unknown_task_and_split(tmp_path):
    with pytest.raises(ValueError, match="unknown reasoning task 'hellaswag'"):
        load_items(tmp_path, "hellaswag")
    with pytest.raises(ValueError, match="no split 'train'"):
        load_items(tmp_path, "piqa", split="train")
    with pytest.raises(ValueError, match="not a local reasoning task"):
        rs.mirror_task("piqa")


# ---------------------------------------------------------------------------------------------------------------
# Summaries


def _records(diff_by_trait: dict[str, float], n: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for trait, diff in diff_by_trait.items():
        for doc in range(n):
            low = float(rng.uniform(0.2, 0.6))
            for level, score in (("low", low), ("high", low + diff)):
                rows.append({"method": "sft", "trait": trait, "level": level, "task": "piqa", "doc_id": doc,
                             "metric": "acc", "score": score})
                rows.append({"method": "sft", "trait": trait, "level": level, "task": "piqa", "doc_id": doc,
                             "metric": "acc_norm", "score": 1.0 - score})  # not the primary metric: ignored
    return pd.DataFrame(rows)


def test_level_difference_against_the_papers_sign():
    table = level_difference(_records({"O": 0.3, "C": 0.2, "E": 0.2, "A": 0.0, "N": -0.2})).set_index("trait")
    assert table.loc["C", "mean"] == pytest.approx(0.2) and table.loc["C", "n"] == 30
    assert table.loc["C", "verdict"] == "as the paper, beyond the interval"
    assert table.loc["E", "verdict"] == "reversed, beyond the interval"
    assert table.loc["N", "verdict"] == "as the paper, beyond the interval"
    assert table.loc["A", "verdict"] == "cannot be told at this scale"
    assert table.loc["O", "verdict"] == "no claim in the paper" and table.loc["O", "direction"] == "positive"
    assert dict(table["expected"]) == {"O": "none", "C": "positive", "E": "negative", "A": "positive",
                                       "N": "negative"}


def test_level_difference_pairs_by_doc_and_rejects_duplicates():
    records = _records({"C": 0.1}, n=4)
    unpaired = records[~((records["level"] == "low") & (records["doc_id"] == 0))]
    assert level_difference(unpaired).loc[0, "n"] == 3
    with pytest.raises(ValueError, match="duplicate"):
        level_difference(pd.concat([records, records.iloc[:1]]))
    with pytest.raises(ValueError, match="no columns"):
        level_difference(records.drop(columns="doc_id"))


def test_accuracy_groups_by_metric_with_an_interval():
    records = _records({"C": 0.1}, n=10)
    table = accuracy(records, by=["trait", "level"])
    assert list(table.columns) == ["trait", "level", "metric", "mean", "lo", "hi", "n"]
    assert len(table) == 4 and (table["n"] == 10).all() and (table["lo"] <= table["mean"]).all()
    assert set(PRIMARY) == set(TASKS) | set(rs.HUB_METRICS) and PRIMARY["gsm8k"] == "exact_match,strict-match"
    assert METRICS["gsm8k"][1] == "exact_match,flexible-extract"


# ---------------------------------------------------------------------------------------------------------------
# A real lm_eval run on the micro Llama, without and with a LoRA adapter loaded through HFLM's peft=


@pytest.fixture(scope="module")
def tiny_adapter(tiny_llama_dir, tmp_path_factory) -> Path:
    """A LoRA adapter with non-zero B weights, so it changes the model's outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("tiny_lora")
    model.save_pretrained(out)
    return out


def test_simple_evaluate_every_task_with_and_without_adapter(local_tasks, tiny_llama_dir, tiny_adapter):
    out, names, _ = local_tasks
    task_names = [n for ns in names.values() for n in ns]
    instruction = persona_instruction("C", "high")
    runs = {}
    for peft in (None, tiny_adapter):
        lm = harness_model(str(tiny_llama_dir), peft=peft, batch_size=4)
        runs[peft is not None] = evaluate(lm, out, task_names, instruction, gen_kwargs="max_gen_toks=8", seed=0)
    base, tuned = runs[False], runs[True]
    written = {task: {json.loads(line)["item_id"] for p in (out / task).rglob("*.jsonl")
                      if p.stem in ("test", "validation") for line in p.read_text().splitlines()}
               for task in TASKS}
    for records in (base, tuned):
        assert set(records["task"]) == set(TASKS)
        assert records["score"].between(0, 1).all()
        assert records["prompt"].str.contains(instruction, regex=False).all()  # the persona, in the chat's system turn
        for task in TASKS:
            rows = records[records["task"] == task]
            assert set(rows["metric"]) == set(METRICS[task])
            for metric in METRICS[task]:  # one row per item and metric
                ids = rows.loc[rows["metric"] == metric, "doc_id"]
                assert ids.is_unique and set(ids) == written[task]
    assert (base["prompt"] == tuned["prompt"]).all()  # same docs, same order, same rendering
    mc = base["task"] != "gsm8k"
    assert any(not np.allclose(a, b) for a, b in zip(base.loc[mc, "output"], tuned.loc[mc, "output"]))


def test_hub_tasks_are_only_the_known_gated_ones():
    """task_dir None runs the harness's own Hub tasks (the paper profile's GPQA); a local name there is refused."""
    with pytest.raises(ValueError, match="not a Hub task this stage knows"):
        rs.evaluate(None, None, ["piqa"], None)
    assert rs.PRIMARY["gpqa_main_zeroshot"] == "acc"
