"""The Optimus text VAE: sentence -> 768-d latent (BERT-base-cased) -> sentence (GPT-2 with latent injection).

Encoding (as the release): the text is lower-cased (although the tokenizer is
cased), tokenised as ``[CLS] ... [SEP]``, padded with id 0 (attention only on
ids > 0), BERT's pooled output (tanh of a dense layer on ``[CLS]``) goes
through ``encoder_latent`` (768 -> 2 * 768, no bias) to ``(mu, log var)``;
the latent is ``z = s * mu`` with ``s = 4.3108`` (deterministic, the posterior
mean, which is also what the release returns).

Decoding: with ``u = z / s``, every GPT-2 layer ``l`` gets one extra
key/value slot ``m_l = (W_mem u)[l H:(l+1) H]`` (the same vector as key and
value, split into heads; positions of the text start at 1, after that slot),
and ``W_emb u`` is added to every token embedding. Generation starts from
``<BOS>`` and stops at ``<EOS>``; at most ``max_length - 2`` tokens are
generated (the release stops at 30 tokens including ``<BOS>``/``<EOS>``).
The release decodes one sample at a time and recomputes the whole prefix at
every step; here the batch is decoded together with a KV cache (identical
results, tested against the recompute-everything path). ``sample=True``
draws from ``softmax(logits / temperature)`` like the release (its top-p of
1.0 filters nothing); the default is greedy (argmax), which is
deterministic.

Tokenizers come from local files only: a BERT-base-cased directory with
``vocab.txt`` and a GPT-2 directory with ``vocab.json`` + ``merges.txt``
(``<PAD>``, ``<BOS>``, ``<EOS>`` are added as ids 50257-50259, as Optimus
does). Vocabulary sizes are checked against the model config, since some
tokenizer classes silently return an empty vocabulary when a file is absent.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["TextVAEConfig", "TEXT_VAE_PRESETS", "text_vae_preset", "TextAutoencoder", "load_bert_tokenizer",
           "load_gpt2_tokenizer", "OPTIMUS_SPECIAL_TOKENS"]

OPTIMUS_SPECIAL_TOKENS = {"pad_token": "<PAD>", "bos_token": "<BOS>", "eos_token": "<EOS>"}


@dataclass
class TextVAEConfig:
    """``bert`` / ``gpt2``: keyword arguments of ``BertConfig`` / ``GPT2Config``; ``latent_dim`` = the text latent D."""

    latent_dim: int = 768
    scale_factor: float = 4.3108
    max_length: int = 30
    bert: dict[str, Any] = field(default_factory=lambda: dict(
        vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu"))
    gpt2: dict[str, Any] = field(default_factory=lambda: dict(
        vocab_size=50260, n_positions=1024, n_embd=768, n_layer=12, n_head=12, layer_norm_epsilon=1e-5,
        activation_function="gelu_new"))


TEXT_VAE_PRESETS = {
    "official": lambda: TextVAEConfig(),
    "tiny": lambda: TextVAEConfig(
        latent_dim=64,
        bert=dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu"),
        gpt2=dict(vocab_size=260, n_positions=64, n_embd=32, n_layer=2, n_head=4, layer_norm_epsilon=1e-5,
                  activation_function="gelu_new")),
    # CoDi-nano: character-level tokenizers (codi.vocab), 32-d latent; scale measured after training.
    "nano": lambda: TextVAEConfig(
        latent_dim=32, scale_factor=1.0, max_length=48,
        bert=dict(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                  max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu"),
        gpt2=dict(vocab_size=260, n_positions=64, n_embd=64, n_layer=2, n_head=4, layer_norm_epsilon=1e-5,
                  activation_function="gelu_new")),
}


def text_vae_preset(name: str) -> TextVAEConfig:
    if name not in TEXT_VAE_PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets are {', '.join(sorted(TEXT_VAE_PRESETS))}")
    return TEXT_VAE_PRESETS[name]()


# ------------------------------------------------------------------ tokenizers
def _require(directory: Path, names: Sequence[str], what: str) -> None:
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{what} tokenizer files missing in {directory}: {', '.join(missing)}. Put the "
            f"{what} tokenizer files ({', '.join(names)}) there (from the Hugging Face model "
            f"'{'bert-base-cased' if what == 'BERT-base-cased' else 'gpt2'}'); they are never downloaded at run time."
        )


def load_bert_tokenizer(directory: str | os.PathLike, *, vocab_size: int | None = 28996):
    """BERT-base-cased WordPiece tokenizer from ``directory/vocab.txt`` (cased: no lower-casing inside)."""
    from transformers import BertTokenizer

    directory = Path(directory)
    _require(directory, ["vocab.txt"], "BERT-base-cased")
    tokenizer = BertTokenizer.from_pretrained(str(directory), do_lower_case=False, local_files_only=True)
    if vocab_size is not None and len(tokenizer) != vocab_size:
        raise ValueError(f"BERT tokenizer from {directory} has {len(tokenizer)} tokens, the model expects {vocab_size}")
    return tokenizer


def load_gpt2_tokenizer(directory: str | os.PathLike, *, vocab_size: int | None = 50260):
    """GPT-2 byte-level BPE from ``directory/{vocab.json, merges.txt}`` plus Optimus' ``<PAD> <BOS> <EOS>``."""
    from transformers import GPT2Tokenizer

    directory = Path(directory)
    _require(directory, ["vocab.json", "merges.txt"], "GPT-2")
    tokenizer = GPT2Tokenizer.from_pretrained(str(directory), local_files_only=True)
    tokenizer.add_special_tokens(dict(OPTIMUS_SPECIAL_TOKENS))
    if vocab_size is not None and len(tokenizer) != vocab_size:
        raise ValueError(f"GPT-2 tokenizer from {directory} has {len(tokenizer)} tokens (with <PAD> <BOS> <EOS>), "
                         f"the model expects {vocab_size}")
    return tokenizer


# ------------------------------------------------------------------ the model
class TextAutoencoder(nn.Module):
    """Optimus: ``encode(list[str]) -> [B, D]`` scaled latents, ``decode([B, D]) -> list[str]``.

    Parameters: ``encoder`` (``BertModel`` with pooler), ``encoder_latent``
    (H_bert -> 2D), ``decoder`` (``GPT2LMHeadModel``, lm_head tied to wte),
    ``latent_memory`` (D -> H * layers) and ``latent_embedding`` (D -> H).
    Tokenizers are attached with :meth:`set_tokenizers` (or the ``tokenizer_dir``
    arguments of the loader).
    """

    def __init__(self, config: TextVAEConfig | None = None):
        super().__init__()
        from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

        self.config = config or TextVAEConfig()
        c = self.config
        self.encoder = BertModel(BertConfig(**c.bert), add_pooling_layer=True)
        self.encoder_latent = nn.Linear(self.encoder.config.hidden_size, 2 * c.latent_dim, bias=False)
        gpt = GPT2Config(**c.gpt2, bos_token_id=None, eos_token_id=None)
        self.decoder = GPT2LMHeadModel(gpt)
        self.latent_memory = nn.Linear(c.latent_dim, gpt.n_embd * gpt.n_layer, bias=False)
        self.latent_embedding = nn.Linear(c.latent_dim, gpt.n_embd, bias=False)
        self.eval().requires_grad_(False)
        self.bert_tokenizer = None
        self.gpt2_tokenizer = None

    @property
    def scale_factor(self) -> float:
        return self.config.scale_factor

    @property
    def device(self) -> torch.device:
        return self.encoder_latent.weight.device

    def set_tokenizers(self, bert_tokenizer, gpt2_tokenizer) -> "TextAutoencoder":
        """Attach tokenizers after checking their vocabularies fit the embedding tables."""
        if len(bert_tokenizer) != self.encoder.config.vocab_size:
            raise ValueError(f"BERT tokenizer has {len(bert_tokenizer)} tokens, the encoder {self.encoder.config.vocab_size}")
        if len(gpt2_tokenizer) != self.decoder.config.vocab_size:
            raise ValueError(f"GPT-2 tokenizer has {len(gpt2_tokenizer)} tokens, the decoder {self.decoder.config.vocab_size}")
        for name, token in OPTIMUS_SPECIAL_TOKENS.items():
            if getattr(gpt2_tokenizer, name) != token:
                raise ValueError(f"GPT-2 tokenizer {name} is {getattr(gpt2_tokenizer, name)!r}, Optimus uses {token!r}")
        self.bert_tokenizer, self.gpt2_tokenizer = bert_tokenizer, gpt2_tokenizer
        return self

    def _tokenizers(self):
        if self.bert_tokenizer is None or self.gpt2_tokenizer is None:
            raise RuntimeError("TextAutoencoder has no tokenizers: call set_tokenizers(...) or load it with tokenizer "
                               "directories (BERT-base-cased vocab.txt; GPT-2 vocab.json + merges.txt)")
        return self.bert_tokenizer, self.gpt2_tokenizer

    # ---------------------------------------------------------------- encode
    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``list[str]`` (B) -> ``s * mu`` ``[B, D]`` (float32)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
            raise ValueError("texts must be a non-empty list of strings")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("every text must be a str")
        bert, _ = self._tokenizers()
        tokens = bert([t.lower() for t in texts], padding=True, truncation=True,
                      max_length=self.encoder.config.max_position_embeddings, return_tensors="pt")
        ids = tokens["input_ids"].to(self.device)  # (B, N): [CLS] ... [SEP] [PAD]=0 ...
        pooled = self.encoder(input_ids=ids, attention_mask=(ids > 0).long()).pooler_output  # (B, H)
        mu, _logvar = self.encoder_latent(pooled).chunk(2, dim=-1)
        return (mu * self.scale_factor).float()

    # ---------------------------------------------------------------- decode
    def _memory(self, u: torch.Tensor):
        """Unscaled latent ``u [B, D]`` -> a ``DynamicCache`` holding one key/value slot per layer."""
        from transformers import DynamicCache

        cfg = self.decoder.config
        heads, head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        memory = self.latent_memory(u).view(u.shape[0], cfg.n_layer, 1, heads, head_dim)  # (B, L, 1, h, d)
        cache = DynamicCache()
        for layer in range(cfg.n_layer):
            slot = memory[:, layer].transpose(1, 2).contiguous()  # (B, h, 1, d): key = value = m_l
            cache.update(slot, slot, layer)
        return cache

    def _embed(self, ids: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Token embeddings plus the latent embedding ``W_emb u`` (positions are added by GPT-2 itself)."""
        return self.decoder.transformer.wte(ids) + self.latent_embedding(u)[:, None]

    def logits(self, u: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[B, N, V]`` for a whole prefix ``ids [B, N]`` without reusing a cache (the release's way)."""
        out = self.decoder(inputs_embeds=self._embed(ids, u), past_key_values=self._memory(u), use_cache=False)
        return out.logits

    @torch.no_grad()
    def generate_ids(self, latents: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None,
                     temperature: float = 1.0, max_length: int | None = None) -> torch.Tensor:
        """Scaled latents ``[B, D]`` -> token ids ``[B, N]`` after ``<BOS>`` (``<EOS>``-filled once finished)."""
        _, gpt2 = self._tokenizers()
        if latents.ndim != 2 or latents.shape[1] != self.config.latent_dim:
            raise ValueError(f"text latents must be [B, {self.config.latent_dim}], got {tuple(latents.shape)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        max_length = max_length or self.config.max_length
        if max_length < 3:
            raise ValueError(f"max_length counts <BOS> and <EOS> and must be >= 3, got {max_length}")
        param = self.latent_memory.weight
        u = latents.to(param.device, param.dtype) / self.scale_factor
        batch = u.shape[0]
        bos, eos = gpt2.bos_token_id, gpt2.eos_token_id
        cache = self._memory(u)
        step_ids = torch.full((batch, 1), bos, dtype=torch.long, device=u.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=u.device)
        out = []
        for _ in range(max_length - 2):
            result = self.decoder(inputs_embeds=self._embed(step_ids, u), past_key_values=cache, use_cache=True)
            cache = result.past_key_values
            logits = result.logits[:, -1].float()  # (B, V)
            if sample:
                probs = torch.softmax(logits / temperature, dim=-1)
                if generator is not None:
                    probs = probs.to(generator.device)
                nxt = torch.multinomial(probs, 1, generator=generator).to(u.device)[:, 0]
            else:
                nxt = logits.argmax(dim=-1)
            nxt = torch.where(finished, torch.full_like(nxt, eos), nxt)
            out.append(nxt)
            finished |= nxt == eos
            if bool(finished.all()):
                break
            step_ids = nxt[:, None]
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None,
               temperature: float = 1.0, max_length: int | None = None) -> list[str]:
        """Scaled latents ``[B, D]`` -> B strings (tokens up to the first ``<EOS>``, special tokens dropped)."""
        ids = self.generate_ids(latents, sample=sample, generator=generator, temperature=temperature,
                                max_length=max_length)
        _, gpt2 = self._tokenizers()
        texts = []
        for row in ids.tolist():
            if gpt2.eos_token_id in row:
                row = row[:row.index(gpt2.eos_token_id)]
            texts.append(" ".join(gpt2.decode(row, skip_special_tokens=True).split()))
        return texts
