"""Hyperparameter resolution: defaults per dataset, variant presets, typed overrides, --set parsing."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from core.hparams import HParam, HParamError, parse_assignments, resolve, variant_param

DECLARED = (
    HParam("alpha", 0.8, "OGM-GE README", per_dataset={"vggsound": 0.1}),
    HParam("steps", 3, "an int"),
    HParam("flag", True, "a bool"),
    HParam("rule", "difference", "a choice", choices=("difference", "ratio")),
    HParam("milestones", [69, 139], "a list"),
)
VARIANTS = {"official_compat": {"rule": "ratio", "flag": False}}


def test_defaults_per_dataset():
    assert resolve("m", DECLARED, "cremad").alpha == 0.8
    assert resolve("m", DECLARED, "vggsound").alpha == 0.1


def test_variant_preset_then_overrides():
    declared = DECLARED + (variant_param(VARIANTS, "doc"),)
    hp = resolve("m", declared, None, {"variant": "official_compat"}, variants=VARIANTS)
    assert (hp.rule, hp.flag) == ("ratio", False)
    hp = resolve("m", declared, None, {"variant": "official_compat", "flag": True}, variants=VARIANTS)
    assert hp.flag is True, "an explicit override beats the variant preset"
    assert resolve("m", declared, None, {}, variants=VARIANTS).rule == "difference"


@pytest.mark.parametrize("key,value", [("steps", 2.5), ("steps", "3"), ("flag", 1), ("alpha", "x"),
                                       ("rule", "sum"), ("milestones", 5),
                                       ("alpha", True)])
def test_ill_typed_values_fail_naming_the_key(key, value):
    with pytest.raises(HParamError, match=f"m.{key}"):
        resolve("m", DECLARED, None, {key: value})


def test_zero_and_false_are_honoured():
    hp = resolve("m", DECLARED, None, {"alpha": 0, "flag": False, "steps": 0})
    assert (hp.alpha, hp.flag, hp.steps) == (0.0, False, 0)


def test_a_knob_at_its_absent_value_stays_out_of_the_record():
    # Runs recorded before a knob existed lack it; one run at that value must record the same, or adding the knob
    # renames every earlier run's folder and sets it apart from new runs.
    declared = (*DECLARED, HParam("subset", 0, "added later", absent_value=0),
                HParam("gate", False, "added later, a bool", absent_value=False))
    assert resolve("ns", declared, None).as_dict() == resolve("ns", DECLARED, None).as_dict()
    hp = resolve("ns", declared, None, {"subset": 4})
    assert hp.as_dict()["subset"] == 4 and hp.subset == 4 and "gate" not in hp.as_dict()
    assert resolve("ns", declared, None, {"gate": True}).as_dict()["gate"] is True
    assert resolve("ns", declared, None).subset == 0, "still served as a value"
    # 0 and False are equal in Python but not the same value of a knob: only the declared one is left out.
    assert resolve("ns", (HParam("n", None, "any type", absent_value=False),), None, {"n": 0}).as_dict() == {"n": 0}


def test_absent_value_is_a_value_of_its_knob():
    # Runs hold typed values (1.0 for a float knob, a list for a list knob): an absent_value of another type would
    # never equal them, so every earlier run would be recorded anew and renamed. It is typed like a set value, or
    # refused where it cannot be one.
    assert resolve("ns", (HParam("scale", 1.0, "float", absent_value=1),), None).as_dict() == {}
    assert resolve("ns", (HParam("steps", [], "list", element=int, absent_value=()),), None).as_dict() == {}
    with pytest.raises(HParamError, match="knob 'n': its absent_value expects an integer"):
        HParam("n", 1, "int", absent_value=False)
    # Outside its choices or bounds, every earlier run failed to resume, naming a value no one had set.
    with pytest.raises(HParamError, match=r"knob 'mode': its absent_value='olld' is not one of \['old', 'new'\]"):
        HParam("mode", "new", "str", choices=("old", "new"), absent_value="olld")
    with pytest.raises(HParamError, match="knob 'p': its absent_value must be <= 1.0, got 2.0"):
        HParam("p", 0.5, "float", high=1.0, absent_value=2.0)


def test_declared_defaults_pass_the_checks_a_value_set_by_hand_passes():
    # A per-dataset default outside the bounds, of another type or choice trained every run on that dataset
    # unchecked (the same value given with --set was refused); an infinite one passed any lower bound.
    with pytest.raises(HParamError, match="knob 'alpha': its default for dataset 'cremad' must be >= 0.0 and <= 1.0, "
                                          "got 7.0"):
        HParam("alpha", 0.5, "float", per_dataset={"cremad": 7.0}, low=0.0, high=1.0)
    with pytest.raises(HParamError, match="knob 'alpha': its default for dataset 'cremad' expects a number"):
        HParam("alpha", 0.5, "float", per_dataset={"cremad": "0.8"})
    with pytest.raises(HParamError, match=r"knob 'kind': its default for dataset 'cremad'='c' is not one of"):
        HParam("kind", "a", "str", choices=("a", "b"), per_dataset={"cremad": "c"})
    with pytest.raises(HParamError, match="knob 'p': its default must be >= 0 and <= 1, got 2.0"):
        HParam("p", 2.0, "float", low=0, high=1)
    with pytest.raises(HParamError, match="knob 'x': its default must be a finite number, got inf"):
        HParam("x", math.inf, "float")
    assert HParam("alpha", 0.5, "float", per_dataset={"cremad": 0.8}, low=0.0, high=1.0).default_for("cremad") == 0.8


def test_an_unbounded_number_set_by_hand_is_still_finite():
    # ogm_ge.alpha=.inf was taken: the coefficient froze the visual modality and the run finished as OGM-GE.
    knobs = (HParam("alpha", 0.1, "float, no bounds"), HParam("steps", [1], "list", element=float))
    for value in (math.inf, -math.inf):
        with pytest.raises(HParamError, match=f"ns.alpha must be a finite number, got {value!r}"):
            resolve("ns", knobs, None, {"alpha": value})
    with pytest.raises(HParamError, match=r"ns.steps\[1\] must be a finite number, got inf"):
        resolve("ns", knobs, None, {"steps": [1.0, math.inf]})


def test_parse_assignments():
    out = parse_assignments(["ogm_ge.alpha=0.8", "train.lr=1e-3", "train.lr_milestones=[69, 139]",
                             "aug.variant=official_compat", "aug.register_new_learners=false"])
    assert out == {"ogm_ge": {"alpha": 0.8}, "train": {"lr": 0.001, "lr_milestones": [69, 139]},
                   "aug": {"variant": "official_compat", "register_new_learners": False}}
    for bad in ("alpha=0.8", "ogm_ge.alpha", "a.b.c=1"):
        with pytest.raises(HParamError):
            parse_assignments([bad])
    # Given twice with two values, the last was taken without a word; the same value twice is one setting.
    with pytest.raises(HParamError, match=r"--set train.epochs given twice, 3 and 4; give it once"):
        parse_assignments(["train.epochs=3", "train.epochs=4"])
    assert parse_assignments(["train.lr=0.1", "train.lr=1e-1"]) == {"train": {"lr": 0.1}}
    # yaml's own message named only "<unicode string>", not the --set item.
    with pytest.raises(HParamError, match=r"^bad --set 'train.lr_milestones=\[1,': the value is not valid YAML "
                                          r"\(.* at column 4\)$"):
        parse_assignments(["train.lr_milestones=[1,"])
    assert parse_assignments(["aug.modality_order="]) == {"aug": {"modality_order": ""}}


def test_a_variant_chosen_on_a_later_layer_wins_over_the_earlier_layers_keys_its_preset_sets():
    from benchmarks.config import build_config, load_config_file, merge_overrides

    _, recipe = load_config_file(Path(__file__).resolve().parents[1] / "benchmarks/configs/aug/sarcasm.yaml")
    assert recipe["aug"]["aca_interval_epochs"] == 1, "the recipe sets the paper's t_N"
    chosen = merge_overrides(recipe, parse_assignments(["aug.variant=official_compat"]))
    assert build_config("aug", "sarcasm", chosen).method_hp.aca_interval_epochs == 0, "the variant's preset applies"
    both = merge_overrides(recipe, parse_assignments(["aug.variant=official_compat", "aug.aca_interval_epochs=3"]))
    assert build_config("aug", "sarcasm", both).method_hp.aca_interval_epochs == 3, "a key on the variant's layer stays"
    after = merge_overrides({"aug": {"variant": "official_compat"}}, {"aug": {"aca_interval_epochs": 2}})
    assert after["aug"] == {"variant": "official_compat", "aca_interval_epochs": 2}, "a later key stays"
    again = merge_overrides(both, {"aug": {"variant": "official_compat"}})  # e.g. --extend-epochs repeating --set
    assert again["aug"]["aca_interval_epochs"] == 3, "naming the chosen variant again is no change of variant"


def test_list_elements_take_the_defaults_element_type_so_equal_settings_hash_alike():
    from benchmarks.config import build_config

    ints = build_config("remix", "synthetic", {"remix": {"remix_weights": [1, 1]}})
    floats = build_config("remix", "synthetic", {"remix": {"remix_weights": [1.0, 1.0]}})
    assert ints.method_hp.remix_weights == [1.0, 1.0] and all(type(w) is float for w in ints.method_hp.remix_weights)
    assert ints.run_name() == floats.run_name()
    with pytest.raises(HParamError, match=r"m.milestones\[1\] expects an integer, got 'x'"):
        resolve("m", DECLARED, None, {"milestones": [3, "x"]})
    assert parse_assignments(["remix.warmup_weights=[5e-1, 1e-1]"]) == {"remix": {"warmup_weights": [0.5, 0.1]}}


@pytest.mark.parametrize("key", ["alpha", "steps"])
def test_nan_is_refused_naming_the_key(key):
    with pytest.raises(HParamError, match=f"m.{key} expects"):
        resolve("m", DECLARED, None, {key: float("nan")})


def test_a_list_knob_with_an_empty_default_types_its_elements_as_declared():
    from benchmarks.config import build_config

    ints = build_config("aug", "cremad", {"aug": {"fusion_weights": [1, 1]}})
    assert ints.run_name() == build_config("aug", "cremad", {"aug": {"fusion_weights": [1.0, 1.0]}}).run_name()
    with pytest.raises(HParamError, match=r"aug.fusion_weights\[0\] expects a number, got 'x'"):
        build_config("aug", "cremad", {"aug": {"fusion_weights": ["x", "y"]}})
    with pytest.raises(HParamError, match=r"train.lr_milestones\[0\] expects an integer, got 2.5"):
        build_config("joint", "synthetic", {"train": {"lr_milestones": [2.5]}})


def test_bounds_apply_to_each_element_of_a_list_and_an_open_low_excludes_the_bound():
    declared = (HParam("lr", 0.1, "a rate", low=0, open_low=True), HParam("steps", [2], "epochs", low=0, high=9),
                HParam("pair", [0.5, 1.0], "ordered", check=_ordered_pair))
    assert resolve("m", declared, None, {"lr": 1e-9, "steps": [0, 9], "pair": [0.2, 0.2]}).as_dict() == {
        "lr": 1e-9, "steps": [0, 9], "pair": [0.2, 0.2]}
    with pytest.raises(HParamError, match=r"m.lr must be > 0, got 0.0"):
        resolve("m", declared, None, {"lr": 0})
    with pytest.raises(HParamError, match=r"m.steps\[1\] must be >= 0 and <= 9, got 10"):
        resolve("m", declared, None, {"steps": [3, 10]})
    with pytest.raises(HParamError, match=r"m.pair=\[0.9, 0.1\] is not an ordered pair"):
        resolve("m", declared, None, {"pair": [0.9, 0.1]})


def _ordered_pair(key, value):
    if len(value) != 2 or value[0] > value[1]:
        raise HParamError(f"{key}={value} is not an ordered pair")


def test_null_is_a_value_only_of_a_knob_whose_default_is_none():
    declared = (HParam("anything", None, "any type"), HParam("rate", 0.1, "bounded", low=0),
                HParam("steps", [2], "bounded list", low=0), HParam("flag", True, "a bool"))
    assert resolve("m", declared, None, {"anything": None}).as_dict() == {
        "anything": None, "rate": 0.1, "steps": [2], "flag": True}
    with pytest.raises(HParamError, match=r"m.flag expects true/false, got None"):
        resolve("m", declared, None, {"flag": None})
    with pytest.raises(HParamError, match=r"m.rate expects a number, got None"):
        resolve("m", declared, None, {"rate": None})
    with pytest.raises(HParamError, match=r"m.steps\[0\] expects an integer, got None"):
        resolve("m", declared, None, {"steps": [None]})


def test_a_whole_float_for_an_int_knob_is_stored_as_an_int_so_it_hashes_alike():
    hp = resolve("m", DECLARED, None, {"steps": 3.0})
    assert hp.steps == 3 and type(hp.steps) is int
    assert hp.as_dict() == resolve("m", DECLARED, None, {"steps": 3}).as_dict()
    assert repr(hp.as_dict()["steps"]) == "3"


def test_a_list_knob_with_a_mixed_type_default_takes_any_elements():
    declared = (HParam("mix", [1, "a"], "mixed elements"),)
    assert resolve("m", declared, None, {"mix": ["x", 2.5]}).mix == ["x", 2.5]


def test_an_unknown_variant_is_refused_naming_the_choices():
    declared = DECLARED + (variant_param(VARIANTS, "doc"),)
    with pytest.raises(HParamError, match=r"m.variant='oficial_compat' is not one of \['paper', 'official_compat'\]"):
        resolve("m", declared, None, {"variant": "oficial_compat"}, variants=VARIANTS)


def test_a_variant_preset_setting_an_undeclared_key_is_an_error():
    declared = DECLARED + (variant_param({"bad": {"nope": 1}}, "doc"),)
    with pytest.raises(HParamError, match="variant 'bad' of 'm' sets undeclared key 'nope'"):
        resolve("m", declared, None, {"variant": "bad"}, variants={"bad": {"nope": 1}})


@pytest.mark.parametrize("key,value,error", [("steps", 2.5, "m.steps expects"),
                                             ("rule", "sum", "m.rule='sum' is not one"),
                                             ("flag", 1, "m.flag expects true/false")])
def test_a_variant_preset_value_is_typed_and_checked_like_an_override(key, value, error):
    declared = DECLARED + (variant_param({"bad": {key: value}}, "doc"),)
    with pytest.raises(HParamError, match=f"variant 'bad' of 'm': {error}"):
        resolve("m", declared, None, {"variant": "bad"}, variants={"bad": {key: value}})


def test_a_variant_preset_int_for_a_float_knob_resolves_to_the_float():
    declared = DECLARED + (variant_param({"v": {"alpha": 1}}, "doc"),)
    alpha = resolve("m", declared, None, {"variant": "v"}, variants={"v": {"alpha": 1}}).alpha
    assert isinstance(alpha, float) and alpha == 1.0


def test_set_reads_a_signed_leading_dot_decimal_as_a_number():
    # YAML leaves "-.5" a string; a number knob would then refuse what Python reads as -0.5.
    assert parse_assignments(["m.alpha=-.5", "m.milestones=[-.5]"]) == {"m": {"alpha": -0.5, "milestones": [-0.5]}}


def test_a_methods_per_dataset_default_reaches_the_run_config():
    from benchmarks.config import build_config

    assert build_config("agm", "cremad").method_hp.alpha == 1.5, "AGM's CREMA-D alpha"
    assert build_config("agm", "synthetic").method_hp.alpha == 1.0


@pytest.mark.parametrize("method, dataset, knob, value", [
    ("dgl", "kinetics_sounds", "alpha", 3.0),         # ICCV2025-GDL ks_dgl.sh: alpha 3 scored best
    ("dgl", "vggsound", "alpha", 2.0),                # ICCV2025-GDL vggsound.sh --alpha 2.0
    ("dimml", "ucf101", "duc_temperature", 10.0),     # DI-MML README, UCF stage 1 --temperature 10
    ("dimml", "ucf101", "fusion_temperature", 1.0),   # DI-MML README, UCF stage 2 --temperature 1
])
def test_released_per_dataset_values_reach_the_run_config(method, dataset, knob, value):
    from benchmarks.config import build_config

    assert build_config(method, dataset).method_hp[knob] == value


def test_a_string_or_mapping_knob_refuses_a_value_of_another_type():
    declared = (HParam("name", "x", "a free string"), HParam("table", {}, "a mapping"))
    assert resolve("m", declared, None, {"name": "y", "table": {"a": 1}}).as_dict() == {"name": "y", "table": {"a": 1}}
    with pytest.raises(HParamError, match=r"m.name expects str, got 3"):
        resolve("m", declared, None, {"name": 3})
    with pytest.raises(HParamError, match=r"m.table expects a mapping, got \[\['a', 1\]\]"):
        resolve("m", declared, None, {"table": [["a", 1]]})


def test_set_strips_the_key_and_keeps_an_empty_value_a_string():
    assert parse_assignments([" m.alpha =0.8", "m.rule="]) == {"m": {"alpha": 0.8, "rule": ""}}


def test_the_shared_recipe_per_dataset_reaches_train():
    from benchmarks.config import build_config

    cremad, synthetic = build_config("joint", "cremad").train, build_config("joint", "synthetic").train
    assert (cremad.epochs, cremad.lr_milestones) == (200, [69, 139])
    assert (synthetic.epochs, synthetic.lr_milestones) == (10, [])


def test_the_kinetics_sounds_recipe_and_an_override_over_a_dataset_default():
    from benchmarks.config import build_config

    ks = build_config("joint", "kinetics_sounds").train
    assert (ks.epochs, ks.lr_milestones, ks.batch_size, ks.lr) == (100, [69], 64, 1e-2)
    given = build_config("joint", "kinetics_sounds", {"train": {"epochs": 7, "lr_milestones": [3]}}).train
    assert (given.epochs, given.lr_milestones) == (7, [3])


def test_a_config_section_that_is_not_a_mapping_is_an_error():
    from benchmarks.config import merge_overrides

    with pytest.raises(HParamError, match="config section 'train' must be a mapping"):
        merge_overrides({"train": 5})


def test_the_config_digest_is_eight_hex_digits_of_the_sorted_json():
    import hashlib

    from benchmarks.config import config_digest

    expected = hashlib.sha256(b'{"a": [1, 2], "b": 1}').hexdigest()[:8]
    assert config_digest({"b": 1, "a": [1, 2]}) == expected and len(expected) == 8


def test_a_variant_chosen_by_default_or_per_dataset_applies_its_preset():
    declared = DECLARED + (HParam("variant", "paper", "doc", per_dataset={"ks": "official_compat"},
                                  choices=("paper", "official_compat")),)
    assert resolve("m", declared, "ks", variants=VARIANTS).rule == "ratio", "the dataset's variant preset applies"
    assert resolve("m", declared, "cremad", variants=VARIANTS).rule == "difference"


def test_a_record_read_back_gives_no_value_for_an_always_recorded_knob_it_lacks():
    from benchmarks.config import build_config, config_overrides

    record = build_config("joint", "synthetic").as_dict()
    del record["train"]["amp"]
    method, dataset, sections = config_overrides(record)
    assert (method, dataset) == ("joint", "synthetic") and "amp" not in sections["train"]
    assert build_config(method, dataset, sections).train.amp is False


# Method knobs whose meaning rules values out, each with a value just past its bound (the error check_range gives)
# and, where the bound is inclusive, the bound itself, which a run may set. Unbounded, greedy.window=0 never ended
# curation, greedy.ratio=0 divided by zero building the model, relearning.reinit_epoch=0 and
# lfm.alpha_lr_halve_every=0 took an epoch modulo 0, and a zero temperature or scale divided logits by zero.
METHOD_BOUNDS = [
    ("greedy", "epsilon", -0.001, "greedy.epsilon must be >= 0.0, got -0.001", 0.0),
    ("greedy", "window", 0, "greedy.window must be >= 1, got 0", 1),
    ("greedy", "starting_epoch", -1, "greedy.starting_epoch must be >= 0, got -1", 0),
    ("greedy", "ratio", 0, "greedy.ratio must be >= 1, got 0", 1),
    ("agm", "mod_start", -1, "agm.mod_start must be >= 0, got -1", 0),
    ("agm", "clip_trigger", -0.5, "agm.clip_trigger must be >= 0.0, got -0.5", 0.0),
    ("agm", "clip_norm", 0.0, "agm.clip_norm must be > 0.0, got 0.0", None),
    ("amco", "sigma", -0.1, "amco.sigma must be >= 0.0 and <= 1.0, got -0.1", 0.0),
    ("amco", "sigma", 1.1, "amco.sigma must be >= 0.0 and <= 1.0, got 1.1", 1.0),
    ("amco", "eps", 0.0, "amco.eps must be > 0.0, got 0.0", None),
    ("dgl", "clip_norm", -1.0, "dgl.clip_norm must be >= 0.0, got -1.0", 0.0),
    ("dimml", "duc_start", -1, "dimml.duc_start must be >= 0, got -1", 0),
    ("dimml", "duc_temperature", 0.0, "dimml.duc_temperature must be > 0.0, got 0.0", None),
    ("dimml", "stage2_epochs", -1, "dimml.stage2_epochs must be >= 0, got -1", 0),
    ("dimml", "fusion_temperature", 0.0, "dimml.fusion_temperature must be > 0.0, got 0.0", None),
    ("inforeg", "window", 0, "inforeg.window must be >= 1, got 0", 1),
    ("iprm", "alpha", -0.1, "iprm.alpha must be >= 0.0 and <= 1.0, got -0.1", 0.0),
    ("iprm", "alpha", 1.5, "iprm.alpha must be >= 0.0 and <= 1.0, got 1.5", 1.0),
    ("mmcosine", "scale", 0.0, "mmcosine.scale must be > 0.0, got 0.0", None),
    ("mnl", "weight", -0.1, "mnl.weight must be >= 0.0, got -0.1", 0.0),
    ("remix", "warmup", -1, "remix.warmup must be >= 0, got -1", 0),
    ("relearning", "reinit_epoch", 0, "relearning.reinit_epoch must be >= 1, got 0", 1),
    ("relearning", "reinit_num", -1, "relearning.reinit_num must be >= 0, got -1", 0),
    ("relearning", "kmeans_n_init", 0, "relearning.kmeans_n_init must be >= 1, got 0", 1),
    ("lfm", "alpha_lr_halve_every", 0, "lfm.alpha_lr_halve_every must be >= 1, got 0", 1),
    ("mslr", "memory", 0, "mslr.memory must be >= 1, got 0", 1),
    ("bss", "t_grow", 0, "bss.t_grow must be >= 1, got 0", 1),
    ("bss", "lambda_0", 1.5, "bss.lambda_0 must be >= 0 and <= 1, got 1.5", 1.0),
    ("aug", "tau", -0.01, "aug.tau must be >= 0, got -0.01", 0.0),
    ("aug", "aca_interval_epochs", -1, "aug.aca_interval_epochs must be >= 0, got -1", 0),
    ("mses", "patience", -1, "mses.patience must be >= 0, got -1", 0),
    ("mses", "smoothing", 1.2, "mses.smoothing must be >= 0 and <= 1, got 1.2", 1.0),
    ("smv", "warmup", -1, "smv.warmup must be >= 0, got -1", 0),
    ("opm", "warmup_epochs", -1, "opm.warmup_epochs must be >= 0, got -1", 0),
    ("midas", "warmup_epochs", -1, "midas.warmup_epochs must be >= 0, got -1", 0),
    ("umt", "teacher_epochs", -1, "umt.teacher_epochs must be >= 0, got -1", 0),
    ("lfm", "fit_epochs", 0, "lfm.fit_epochs must be >= 1, got 0", 1),
    ("lfm", "hvp_samples", 0, "lfm.hvp_samples must be >= 1, got 0", 1),
    ("arl", "temperature", 0.0, "arl.temperature must be > 0, got 0.0", None),
    ("arl", "entropy_floor", 0.0, "arl.entropy_floor must be > 0, got 0.0", None),
    ("arl", "clip_norm", -1.0, "arl.clip_norm must be >= 0, got -1.0", 0.0),
    ("reconboost", "m_lr", 0.0, "reconboost.m_lr must be > 0, got 0.0", None),
    ("reconboost", "e_lr", 0.0, "reconboost.e_lr must be > 0, got 0.0", None),
    ("reconboost", "weight_decay", -1e-4, "reconboost.weight_decay must be >= 0, got -0.0001", 0.0),
    ("reconboost", "pretrain_epochs", -1, "reconboost.pretrain_epochs must be >= 0, got -1", 0),
    ("umt", "scale", -1.0, "umt.scale must be >= 0, got -1.0", 0.0),
]


@pytest.mark.parametrize("knob, bad, message", [
    ("width", 0, "model.width must be >= 1, got 0"),
    ("blocks", [2, 0, 2, 2], "model.blocks[1] must be >= 1, got 0"),
    ("mlp_hidden", 0, "model.mlp_hidden must be >= 1, got 0"),
    ("feature_dim", 0, "model.feature_dim must be >= 1, got 0"),
])
def test_model_sizes_are_at_least_one(knob, bad, message):
    from benchmarks.config import build_config

    with pytest.raises(HParamError, match=f"^{re.escape(message)}$"):
        build_config("joint", "cremad", {"model": {knob: bad}})
    assert build_config("joint", "cremad", {"model": {knob: [1] * 4 if knob == "blocks" else 1}}).model[knob]


@pytest.mark.parametrize("method, knob, bad, message, boundary", METHOD_BOUNDS,
                         ids=[f"{m}.{k}={v}" for m, k, v, _, _ in METHOD_BOUNDS])
def test_method_knob_bounds(method, knob, bad, message, boundary):
    from benchmarks.config import build_config

    with pytest.raises(HParamError, match=f"^{re.escape(message)}$"):
        build_config(method, "cremad", {method: {knob: bad}})
    if boundary is not None:
        assert build_config(method, "cremad", {method: {knob: boundary}}).method_hp[knob] == boundary


def test_train_lr_and_gamma_exclude_zero_and_the_seed_stops_at_numpys_largest():
    from benchmarks.config import build_config

    for knob in ("lr", "lr_gamma"):
        with pytest.raises(HParamError, match=f"^train.{knob} must be > 0, got 0.0$"):
            build_config("joint", "synthetic", {"train": {knob: 0}})
    assert build_config("joint", "synthetic", {"train": {"seed": 2**32 - 1}}).train.seed == 2**32 - 1
    with pytest.raises(HParamError, match=r"^train.seed must be >= 0 and <= 4294967295, got 4294967296$"):
        build_config("joint", "synthetic", {"train": {"seed": 2**32}})


def test_an_unknown_or_another_methods_namespace_is_refused_naming_it():
    from benchmarks.config import build_config

    with pytest.raises(HParamError, match=r"unknown hyperparameter namespace\(s\) \['trian'\]"):
        build_config("joint", "synthetic", {"trian": {"lr": 0.1}})
    with pytest.raises(HParamError, match=r"unknown hyperparameter namespace\(s\) \['ogm_ge'\]"):
        build_config("joint", "synthetic", {"ogm_ge": {"alpha": 0.1}})


def test_an_infinite_value_is_refused_even_inside_a_one_sided_bound():
    # inf passes "> 0" and then trains on NaN; YAML and --set read ".inf" as a float.
    from benchmarks.config import build_config

    (lr,) = parse_assignments(["train.lr=.inf"])["train"].values()
    with pytest.raises(HParamError, match=r"^train.lr must be a finite number > 0, got inf$"):
        build_config("joint", "synthetic", {"train": {"lr": lr}})
    with pytest.raises(HParamError, match=r"^train.weight_decay must be a finite number >= 0, got inf$"):
        build_config("joint", "synthetic", {"train": {"weight_decay": float("inf")}})


def test_a_misspelt_key_is_refused_naming_it_and_the_valid_keys():
    from benchmarks.config import build_config

    with pytest.raises(HParamError, match=re.escape("unknown hyperparameter(s) ['m.alpah']; valid keys for 'm': "
                                                    "['alpha', 'flag', 'milestones', 'rule', 'steps']")):
        resolve("m", DECLARED, None, {"alpah": 0.1, "steps": 2})
    with pytest.raises(HParamError, match=re.escape("unknown hyperparameter(s) ['train.learning_rate']")):
        build_config("joint", "synthetic", {"train": {"learning_rate": 0.1}})
