import pytest

from nca_np.config import PROFILE_DIR, apply_overrides, config_hash, load_profile
from nca_np.errors import ConfigError


def test_shipped_profiles_hold_the_protocol_values():
    paper = load_profile("paper")
    assert paper["stft"] == {"sample_rate": 44100, "window": "hamming", "window_length": 2049,
                             "n_fft": 4096, "hop": 384}
    assert paper["train"]["runs"] == 10 and paper["train"]["batch_size"] == 64
    assert paper["nca"]["segment_frames"] == 360 and paper["nca"]["iterations"] == 600
    assert paper["nca"]["composition"] == "paper"
    demo = load_profile("demo")
    assert set(demo) == set(paper)
    for section in paper:
        assert set(demo[section]) == set(paper[section]), section


def test_overrides_are_parsed_as_toml_and_type_checked():
    config = load_profile("demo", ["train.runs=2", "train.learning_rate=3e-4", "nca.composition=authors-code",
                                   'train.kinds=["sf"]', "data.excerpt_seconds=5"])
    assert config["train"]["runs"] == 2 and config["train"]["learning_rate"] == 3e-4
    assert config["nca"]["composition"] == "authors-code" and config["train"]["kinds"] == ["sf"]
    assert config["data"]["excerpt_seconds"] == 5.0 and isinstance(config["data"]["excerpt_seconds"], float)
    with pytest.raises(ConfigError, match="train.runs expects int"):
        load_profile("demo", ["train.runs=ten"])
    with pytest.raises(ConfigError, match="unknown setting 'train.epochs'"):
        load_profile("demo", ["train.epochs=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_profile("demo", ["runs=3"])


@pytest.mark.parametrize("override, message", [
    ('train.kinds=["dae", "lstm"]', "train.kinds"),
    ("train.batch_size=0", "train.batch_size = 0 is invalid"),
    ("train.beta2=1.0", "train.beta2"),
    ("nca.composition=authors", "'paper' or 'authors-code'"),
    ("nca.strategies=[]", "nca.strategies"),
    ("data.device_storage=int8", "data.device_storage"),
    ("stft.window_length=8192", "window_length"),
])
def test_invalid_values_fail_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("demo", [override])


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ConfigError, match="known profiles: demo, paper"):
        load_profile("nope")


def test_hash_follows_values_not_the_profile_name():
    demo = load_profile("demo")
    renamed = apply_overrides(demo, ['profile.name="other"'])
    assert config_hash(renamed) == config_hash(demo)
    assert config_hash(apply_overrides(demo, ["nca.iterations=10"])) != config_hash(demo)


@pytest.mark.parametrize("section", ["data", "train", "nca"])
def test_a_typo_in_any_section_of_a_profile_is_an_error(tmp_path, section):
    text = (PROFILE_DIR / "demo.toml").read_text().replace(f"[{section}]\n", f"[{section}]\nlearnig_rate = 1\n")
    path = tmp_path / "typo.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"\[{section}\] unknown key\(s\) learnig_rate"):
        load_profile(str(path))


@pytest.mark.parametrize("override, message", [
    ("nca.seed=-1", "setting nca.seed = -1 is invalid: it must be an integer of at least 0"),
    ("train.seed=-3", "setting train.seed = -3 is invalid"),
    ("data.synth_seed=-1", "setting data.synth_seed = -1 is invalid"),
    ("train.learning_rate=inf", "train.learning_rate = inf is invalid: it must be a finite positive number"),
    ("nca.learning_rate=nan", "nca.learning_rate = nan is invalid"),
    ("train.learning_rate=0", "train.learning_rate = 0.0 is invalid"),
    ("train.eps=0", "train.eps = 0.0 is invalid"),
    ("train.beta2=1.0", "train.beta2 = 1.0 is invalid: it must be at least 0 and below 1"),
    ("nca.halvings=-1", "nca.halvings = -1 is invalid"),
    ("nca.iterations=0", "nca.iterations = 0 is invalid"),
    ("nca.tolerance=1.0", "nca.tolerance = 1.0 is invalid"),
    ("nca.segment_frames=0", "nca.segment_frames = 0 is invalid"),
    ("nca.local_map_stride=0", "nca.local_map_stride = 0 is invalid"),
    ("train.max_epochs=0", "train.max_epochs = 0 is invalid"),
    ("train.batch_size=0", "train.batch_size = 0 is invalid"),
    ("data.excerpt_seconds=inf", "data.excerpt_seconds = inf is invalid"),
])
def test_every_range_is_checked(override, message):
    with pytest.raises(ConfigError) as caught:
        load_profile("demo", [override])
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("override", ["train.beta1=0.0", "nca.seed=0", "nca.halvings=0", "train.seed=12"])
def test_the_edges_of_each_range_are_allowed(override):
    load_profile("demo", [override])


def test_a_boolean_is_not_a_count_in_a_profile(tmp_path):
    text = (PROFILE_DIR / "demo.toml").read_text().replace("runs = 3", "runs = true")
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(ConfigError, match="train.runs = True is invalid"):
        load_profile(str(tmp_path / "p.toml"))
