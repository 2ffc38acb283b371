"""Params validation: every profile loads; each kind of bad params stops with the file and key named."""
import re
from pathlib import Path

import pytest
import yaml

from lib import config
from lib.config import ParamsError


@pytest.mark.parametrize("profile", config.PROFILES)
def test_every_profile_is_valid(profile):
    cfg = config.load(profile)
    assert cfg["_profile"] == profile
    assert cfg["synthesize"]["jic"]["n_turns"] == 9  # the paper's dialogue length in every profile


def test_profiles_share_one_key_set():
    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict) and k not in ("lora", "args"):
                out |= keys(v, prefix + k + ".")
        return out

    sets = {p: keys(yaml.safe_load(config.profile_path(p).read_text())) for p in config.PROFILES}
    assert sets["tiny"] == sets["cpu"] == sets["paper"]


def test_active_profile_is_cpu_by_default():
    assert config.active_profile() == "cpu"


@pytest.fixture
def cpu_params(tmp_path):
    """A writable copy of the cpu profile and a function to save an edited version of it."""
    data = yaml.safe_load(config.profile_path("cpu").read_text())

    def save(d):
        path = tmp_path / "edited.yaml"
        path.write_text(yaml.safe_dump(d))
        return path

    return data, save


def test_unknown_key_is_named(cpu_params):
    data, save = cpu_params
    data["cluster"]["jic"]["k_maxx"] = 10
    with pytest.raises(ParamsError, match=r"edited.yaml: unknown key cluster\.jic\.k_maxx"):
        config.load_file(save(data))


def test_missing_key_is_named(cpu_params):
    data, save = cpu_params
    del data["filter"]["jic"]["alpha"]
    with pytest.raises(ParamsError, match=r"missing key filter\.jic\.alpha"):
        config.load_file(save(data))


@pytest.mark.parametrize("keys,value,expected", [
    (("cluster", "jic", "k_min"), "two", "int"),
    (("cluster", "jic", "k_min"), 2.5, "int"),
    (("cluster", "jic", "k_min"), True, "int"),      # a bool is not a number here
    (("filter", "jic", "beta"), None, "float or int"),
    (("sft", "jic", "lora"), [1, 2], "a mapping"),
])
def test_wrong_type_is_named(cpu_params, keys, value, expected):
    data, save = cpu_params
    node = data
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    with pytest.raises(ParamsError, match=re.escape(".".join(keys)) + ".*expected " + expected):
        config.load_file(save(data))


def test_bad_choice_is_named(cpu_params):
    data, save = cpu_params
    data["synthesize"]["jic"]["mode"] = "parallel"
    with pytest.raises(ParamsError, match=r"synthesize\.jic\.mode = 'parallel'; expected one of"):
        config.load_file(save(data))


def test_missing_input_file_is_named(cpu_params):
    data, save = cpu_params
    data["scrape"]["jic"]["essays_path"] = "essays/nope.csv"
    with pytest.raises(ParamsError, match=r"scrape\.jic\.essays_path names a missing file: .*nope\.csv"):
        config.load_file(save(data))
    data["scrape"]["jic"]["essays_path"] = "essays/essays.csv"
    data["synthesize"]["jic"]["template"] = "params/prompts/missing.txt"
    with pytest.raises(ParamsError, match=r"synthesize\.jic\.template names a missing file"):
        config.load_file(save(data))


def test_malformed_yaml_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: {jic: [unclosed\n")
    with pytest.raises(ParamsError, match=r"bad.yaml: not valid YAML"):
        config.load_file(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match=r"expected a mapping at the top level"):
        config.load_file(bad)


def test_unknown_profile_is_refused():
    with pytest.raises(ParamsError, match=r"profile 'gpu' is not one of tiny, cpu, paper"):
        config.profile_path("gpu")


def test_check_kwargs_names_unknown_keys():
    def target(learning_rate=1.0, seed=0):
        return learning_rate, seed

    config.check_kwargs({"learning_rate": 1e-4}, target, "params/cpu.yaml: sft.jic.args")
    with pytest.raises(ParamsError, match=r"sft\.jic\.args: unknown key\(s\) \['learnin_rate'\]"):
        config.check_kwargs({"learnin_rate": 1e-4}, target, "params/cpu.yaml: sft.jic.args")


@pytest.mark.parametrize("profile", config.PROFILES)
def test_profile_lora_and_trainer_keys_are_library_names(profile):
    # alignment-handbook style: params keys are the library's argument names, so LoraConfig(**p) works
    from peft import LoraConfig
    from trl import DPOConfig, SFTConfig

    cfg = config.load(profile)
    sections = [(("sft", "jic"), SFTConfig), (("sft", "big5chat"), SFTConfig), (("dexperts", "expert"), SFTConfig),
                (("dpo", "big5chat"), DPOConfig), (("sft", "dpg"), SFTConfig)]
    for keys, trainer_config in sections:
        node = cfg[keys[0]][keys[1]]
        where = f"{profile}: {'.'.join(keys)}"
        config.check_kwargs(node["lora"], LoraConfig, f"{where}.lora")
        config.check_kwargs(node["args"], trainer_config, f"{where}.args")


def test_fingerprint_is_stable_and_sensitive():
    assert config.fingerprint({"a": 1, "b": 2}) == config.fingerprint({"b": 2, "a": 1})
    assert config.fingerprint({"a": 1}) != config.fingerprint({"a": 2})


def test_slug():
    assert config.slug("gguf:smollm2") == "gguf-smollm2"
    assert config.slug("meta-llama/Meta-Llama-3-8B-Instruct") == "meta-llama-Meta-Llama-3-8B-Instruct"


@pytest.mark.parametrize("spec,value,ok", [
    ("int", 3, True), ("int", None, False), ("int or null", None, True), ("num or null", 2.5, True),
    ("a|b", "b", True), ("a|b", "c", False), ("a|b or null", None, True), ("bool", 1, False), ("dict", {}, True),
])
def test_schema_leaves(spec, value, ok):
    leaf = config.Leaf.parse(spec, "k")
    if ok:
        config._validate(value, leaf, Path("x.yaml"), ("k",))
    else:
        with pytest.raises(ParamsError, match=r"x\.yaml: k = "):
            config._validate(value, leaf, Path("x.yaml"), ("k",))


@pytest.mark.parametrize("spec", ["integer", "", 3, None])
def test_schema_rejects_unknown_leaf_types(spec):
    with pytest.raises(ParamsError, match=r"schema\.yaml: a\.b: "):
        config.Leaf.parse(spec, "a.b")


def test_schema_file_is_not_a_stage_dependency():
    """params/schema.yaml only accepts or refuses a params file; adding a paper's section must re-run nothing."""
    assert "schema.yaml" not in (config.ROOT / "dvc.yaml").read_text()


def test_model_and_teacher_leaves_decide_the_model_list_and_the_teacher_stages():
    """The schema marks model keys and teacher keys; the teacher stages and 00_models' list are read off it."""
    assert config.teacher_sections() == (("label", "pchat"), ("label", "dpg"), ("label", "persllm"),
                                         ("synthesize", "jic"), ("synthesize", "pchat"))
    assert config.Leaf.parse("model or null", "k").role == "model"
    assert config.Leaf.parse("teacher", "k").role == "teacher" and config.Leaf.parse("str", "k").role is None
    cfg = config.load("cpu")
    cfg["label"]["pchat"]["backend"] = "openai"  # an endpoint teacher is a name only: nothing to prepare
    cfg["sft"]["pchat"]["model"] = "facebook/bart-base"  # a model key set to a spec is prepared
    specs = config.model_specs(cfg)
    assert "label.pchat.model" not in specs and specs["sft.pchat.model"] == "facebook/bart-base"
    assert specs["synthesize.jic.model"] == "gguf:smollm2"  # a local teacher is
    cfg["eval"]["jic"]["bertscore_model"] = "google-bert/bert-base-uncased"
    cfg["eval"]["jic"]["bertscore"] = False  # the switch off: its encoder is not needed
    assert "eval.jic.bertscore_model" not in config.model_specs(cfg)
    assert config.get(cfg, "label.persllm.encoder") == "package:minilm"

