import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything


@pytest.fixture
def shared_dir():
    """../shared beside the clone (CI has it; a user's clone does not: skip cleanly)."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present beside this clone")
    return SHARED


@pytest.fixture(scope="module")
def tok():
    """The word-level tokenizer of the synthetic data (shared by the test modules)."""
    from kl_utils.protocol.experiment import vocabulary_texts
    from kl_utils.data.tokenizer import build_word_tokenizer
    return build_word_tokenizer(vocabulary_texts())


@pytest.fixture(scope="module")
def people():
    from kl_utils.data import dataset as data
    return data.build_people(TINY_DATA)


TINY_DATA = {"seed": 3, "n_base": 20, "n_new": 20, "splits": {"train": 0.5, "valid": 0.1, "test": 0.4},
             "n_train_templates": 5, "base_paraphrases": 2, "new_paraphrases": 3,
             "permute_paraphrases": True, "name_every_sentence": False}

# Property-based tests: derandomized by default so CI is reproducible (a failure reproduces
# exactly); `HYPOTHESIS_PROFILE=explore pytest tests/test_augment.py` searches new examples.
from hypothesis import settings  # noqa: E402

settings.register_profile("default", derandomize=True, database=None)
settings.register_profile("explore", max_examples=2000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
