"""Config files: base chains, --set overrides, type checks and the exact error messages."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from ichdet.engine.config import TrainConfig, dump_config, load_config
from ichdet.engine.run import resolve_paths, resolve_steps_per_epoch
from ichdet.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
# what a folder's configs may change in the config each names as `base:` (configs/README.md)
RUN_CHANGES = {
    "cv": {"data.crop_head", "data.slice_labels", "data.size", "model.weights", "model.init_from", "optim.epochs",
           "optim.steps_per_epoch", "optim.select_metric", "optim.patience",
           # a few hundred images: calibrated scores, faster dense layers, random AlexNet convolutions at full rate
           "calibrate", "model.lr_mult.fc", "model.lr_mult.head", "model.lr_mult.features"},
    "demo": {"optim.epochs", "optim.steps_per_epoch", "model.init_from", "data.size"},  # seg_unet: 256 px
}


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads(path):
    cfg = load_config(path, ["data.manifest=m.csv"])
    assert cfg.experiment and cfg.stage in ("slice", "scan", "svm", "aggregate", "seg")


def test_paper_recipes_are_the_defaults():
    s = load_config(CONFIGS / "3d_slice_cnn.yaml")
    assert (s.optim.name, s.optim.lr, s.optim.batch_size, s.optim.val_samples) == ("adam", 1e-4, 25, 500)
    assert (s.data.size, s.data.max_filter, s.data.z_max_filter, s.model.kwargs["dropout"]) == (256, 2, False, 0.5)
    f = load_config(CONFIGS / "3d_lstm2_frozen.yaml")
    assert (f.optim.name, f.optim.lr, f.optim.batch_size, f.optim.select_metric) == ("rmsprop", 1e-3, 1, "auc")
    assert f.model.freeze_encoder and f.data.z_max_filter and f.model.kwargs == {"lstm_layers": 2, "hidden": 512}
    e = load_config(CONFIGS / "3d_lstm2_e2e.yaml")  # base: the frozen stage, lr 1e-4, encoder released
    assert (e.optim.name, e.optim.lr, e.model.freeze_encoder, e.model.init_from) == ("rmsprop", 1e-4, False, "3d_lstm2_frozen")
    assert load_config(CONFIGS / "3d_lstm1_frozen.yaml").model.kwargs["lstm_layers"] == 1


def test_set_overrides_parse_yaml_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stage: slice\noptim: {lr: 0.1}\n")
    cfg = load_config(p, ["optim.lr=1e-3", "data.windows=[brain, subdural]", "optim.epochs=3",
                          "model.kwargs.base_width=8", "data.augment=false"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.epochs == 3 and cfg.data.windows == ["brain", "subdural"]
    assert cfg.model.kwargs == {"base_width": 8} and cfg.data.augment is False


def test_base_chain_and_loop(tmp_path):
    (tmp_path / "a.yaml").write_text("optim: {lr: 0.5, epochs: 7}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\noptim: {lr: 0.25}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.optim.lr, cfg.optim.epochs) == (0.25, 7)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    with pytest.raises(InputError, match="include each other in a loop"):
        load_config(tmp_path / "b.yaml")


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key(s) optim.lrr; expected some of"),
    ("optim.epochs=many", "config optim.epochs must be a int, got 'many'"),
    ("data.augment=3", "config data.augment must be true or false, got 3"),
    ("stage=fly", "config stage must be one of slice, scan, svm, aggregate, seg, got 'fly'"),
    ("optim.batch_size=0", "config optim.batch_size must be >= 1, got 0"),
    ("data.windows=[nope]", "nope"),
    ("nonsense", "--set expects key=value"),
    ("precision=fp8", "config precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
    ("autocast_bf16=maybe", "config autocast_bf16 must be true or false, got 'maybe' (or use precision: "
                            "auto|fp32|bf16|fp16)"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(InputError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_precision_defaults_to_auto_and_reads_the_old_switch(tmp_path):
    assert load_config(None).precision == "auto"
    assert load_config(None, ["autocast_bf16=false"]).precision == "fp32"
    assert load_config(None, ["autocast_bf16=true"]).precision == "bf16"
    assert load_config(None, ["autocast_bf16=true", "precision=fp32"]).precision == "fp32"  # the new key wins
    old = tmp_path / "old.yaml"  # a config saved by an older ichdet (as inside older bundles)
    old.write_text("stage: slice\nautocast_bf16: true\nchannels_last: true\n")
    cfg = load_config(old)
    assert cfg.precision == "bf16" and "autocast_bf16" not in cfg.to_dict()


def test_svm_stage_needs_a_trained_model():
    with pytest.raises(InputError, match="stage 'svm' needs model.init_from"):
        load_config(None, ["stage=svm"])


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "3d_lstm1_e2e.yaml", ["data.manifest=x.csv"])
    (tmp_path / "r.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "r.yaml") == cfg
    assert isinstance(cfg, TrainConfig)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("optim: [1,\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_shipped_experiments_load_by_name(tmp_path):
    by_name = load_config("quick/3d_slice_cnn", ["data.manifest=x.csv"])
    by_path = load_config(CONFIGS / "quick" / "3d_slice_cnn.yaml", ["data.manifest=x.csv"])
    assert by_name == by_path and by_name.data.size == 128
    for name in ("cv/2d_cnn", "cv/quick/2d_alexnet_svm", "demo/3d_lstm2_e2e", "demo/quick/2d_cnn_subtypes"):
        assert load_config(name) == load_config(CONFIGS / f"{name}.yaml"), name
    (tmp_path / "mine.yaml").write_text("base: " + str(CONFIGS / "cv" / "2d_cnn.yaml") + "\n")
    assert load_config(tmp_path / "mine") == load_config("cv/2d_cnn")  # a file named without .yaml
    with pytest.raises(InputError, match=r"^no config file '3d_nothing', nor a shipped experiment of that name \(known: "
                                         r"2d_alexnet, 2d_alexnet_subtypes, 2d_alexnet_svm, 2d_cnn, 2d_cnn_subtypes, "):
        load_config("3d_nothing")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "kwargs" else {prefix + k: v})
    return out


@pytest.mark.parametrize("path", sorted((CONFIGS / "cv").rglob("*.yaml")) + sorted((CONFIGS / "demo").rglob("*.yaml")),
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_cv_and_demo_configs_change_only_their_runs_terms(path):
    """configs/cv and configs/demo name their base and change only how it is run, not the model."""
    base = yaml.safe_load(path.read_text())["base"]
    ours, theirs = _flat(load_config(path).to_dict()), _flat(load_config(path.parent / base).to_dict())
    changed = {k for k in ours if k not in theirs or ours[k] != theirs[k]}
    assert changed <= RUN_CHANGES[path.relative_to(CONFIGS).parts[0]], changed
    # the experiment's own name (bundles and reports say 2d_cnn), or the one a demo start config trains
    from ichdet.demo import QUICK

    assert ours["experiment"] == {config: name for name, config in QUICK.starts}.get(path.stem, path.stem)


def test_cv_configs_are_the_recipe_ichdet_cv_trains():
    for quick in ("", "quick/"):
        cnn, alex, svm = (load_config(f"cv/{quick}{n}") for n in ("2d_cnn", "2d_alexnet", "2d_alexnet_svm"))
        for cfg in (cnn, alex):
            assert (cfg.data.crop_head, cfg.data.slice_labels, cfg.model.weights) == (True, "", "")
            assert (cfg.optim.steps_per_epoch, cfg.optim.select_metric, cfg.optim.patience) == (0, "auc", 0)
        assert (svm.model.init_from, svm.data.slice_labels) == ("alexnet", "")  # the fold's AlexNet run
    assert [load_config(f"cv/{n}").optim.epochs for n in ("2d_cnn", "2d_alexnet", "2d_cnn_subtypes")] == [20, 8, 10]
    assert load_config("cv/2d_cnn").data.size == load_config("cv/2d_alexnet").data.size == 224  # AlexNet's images
    assert load_config("cv/quick/2d_cnn").optim.epochs == load_config("quick/2d_cnn").optim.epochs
    # every fine-tuned or from-scratch 2D network is Platt-scaled on its validation images, so the folds pool
    assert all(load_config(f"cv/{q}{n}").calibrate for q in ("", "quick/") for n in ("2d_cnn", "2d_alexnet", "2d_efficientnet"))
    assert not any(load_config(n).calibrate for n in ("2d_cnn", "3d_slice_cnn", "3d_slice_effnet", "cv/2d_cnn_subtypes"))


def test_steps_per_epoch_zero_is_one_pass_over_the_training_split(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("scan_id,patient_id,path,label,split\n" + "".join(
        f"s{i},p{i},s{i}.png,{i % 2},{'train' if i < 51 else 'val'}\n" for i in range(60)))
    cfg = load_config(None, [f"data.manifest={m}", "optim.steps_per_epoch=0", "optim.batch_size=25"])
    assert resolve_steps_per_epoch(resolve_paths(cfg)).optim.steps_per_epoch == 3  # ceil(51 / 25)
    one = load_config(None, [f"data.manifest={m}", "optim.steps_per_epoch=0", "optim.batch_size=64"])
    assert resolve_steps_per_epoch(one).optim.steps_per_epoch == 1
    assert resolve_steps_per_epoch(load_config(None, [f"data.manifest={m}"])).optim.steps_per_epoch == 100  # as given
    with pytest.raises(InputError, match=r"optim.steps_per_epoch must be >= 1, or 0 for one pass over the training "
                                         r"split, got -1"):
        load_config(None, ["optim.steps_per_epoch=-1"])


def test_package_data_ships_every_config():
    """pyproject's package-data globs take every file under src/ichdet/configs into the wheel."""
    package = ROOT / "src" / "ichdet"
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ichdet"]
    shipped = {p for g in globs for p in package.glob(g)}
    assert {p for p in (package / "configs").rglob("*") if p.is_file()} <= shipped
