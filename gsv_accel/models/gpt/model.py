"""The GPT-SoVITS text-to-semantic decoder (stage 1, "GPT", official name `Text2SemanticDecoder`).

A decoder-only transformer over the concatenation [phones ; semantic tokens]:

* phones: `ar_text_embedding(phoneme_ids) + bert_proj(bert_feature)`, plus `ar_text_position`;
* semantic tokens (25 Hz HuBERT k-means ids, vocabulary 1024 + EOS): `ar_audio_embedding`, plus
  `ar_audio_position` (both position tables restart at 0);
* attention: phones attend to all (non-padded) phones only; semantic tokens attend to all phones
  and causally to semantic tokens; padded positions are never attended to;
* `ar_predict_layer` maps the outputs at the semantic positions to next-token logits.

Batch layout: the official model treats the first Tx - len columns of a phone row as padding, so
phones (and their BERT features) must be padded on the LEFT; the last phone column is then a real
phone in every row (text positions still count from column 0, padding included). Semantic ids are
padded on the right.

Training is teacher-forced. The semantic input is the ids themselves (no BOS; padded positions
read EOS). The output at the last phone position predicts the first id, the output at semantic
position i predicts id i+1, and the one after the last id predicts EOS, so each row has Ty + 1
targets: the ids followed by EOS, padded with EOS. The loss is the cross-entropy summed over every
target position, padding included, and the reported accuracy is top-3 over the targets that are
not EOS. This is the official `forward_old`; `forward_dpo` adds the official DPO term (`forward`).

Checkpoint layout: `Text2SemanticDecoder.state_dict()` has the official key names without a prefix.
The official Lightning module holds the decoder as its `model` attribute, so official files (the
`.ckpt` exports and Lightning checkpoints) name every key `model.<name>`. Wrap the decoder in
`GPTLightningLayout` to get exactly that layout, or convert state dicts with `add_model_prefix` /
`strip_model_prefix` (`gsv_accel.formats.load_weights_into` and `export_gpt` also do it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import GPTConfig
from .modules import SinePositionalEmbedding, TokenEmbedding, TransformerStack

MODEL_PREFIX = "model."

# The official DPO term: beta of the (reference-free) DPO loss.
DPO_BETA = 0.2


def add_model_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official (Lightning) naming: `model.` before every key that lacks it."""
    return {k if k.startswith(MODEL_PREFIX) else MODEL_PREFIX + k: v for k, v in state_dict.items()}


def strip_model_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bare decoder naming: the leading `model.` removed from every key that has it."""
    return {k[len(MODEL_PREFIX):] if k.startswith(MODEL_PREFIX) else k: v for k, v in state_dict.items()}


def pad_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool, True at right-padded positions (index >= length)."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) >= lengths.unsqueeze(1)


def left_pad_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool, True at left-padded positions (index < max_len - length)."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < (max_len - lengths).unsqueeze(1)


def top_k_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int,
                   ignore_index: int | None = None) -> torch.Tensor:
    """Fraction of targets among the k largest logits, over all positions whose target is kept.

    logits (..., V), targets (...). Equals torchmetrics' `MulticlassAccuracy(top_k=k,
    average="micro", multidim_average="global", ignore_index=ignore_index)`; 0.0 when every target
    is ignored. Returns a detached float32 scalar tensor.
    """
    with torch.no_grad():
        k = min(k, logits.size(-1))
        top = logits.topk(k, dim=-1).indices
        hit = (top == targets.unsqueeze(-1)).any(dim=-1)
        kept = torch.ones_like(hit) if ignore_index is None else targets != ignore_index
        hits = (hit & kept).sum().to(torch.float32)
        total = kept.sum().to(torch.float32)
        return torch.where(total > 0, hits / total.clamp(min=1), torch.zeros_like(hits))


def make_rejected_semantic(semantic_ids: torch.Tensor, generator: torch.Generator | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative examples for the DPO term, as the official trainer makes them.

    For every row, a random span [i, j) (0 <= i <= j < T, with T the padded width of `semantic_ids`)
    is repeated once: row[:i] + row[i:j] + row[i:j] + row[j:]. Like the official code this works on
    the whole padded row, so the rejected length is T + (j - i) and it may contain padding values.
    Rows are right-padded with 0 to the longest. Returns (rejected (B, T'), lengths (B,)).
    """
    rows, lengths = [], []
    width = semantic_ids.size(1)
    for row in semantic_ids:
        i, j = sorted(torch.randint(0, width, (2,), generator=generator).tolist())
        new = torch.cat([row[:i], row[i:j], row[i:j], row[j:]])
        rows.append(new)
        lengths.append(new.numel())
    longest = max(lengths)
    rejected = torch.stack([F.pad(r, (0, longest - r.numel()), value=0) for r in rows])
    return rejected, torch.tensor(lengths, device=semantic_ids.device)


class Generation(NamedTuple):
    """Output of `Text2SemanticDecoder.infer`: per row, the new semantic ids (prompt and EOS not
    included) and whether generation ended at EOS (False: stopped at `max_new_tokens`)."""

    tokens: list[torch.Tensor]
    hit_eos: list[bool]


class Text2SemanticDecoder(nn.Module):
    """Phones (+ BERT features) and a semantic prompt -> semantic ids. See the module docstring."""

    def __init__(self, config: GPTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GPTConfig()
        self.eos = config.EOS
        dim = config.hidden_dim
        self.bert_proj = nn.Linear(config.bert_dim, config.embedding_dim)
        self.ar_text_embedding = TokenEmbedding(config.embedding_dim, config.phoneme_vocab_size,
                                                config.dropout)
        self.ar_text_position = SinePositionalEmbedding(config.embedding_dim, config.position_dropout)
        self.ar_audio_embedding = TokenEmbedding(config.embedding_dim, config.vocab_size, config.dropout)
        self.ar_audio_position = SinePositionalEmbedding(config.embedding_dim, config.position_dropout)
        self.h = TransformerStack(dim, config.head, config.ffn_dim, config.n_layer,
                                  config.transformer_dropout, config.norm_first)
        self.ar_predict_layer = nn.Linear(dim, config.vocab_size, bias=False)

    def set_grad_checkpointing(self, enabled: bool = True) -> Text2SemanticDecoder:
        """Gradient checkpointing (`train.grad_ckpt`) of every transformer layer in training passes:
        the same loss and gradients, one more forward pass of the layers; the state dict does not
        change."""
        self.h.grad_ckpt = enabled
        return self

    # ------------------------------------------------------------------------------------ inputs

    def embed_text(self, phoneme_ids: torch.Tensor, bert_feature: torch.Tensor) -> torch.Tensor:
        """phoneme_ids (B, Tx), bert_feature (B, bert_dim, Tx) -> (B, Tx, dim) with positions."""
        x = self.ar_text_embedding(phoneme_ids)
        x = x + self.bert_proj(bert_feature.transpose(1, 2))
        return self.ar_text_position(x)

    def embed_semantic(self, semantic_ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """semantic_ids (B, Ty) at positions offset.. -> (B, Ty, dim)."""
        return self.ar_audio_position(self.ar_audio_embedding(semantic_ids), offset)

    @staticmethod
    def attention_mask(x_len: int, y_len: int, device: torch.device) -> torch.Tensor:
        """(Tx+Ty, Tx+Ty) bool, True where allowed: phones see phones; semantic tokens see phones and
        earlier (or the same) semantic tokens."""
        total = x_len + y_len
        allowed = torch.ones(total, total, dtype=torch.bool, device=device)
        allowed[:x_len, x_len:] = False
        allowed[x_len:, x_len:] = torch.ones(y_len, y_len, dtype=torch.bool, device=device).tril()
        return allowed

    # ------------------------------------------------------------------------ teacher forcing

    def teacher_forced_logits(self, phoneme_ids: torch.Tensor, phoneme_ids_len: torch.Tensor,
                              semantic_ids: torch.Tensor, semantic_ids_len: torch.Tensor,
                              bert_feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, Ty + 1, vocab_size) of the teacher-forced pass and their targets (B, Ty + 1).

        Inputs: phoneme_ids (B, Tx), left-padded, and phoneme_ids_len (B,); semantic_ids (B, Ty),
        right-padded, and semantic_ids_len (B,); bert_feature (B, bert_dim, Tx), left-padded like
        the phones. Padded values are ignored (semantic padding reads EOS; padded targets are EOS).
        """
        x_len, y_len = phoneme_ids.size(1), semantic_ids.size(1)
        x = self.embed_text(phoneme_ids, bert_feature)
        x_pad = left_pad_mask(phoneme_ids_len, x_len)
        y_pad = pad_mask(semantic_ids_len, y_len)
        # Targets: the ids, then EOS (and EOS over the padding); inputs: all but the last target.
        padded = torch.where(y_pad, torch.full_like(semantic_ids, self.eos), semantic_ids.long())
        targets = torch.cat([padded, torch.full_like(padded[:, :1], self.eos)], dim=1)
        y = self.embed_semantic(targets[:, :-1])

        key_ok = ~torch.cat([x_pad, y_pad], dim=1)  # (B, Tx+Ty)
        mask = self.attention_mask(x_len, y_len, x.device).unsqueeze(0) & key_ok.unsqueeze(1)
        out, _ = self.h(torch.cat([x, y], dim=1), mask.unsqueeze(1))
        # The last phone predicts the first id; semantic position i predicts target i + 1.
        logits = self.ar_predict_layer(out[:, x_len - 1:])
        return logits, targets

    def forward_teacher_forced(self, phoneme_ids: torch.Tensor, phoneme_ids_len: torch.Tensor,
                               semantic_ids: torch.Tensor, semantic_ids_len: torch.Tensor,
                               bert_feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The official training forward (`forward_old`): (summed cross-entropy, top-3 accuracy).

        The loss sums over every target position of the batch, padded ones included (their target
        is EOS); the accuracy (a detached scalar) ignores EOS targets.
        """
        logits, targets = self.teacher_forced_logits(phoneme_ids, phoneme_ids_len, semantic_ids,
                                                     semantic_ids_len, bert_feature)
        loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum")
        acc = top_k_accuracy(logits, targets, self.config.accuracy_top_k, ignore_index=self.eos)
        return loss, acc

    def forward_dpo(self, phoneme_ids: torch.Tensor, phoneme_ids_len: torch.Tensor,
                    semantic_ids: torch.Tensor, semantic_ids_len: torch.Tensor,
                    bert_feature: torch.Tensor, rejected_ids: torch.Tensor | None = None,
                    rejected_ids_len: torch.Tensor | None = None, beta: float = DPO_BETA,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The official DPO training forward (`forward`, used with `train.if_dpo`).

        loss = summed cross-entropy of the real ids + reference-free DPO loss
        mean(-logsigmoid(beta * (logp(chosen) - logp(rejected)))), where logp sums the target
        log-probabilities of a sequence over every position (padding included, as officially).
        Rejected sequences default to `make_rejected_semantic(semantic_ids, generator)`.
        Returns (loss, top-3 accuracy of the real ids).
        """
        if (rejected_ids is None) != (rejected_ids_len is None):
            raise ValueError("pass both rejected_ids and rejected_ids_len, or neither")
        if rejected_ids is None:
            rejected_ids, rejected_ids_len = make_rejected_semantic(semantic_ids, generator)
        logits, targets = self.teacher_forced_logits(phoneme_ids, phoneme_ids_len, semantic_ids,
                                                     semantic_ids_len, bert_feature)
        r_logits, r_targets = self.teacher_forced_logits(phoneme_ids, phoneme_ids_len, rejected_ids,
                                                         rejected_ids_len, bert_feature)
        ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum")
        acc = top_k_accuracy(logits, targets, self.config.accuracy_top_k, ignore_index=self.eos)
        chosen = logits.log_softmax(-1).gather(2, targets.unsqueeze(2)).squeeze(2).sum(-1)
        rejected = r_logits.log_softmax(-1).gather(2, r_targets.unsqueeze(2)).squeeze(2).sum(-1)
        dpo = -F.logsigmoid(beta * (chosen - rejected)).mean()
        return ce + dpo, acc

    def forward(self, phoneme_ids: torch.Tensor, phoneme_ids_len: torch.Tensor,
                semantic_ids: torch.Tensor, semantic_ids_len: torch.Tensor, bert_feature: torch.Tensor,
                dpo: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward_dpo` when `dpo` is set, else `forward_teacher_forced` (so wrappers such as DDP
        call the training forward through `__call__`)."""
        fn = self.forward_dpo if dpo else self.forward_teacher_forced
        return fn(phoneme_ids, phoneme_ids_len, semantic_ids, semantic_ids_len, bert_feature)

    # ------------------------------------------------------------------------------ generation

    def _next_token(self, logits: torch.Tensor, history: torch.Tensor, *, top_k: int | None,
                    top_p: float, temperature: float, repetition_penalty: float,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One sampling step, official order: repetition penalty, top-p, temperature, top-k.

        logits (B, V) float32, history (B, L) previous ids. Returns (samples (B,), argmax is EOS (B,)).
        """
        if repetition_penalty != 1.0 and history.size(1) > 0:
            seen = logits.gather(1, history)
            seen = torch.where(seen < 0, seen * repetition_penalty, seen / repetition_penalty)
            logits = logits.scatter(1, history, seen)
        greedy_eos = logits.argmax(-1) == self.eos
        if top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            drop = sorted_logits.softmax(-1).cumsum(-1) > top_p
            drop[:, 0] = False
            logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        logits = logits / max(temperature, 1e-5)
        if top_k is not None and top_k > 0:
            pivot = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < pivot, float("-inf"))
        samples = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
        return samples, greedy_eos

    @torch.no_grad()
    def infer(self, phoneme_ids: torch.Tensor, bert_feature: torch.Tensor,
              prompt_ids: torch.Tensor | None = None, *, max_new_tokens: int = 1500,
              top_k: int | None = 15, top_p: float = 1.0, temperature: float = 1.0,
              repetition_penalty: float = 1.35, min_new_tokens: int = 11,
              generator: torch.Generator | None = None) -> Generation:
        """Autoregressive generation with a key/value cache (the official `infer_panel`).

        phoneme_ids (B, Tx) and bert_feature (B, bert_dim, Tx): the phones of the reference text
        followed by the target text; prompt_ids (B, Tp): the reference audio's semantic ids (None:
        reference-free). Rows are not padded (validation generates one sample at a time, or rows of
        equal lengths). Sampling as officially: repetition penalty over the prompt and the generated
        ids, then top-p, temperature, top-k (top_k=1: greedy). A row stops when the sampled id or
        the most likely id is EOS; EOS is not allowed before `min_new_tokens` ids (the official
        inference allows it from the 12th id on: at least 11 ids, about 0.4 s).
        At most `max_new_tokens` ids are generated. Runs in eval mode (restored afterwards).
        """
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        was_training = self.training
        self.eval()
        try:
            return self._generate(phoneme_ids, bert_feature, prompt_ids, max_new_tokens, top_k, top_p,
                                  temperature, repetition_penalty, min_new_tokens, generator)
        finally:
            self.train(was_training)

    def _generate(self, phoneme_ids, bert_feature, prompt_ids, max_new_tokens, top_k, top_p,
                  temperature, repetition_penalty, min_new_tokens, generator) -> Generation:
        batch, x_len = phoneme_ids.shape
        device = phoneme_ids.device
        if prompt_ids is None:
            prompt_ids = torch.zeros(batch, 0, dtype=torch.long, device=device)
        prompt_ids = prompt_ids.long()
        prompt_len = prompt_ids.size(1)

        x = self.embed_text(phoneme_ids, bert_feature)
        seq = torch.cat([x, self.embed_semantic(prompt_ids)], dim=1)
        mask = self.attention_mask(x_len, prompt_len, device)
        out, caches = self.h(seq, mask)

        history = prompt_ids
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        lengths = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
        for step in range(max_new_tokens):
            logits = self.ar_predict_layer(out[:, -1]).float()
            if step < min_new_tokens:
                logits[:, self.eos] = float("-inf")
            samples, greedy_eos = self._next_token(
                logits, history, top_k=top_k, top_p=top_p, temperature=temperature,
                repetition_penalty=repetition_penalty, generator=generator)
            stop = (samples == self.eos) | greedy_eos
            newly = stop & ~finished
            lengths = torch.where(newly, torch.full_like(lengths, step), lengths)
            finished |= stop
            if bool(finished.all()):
                break
            history = torch.cat([history, samples.unsqueeze(1)], dim=1)
            if step + 1 == max_new_tokens:
                break
            token = self.embed_semantic(samples.unsqueeze(1), offset=history.size(1) - 1)
            out, caches = self.h(token, None, caches)

        generated = history[:, prompt_len:]
        tokens = [generated[b, : int(lengths[b])] for b in range(batch)]
        return Generation(tokens, [bool(f) for f in finished])


class GPTLightningLayout(nn.Module):
    """Holds a decoder as `.model`, so that `state_dict()` uses the official `model.*` key names.

    Use it to load or save official files strictly (`load_state_dict(file_state_dict)`); training
    itself uses the bare `Text2SemanticDecoder`.
    """

    def __init__(self, model: Text2SemanticDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)
