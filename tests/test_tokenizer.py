from kl_utils.data import dataset as data
from kl_utils.protocol.experiment import vocabulary_texts
from kl_utils.data.tokenizer import build_word_tokenizer, load_tokenizer
from tests.conftest import TINY_DATA


def test_word_tokenizer_covers_data_and_keeps_whitespace_tokens(tmp_path):
    tok = build_word_tokenizer(vocabulary_texts())
    ds = data.build_people(TINY_DATA)
    for row in ds:
        for text in row["bios"] + [row["heldout_bio"]]:
            assert tok.unk_token_id not in tok(text)["input_ids"], text
    pieces = tok.convert_ids_to_tokens(tok("Ann  Arbor\n\n    x ** <born> ```")["input_ids"])
    assert pieces == ["Ann", "  ", "Arbor", "\n", "\n", "    ", "x", "*", "*", "<", "born", ">", "`", "`", "`"]
    # single spaces are not tokens: plain text stays short
    assert len(tok("Ann Arbor")["input_ids"]) == 2


def test_word_tokenizer_is_deterministic_and_round_trips(tmp_path):
    a, b = build_word_tokenizer(vocabulary_texts()), build_word_tokenizer(vocabulary_texts())
    assert a.get_vocab() == b.get_vocab()
    a.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    text = "Question: Which city was Ann Lee Smith born in?\nAnswer: Ann Arbor, MI"
    assert loaded(text)["input_ids"] == a(text)["input_ids"]
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token) == ("[PAD]", "[BOS]", "[EOS]")
    from kl_utils.training.evaluate import normalize_answer
    assert normalize_answer(loaded.decode(loaded(text)["input_ids"])) == normalize_answer(text)
