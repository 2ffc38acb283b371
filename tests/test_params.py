"""lib/params.py: the params files DVC reads are generated from params/base.yaml and one override per profile."""
import textwrap

import pytest
import yaml

from lib import params

BASE = """\
    # the base
    _blocks:
      teacher: &teacher
        backend: openai           # an OpenAI-compatible endpoint
        max_concurrency: 16

    label:
      a:
        <<: *teacher
        model: gpt-4              # the paper's teacher
      b:
        <<: *teacher
        model: gpt-4

    sft:
      args:
        num_train_epochs: 3       # the paper's
        learning_rate: 2.0e-4
      targets: [q_proj, v_proj]
    """


def _files(tmp_path, base=BASE, **profiles):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "base.yaml").write_text(textwrap.dedent(base))
    for name, text in {"paper": "extends: base\n", **profiles}.items():
        (tmp_path / "profiles" / f"{name}.yaml").write_text(textwrap.dedent(text))
    return tmp_path / "base.yaml", tmp_path / "profiles"


def _load(profile, base, profiles):
    return yaml.safe_load(params.render(profile, base, profiles))


def test_the_committed_params_files_are_generated_and_current():
    stale = params.write(check=True)
    assert stale == [], f"{stale} differ from what `python -m lib.params` writes from params/base.yaml + profiles"


def test_anchors_are_written_out_and_their_blocks_dropped(tmp_path):
    base, profiles = _files(tmp_path)
    cfg = _load("paper", base, profiles)
    assert "_blocks" not in cfg
    assert cfg["label"]["a"] == {"backend": "openai", "max_concurrency": 16, "model": "gpt-4"} == cfg["label"]["b"]
    assert "<<" not in params.render("paper", base, profiles) and "&teacher" not in params.render("paper", base, profiles)


def test_overrides_merge_maps_replace_values_and_unset_keys(tmp_path):
    base, profiles = _files(tmp_path, cpu="""\
        extends: base
        label:
          a:
            backend: local        # a 135M model in this process
            model: smollm2
        sft:
          args:
            num_train_epochs: !unset
            max_steps: 40
          targets: [q_proj]
        """, tiny="""\
        extends: cpu
        sft:
          args:
            max_steps: 2          # seconds, not minutes
        """)
    cpu = _load("cpu", base, profiles)
    assert cpu["label"]["a"] == {"backend": "local", "max_concurrency": 16, "model": "smollm2"}
    assert cpu["label"]["b"]["backend"] == "openai"  # an anchor's other users keep the base's value
    assert cpu["sft"] == {"args": {"learning_rate": 2.0e-4, "max_steps": 40}, "targets": ["q_proj"]}
    tiny = _load("tiny", base, profiles)
    assert tiny["sft"]["args"] == {"learning_rate": 2.0e-4, "max_steps": 2} and tiny["label"] == cpu["label"]
    text = params.render("cpu", base, profiles)
    # a changed value carries the override's comment, or the paper's value when the override gives none
    assert "backend: local" in text and "# a 135M model in this process" in text
    assert "model: smollm2" in text and "# paper: gpt-4" in text and "max_steps: 40" in text
    assert "# the paper's teacher" not in text.split("model: smollm2")[1].splitlines()[0]
    assert "learning_rate: 2.0e-4" in text or "learning_rate: 0.0002" in text
    assert "# seconds, not minutes" in params.render("tiny", base, profiles)


@pytest.mark.parametrize("override, message", [
    ("extends: base\nsft:\n  args:\n    warmup: !unset\n", "sft.args.warmup: !unset of a key that is not there"),
    ("extends: paperz\n", "extends: 'paperz'; expected base or one of"),
    ("extends: base\nsft: [unclosed\n", "not valid YAML"),
])
def test_a_bad_override_is_an_error_naming_file_and_key(tmp_path, override, message):
    base, profiles = _files(tmp_path, cpu=override)
    with pytest.raises(params.ParamsSourceError, match=message) as err:
        params.render("cpu", base, profiles)
    assert "cpu.yaml" in str(err.value)


def test_profiles_that_extend_each_other_in_a_circle_are_an_error(tmp_path):
    base, profiles = _files(tmp_path, cpu="extends: tiny\n", tiny="extends: cpu\n")
    with pytest.raises(params.ParamsSourceError, match="in a circle"):
        params.render("cpu", base, profiles)


def test_check_names_a_stale_file_and_write_fixes_it(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    assert set(params.write(check=True, out_dir=out)) == {f"{out}/{p}.yaml" for p in params.PROFILES}
    assert not list(out.iterdir())  # --check writes nothing
    params.write(out_dir=out)
    assert params.write(check=True, out_dir=out) == []
    (out / "cpu.yaml").write_text((out / "cpu.yaml").read_text().replace("max_authors: 400", "max_authors: 40"))
    assert params.write(check=True, out_dir=out) == [f"{out}/cpu.yaml"]
