"""`FastDPOTrainer`: TRL's DPOTrainer interface, vlmpref's shared-prefix engine underneath.

Switch an existing TRL script by changing one import:

    # from trl import DPOTrainer
    from vlmpref.train.fast import FastDPOTrainer as DPOTrainer

    trainer = DPOTrainer(model=model, args=DPOConfig(...), train_dataset=ds, processing_class=processor,
                         peft_config=LoraConfig(...))
    trainer.train()

Same mathematics as TRL (same tokens, same losses, same metrics names), less work per pair:
- one packed sequence per pair, [image+prompt | chosen | rejected]: the vision tower and the prompt run
  once per pair instead of four times;
- reference log-probs computed once before training (adapter disabled) and stored with the run;
- image features cached when the vision tower and connector are frozen (language-model-only adapters);
- DoRA weight norms computed once per optimizer step; LoRA dropout with p=0 skipped;
- `pairs_per_forward` pairs packed into one forward without padding, with gradient accumulation
  regrouped so the effective batch is unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import logging
import os
import time
from collections import defaultdict

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import use_adapter

from vlmpref.data.normalize import trl_example
from vlmpref.plan import autopack
from vlmpref.train.fast import dora, forward
from vlmpref.train.fast.caches import ImageFeatureCache, ReferenceLogps, images_key, model_fingerprint
from vlmpref.train.fast.forward import batch_image_features, packed_logps
from vlmpref.train.fast.losses import LOSS_TYPES, LossInputs, combined_loss
from vlmpref.train.fast.packing import PackedBatch, PairTokens, pack, prompt_too_long, tokenize_pair

logger = logging.getLogger(__name__)
PAIR_ID = "__vlmpref_pair_id__"


class PackCollator:
    """Rows -> one PackedBatch, with reference log-probs attached when known."""

    def __init__(self, processor, reference: ReferenceLogps | None = None, cached_keys: set | None = None,
                 layout: str = "rows", max_length: int | None = None, image_token_id: int | None = None):
        self.processor = processor
        self.layout = layout
        self.max_length = max_length
        self.image_token_id = image_token_id
        self.pad_id = processor.tokenizer.pad_token_id or 0
        self.reference = reference
        self.cached_keys = cached_keys if cached_keys is not None else set()
        self.tokens: dict[int, PairTokens] = {}  # pairs whose image features are cached need no processor

    def tokenize(self, row: dict) -> PairTokens:
        """One row's tokens (and image tensors unless its image features are cached)."""
        pair_id = row[PAIR_ID]
        if pair_id in self.tokens:
            return self.tokens[pair_id]
        images = row.get("images") or ([row["image"]] if row.get("image") is not None else [])
        key = images_key(images) if images else None
        cached = key is not None and key in self.cached_keys
        pair = tokenize_pair(row, self.processor, pair_id=pair_id, image_key=key, with_pixels=not cached,
                             max_length=self.max_length)
        if cached:
            self.tokens[pair_id] = pair
        return pair

    def pack(self, pairs: list[PairTokens]) -> dict:
        batch = pack(pairs, layout=self.layout, pad_id=self.pad_id, image_token_id=self.image_token_id)
        if self.reference is not None and len(self.reference):
            batch.ref_chosen_logps, batch.ref_rejected_logps = self.reference.lookup(batch.pair_ids)
        return {"packed": batch}

    def __call__(self, rows: list[dict]) -> dict:
        return self.pack([self.tokenize(row) for row in rows])


class _Tokenized(torch.utils.data.Dataset):
    """A dataset's rows as PairTokens, so that a DataLoader's workers prepare pairs one by one."""

    def __init__(self, dataset, collator: PackCollator):
        self.dataset, self.collator = dataset, collator

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> PairTokens:
        return self.collator.tokenize(self.dataset[index])


def with_pair_ids(dataset, offset: int = 0):
    """Number the pairs (train from 0, eval after train) so stored reference log-probs can be found."""
    if dataset is None or PAIR_ID in dataset.column_names:
        return dataset
    if not isinstance(dataset, Dataset):
        raise ValueError("The fast engine needs a map-style datasets.Dataset (it indexes pairs).")
    return dataset.add_column(PAIR_ID, list(range(offset, offset + len(dataset))))


def vision_is_frozen(model) -> bool:
    """True when no trainable parameter feeds the image features (adapters on the language model only)."""
    decoder = model.get_decoder()
    language = {id(p) for p in decoder.parameters()}
    language |= {id(p) for p in model.get_output_embeddings().parameters()}
    return not any(p.requires_grad and id(p) not in language for p in model.parameters())


def _regroup(args: DPOConfig, pairs_per_forward: int) -> None:
    """Micro-batches of `pairs_per_forward` pairs, as many of them per optimizer step as keep the effective batch.
    The DPO losses average over pairs, so the optimizer step is unchanged."""
    total = args.per_device_train_batch_size * args.gradient_accumulation_steps
    args.per_device_train_batch_size = pairs_per_forward
    args.gradient_accumulation_steps = total // pairs_per_forward


def one_time_workers(rows: int, batch_size: int) -> int:
    """Processes that prepare pairs (image processing, tokens) for the one-time pass: the CPU work per pair
    (~0.1 s for a 13-tile image) would otherwise leave the GPU waiting; none for a pass of one or two batches."""
    if rows <= 2 * batch_size:
        return 0
    return min(8, max(1, (os.cpu_count() or 2) - 1))


class FastDPOTrainer(DPOTrainer):
    """Drop-in replacement for `trl.DPOTrainer` on vision-language preference data (see module doc).

    Extra keyword arguments: `pairs_per_forward` (pairs packed per forward; `"auto"`, the default, packs as many
    as divide the effective batch and fit the GPU's free memory, see `autopack`), `memory_budget_gib` (plan
    `"auto"` within this many GiB instead of all free memory), `image_cache` (`"auto"`: on when the vision tower
    is frozen; True / False to force), `cache_memory_gib` (image features kept in memory before spilling to the
    run folder), `attention` (`"auto"`, `"dense"` for a boolean 4-D mask, or `"flex"` for a FlexAttention block
    mask). The `args` passed in are copied, never changed.
    """

    def __init__(self, model, ref_model=None, args: DPOConfig | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, compute_metrics=None,
                 callbacks=None, optimizers=(None, None), quantization_config=None, peft_config=None, *,
                 pairs_per_forward: int | str = "auto", memory_budget_gib: float | None = None,
                 image_cache: bool | str = "auto", cache_memory_gib: float = 2.0, attention: str = "auto"):
        args = copy.copy(args) if args is not None else DPOConfig("fast-dpo")  # the caller's config stays as given
        unsupported = set(args.loss_type if isinstance(args.loss_type, list) else [args.loss_type]) - LOSS_TYPES
        if unsupported or args.f_divergence_type != "reverse_kl" or args.use_weighting or args.ld_alpha is not None:
            raise ValueError(f"The fast engine supports loss types {sorted(LOSS_TYPES)} with reverse-KL, no WPO "
                             f"weighting and no ld_alpha; got {sorted(unsupported) or args.loss_type}. Use trl.DPOTrainer.")
        total = args.per_device_train_batch_size * args.gradient_accumulation_steps
        # TRL's micro-batch as configured: the SFT term is a token mean within it, whatever the packing (losses.py)
        self.sft_group = args.per_device_train_batch_size
        if pairs_per_forward != "auto":
            if not isinstance(pairs_per_forward, int) or pairs_per_forward <= 0 or total % pairs_per_forward:
                raise ValueError(f"pairs_per_forward={pairs_per_forward!r} must be 'auto' or a number that divides "
                                 f"the effective batch {total}.")
            _regroup(args, pairs_per_forward)
        args.precompute_ref_log_probs = False  # TRL refuses it for vision data; this engine always precomputes
        # transformers' filter reads every micro-batch's loss back from the GPU to replace a NaN in the logged
        # average; vlmpref's guard stops on a NaN instead, once per optimizer step (train/guards.py)
        args.logging_nan_inf_filter = False
        train_dataset = with_pair_ids(train_dataset)
        eval_dataset = with_pair_ids(eval_dataset, offset=len(train_dataset) if train_dataset is not None else 0)
        super().__init__(model=model, ref_model=ref_model, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         compute_metrics=compute_metrics, callbacks=callbacks, optimizers=optimizers,
                         quantization_config=quantization_config, peft_config=peft_config)
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not forward.supports_model(unwrapped):
            raise ValueError(f"FastDPOTrainer supports {', '.join(forward.FAST_MODEL_TYPES)} models, not "
                             f"{unwrapped.config.model_type}; use trl.DPOTrainer for this model.")
        dora.skip_zero_dropout(unwrapped)
        self._dora_layers = dora.enable_norm_cache(unwrapped)
        text_attention = unwrapped.config.get_text_config()._attn_implementation
        if text_attention == "flash_attention_2":
            # FlashAttention-2 takes a 2-D padding mask only: the shared-prefix mask would be read as padding
            if self.is_local_process_zero():
                print("note: the fast engine needs a 4-D attention mask, which flash_attention_2 does not take; "
                      "switching this model to sdpa.")
            unwrapped.set_attn_implementation("sdpa")
            text_attention = "sdpa"
        if attention == "auto":
            attention = "flex" if text_attention == "flex_attention" else "dense"
        self.attention = attention
        self.layout = "packed" if attention == "flex" else "rows"  # dense masks cost L^2: keep rows short
        self.vision_frozen = vision_is_frozen(unwrapped)
        use_cache = self.vision_frozen if image_cache == "auto" else bool(image_cache)
        if use_cache and not self.vision_frozen:
            raise ValueError("image_cache=True needs a frozen vision tower and connector (adapters on the language "
                             "model only); use image_cache=False or a language-only adapter.")
        self._check_max_length()

        # ---- packing: how many pairs each forward pass takes
        self.packing = None
        if pairs_per_forward == "auto":
            self.packing = autopack.plan(unwrapped, self.processing_class, self.train_dataset, self.args, use_cache,
                                         memory_budget_gib)
            if self.accelerator.num_processes > 1:
                # every process must take the same micro-batches (the data are sharded by batch): the smallest
                # packing that any process's GPU fits
                chosen = torch.tensor([-self.packing.pairs_per_forward], device=self.accelerator.device)
                agreed = -int(self.accelerator.reduce(chosen, reduction="max").item())  # accelerate has no "min"
                if agreed != self.packing.pairs_per_forward:
                    self.packing = dataclasses.replace(
                        self.packing, pairs_per_forward=agreed,
                        reason=f"{agreed} pair(s) per forward (the most every process's GPU fits; this one: "
                               f"{self.packing.reason})")
            _regroup(self.args, self.packing.pairs_per_forward)
            # transformers reads the micro-batch size into this attribute once, in Trainer.__init__
            self._train_batch_size = self.args.train_batch_size
            if self.is_local_process_zero():
                print(f"Packing {self.packing.reason}.")
        self.pairs_per_forward = self.args.per_device_train_batch_size
        self._split = 1  # > 1 after an out-of-memory in the first step: each micro-batch runs in this many parts
        self._loss_scale = 1.0
        self._first_step = None  # the global step the first training_step of this train() call ran in
        self._parameter_count = None
        self.pairs_trained = 0  # pairs this process trained on (resumed steps not included)

        # ---- compiled kernels (GPU only), ready before anything is timed
        started = time.perf_counter()
        self.fused_dora = bool(self._dora_layers) and dora.enable_fused_combine(self.accelerator.device)
        self.compile_seconds = time.perf_counter() - started

        # ---- what is computed once: image features (frozen vision tower) and reference log-probs
        fingerprint = model_fingerprint(unwrapped, self.processing_class)
        self.image_cache = (ImageFeatureCache(os.path.join(args.output_dir, "image_features"), fingerprint,
                                              int(cache_memory_gib * 2**30)) if use_cache else None)
        # Keys whose features are cached: the collator then skips image preprocessing for them
        self._cached_keys: set[str] = set()
        self.data_collator = PackCollator(self.processing_class, cached_keys=self._cached_keys, layout=self.layout,
                                          max_length=self.args.max_length,
                                          image_token_id=forward.image_token_id(unwrapped))
        started = time.perf_counter()
        self.reference = self._reference_logps(fingerprint)
        self.reference_seconds = time.perf_counter() - started  # one-time cost, reported by the benchmark
        self.data_collator.reference = self.reference
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def _check_max_length(self) -> None:
        """Stop before any work when max_length would cut the image tokens of the pair with the largest image of
        a sample (the one-time pass checks every pair the same way)."""
        if self.args.max_length is None or self.train_dataset is None or not len(self.train_dataset):
            return
        sample = self.train_dataset.select(range(min(64, len(self.train_dataset))))
        pixels = [sum(w * h for w, h in (image.size for image in trl_example(row)["images"])) for row in sample]
        row = sample[max(range(len(pixels)), key=pixels.__getitem__)]
        pair = tokenize_pair(row, self.processing_class, pair_id=row[PAIR_ID], with_pixels=False)
        if len(pair.prompt_ids) >= self.args.max_length:
            raise prompt_too_long(row[PAIR_ID], len(pair.prompt_ids), self.args.max_length)

    # ---- data

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if PAIR_ID not in self._signature_columns:
            self._signature_columns = list(self._signature_columns) + [PAIR_ID]

    # ---- reference log-probs (and image features), once

    def _reference_context(self):
        model = self.accelerator.unwrap_model(self.model)
        if self.ref_model is None and is_peft_model(model):
            return use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None)
        return contextlib.nullcontext()

    def _reference_logps(self, model_print: str) -> ReferenceLogps:
        datasets_ = [d for d in (self.train_dataset, self.eval_dataset) if d is not None]
        fingerprint = Hasher.hash(([getattr(d, "_fingerprint", None) for d in datasets_], model_print,
                                   self.args.max_length))
        path = os.path.join(self.args.output_dir, "reference_logps.json")
        stored = ReferenceLogps.load(path, fingerprint)
        self.reference_reused = stored is not None
        if stored is not None:
            logger.info("Reusing reference log-probs from %s", path)
            return stored
        reference = ReferenceLogps(fingerprint)
        model = self.ref_model or self.model
        # Batched like training; worker processes prepare pairs (image processing, tokens) one by one meanwhile
        batch_size = max(1, self.args.precompute_ref_batch_size or self.args.per_device_train_batch_size)
        was_training = model.training
        model.eval()
        with torch.no_grad(), self._reference_context():
            rank, world = self.accelerator.process_index, self.accelerator.num_processes
            for dataset in datasets_:
                if world > 1:  # each process computes its share; all of them are gathered below
                    dataset = dataset.select(range(rank, len(dataset), world))
                workers = one_time_workers(len(dataset), batch_size)
                # about two batches in flight: pixel tensors of a 13-tile image are ~23 MB each
                loader = DataLoader(_Tokenized(dataset, self.data_collator), batch_size=None, num_workers=workers,
                                    prefetch_factor=max(2, -(-2 * batch_size // workers)) if workers else None)
                ids, chosen, rejected = [], [], []
                progress = tqdm(total=len(dataset), desc="Reference log-probs (once)",
                                disable=not self.is_local_process_zero())
                pending: list[PairTokens] = []
                for index, pair in enumerate(loader):
                    pending.append(pair)
                    if len(pending) < batch_size and index < len(dataset) - 1:
                        continue
                    batch = self.data_collator.pack(pending)["packed"]
                    self._keep_tokens(batch)
                    batch = batch.to(self.accelerator.device)
                    features = self._features(model, batch)
                    with self.accelerator.autocast():
                        logps = packed_logps(model, batch, features, self.attention)
                    ids += batch.pair_ids
                    chosen.append(logps.chosen.detach())  # read back once, at the end: no wait per batch
                    rejected.append(logps.rejected.detach())
                    progress.update(len(pending))
                    pending = []
                progress.close()
                share = (ids, torch.cat(chosen).double().cpu().tolist() if ids else [],
                         torch.cat(rejected).double().cpu().tolist() if ids else [])
                shares = [share]
                if world > 1:
                    shares = [None] * world
                    torch.distributed.all_gather_object(shares, share)
                for share_ids, share_chosen, share_rejected in shares:
                    if share_ids:
                        reference.add(share_ids, torch.tensor(share_chosen, dtype=torch.float64),
                                      torch.tensor(share_rejected, dtype=torch.float64))
        model.train(was_training)
        if self.is_world_process_zero():
            os.makedirs(self.args.output_dir, exist_ok=True)
            reference.save(path)
        return reference

    def _keep_tokens(self, batch: PackedBatch) -> None:
        """With the image cache, training needs no image processing again: keep each pair's tokens."""
        if self.image_cache is not None:
            for pair in batch.pairs:
                self.data_collator.tokens[pair.pair_id] = pair.without_pixels()

    # ---- image features, once when the vision tower is frozen

    def _features(self, model, batch: PackedBatch) -> torch.Tensor | None:
        """Image features of the batch in token order; from the cache when it holds them, else encoded in one
        vision call for every image of the batch not yet cached."""
        if self.image_cache is None or not any(batch.image_keys):
            return None  # computed inside the forward, under the current adapter state
        found = {key: self.image_cache.get(key) for key in dict.fromkeys(k for k in batch.image_keys if k)}
        missing = {key: pixels for key, pixels in zip(batch.image_keys, batch.pixel_inputs)
                   if key is not None and found[key] is None}
        if missing:
            if not all(missing.values()):
                raise RuntimeError(f"image features for {next(iter(missing))} were expected in the cache")
            with torch.no_grad(), self.accelerator.autocast():
                features = batch_image_features(model, list(missing.values()))
            offset, token_id = 0, forward.image_token_id(model)
            for key in missing:
                prompt = batch.pairs[batch.image_keys.index(key)].prompt_ids
                count = sum(1 for t in prompt if t == token_id)  # one feature row per image token
                found[key] = features[offset:offset + count]
                offset += count
                self.image_cache.put(key, found[key])
                self._cached_keys.add(key)
        return torch.cat([found[key].to(self.accelerator.device, non_blocking=True)
                          for key in batch.image_keys if key is not None])

    # ---- optimization

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self._dora_layers:
            # DoRA norms depend on the adapter weights: recompute them after each update
            optimizer.register_step_post_hook(lambda *_: dora.invalidate(self._dora_layers))
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        model = self.accelerator.unwrap_model(model)  # the engine calls the model's parts, not DDP's forward
        batch: PackedBatch = inputs["packed"].to(self.accelerator.device)
        features = self._features(model, batch)
        # The model's forward is what accelerate wraps in autocast; this engine calls its parts, so say it here
        with self.accelerator.autocast():
            if batch.ref_chosen_logps is None:  # a dataset first seen by evaluate(): reference on the fly
                with torch.no_grad(), self._reference_context():
                    ref = packed_logps(self.ref_model or model, batch, features, self.attention)
                batch.ref_chosen_logps, batch.ref_rejected_logps = ref.chosen, ref.rejected
            policy = packed_logps(model, batch, features, self.attention)
        ref_chosen = batch.ref_chosen_logps.to(policy.chosen.dtype)
        ref_rejected = batch.ref_rejected_logps.to(policy.chosen.dtype)
        x = LossInputs(chosen_logps=policy.chosen, rejected_logps=policy.rejected,
                       ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected,
                       chosen_lengths=batch.chosen_lengths, rejected_lengths=batch.rejected_lengths,
                       chosen_token_logps=policy.token_logps.index_select(0, batch.chosen_targets),
                       sft_group=self.sft_group,
                       # only the SFT term reads it: no extra kernel per micro-batch for the other losses
                       chosen_token_pairs=(batch.target_pair.index_select(0, batch.chosen_targets)
                                           if "sft" in self.loss_types else None))
        loss = combined_loss(self.loss_types, self.loss_weights, x, self.beta, self.label_smoothing) * self._loss_scale
        self._log_metrics(mode, x, batch)
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        # the attention kernel must be the same when gradient checkpointing recomputes a layer in backward
        with forward.attention_backends(self.attention != "flex"):
            loss = self._training_step(model, inputs, num_items_in_batch)
        if self.accelerator.gradient_state.sync_gradients:  # the step's last micro-batch
            self._average_gradients()
        return loss

    def _training_step(self, model, inputs, num_items_in_batch=None):
        batch: PackedBatch = inputs["packed"]
        if self._first_step is None:
            self._first_step = self.state.global_step
        if self._split > 1:
            return self._training_step_in_parts(model, batch, num_items_in_batch)
        # Auto packing plans from an estimate: if the first optimizer step still runs out of memory, continue with
        # half as many pairs per forward (each micro-batch in parts; the optimizer step is the same)
        # (one process only: the others would not know this process's micro-batches came in parts)
        fallback = (self.packing is not None and self.state.global_step == self._first_step and batch.num_pairs > 1
                    and self.accelerator.num_processes == 1)
        grads = self._gradients() if fallback else None
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        except torch.cuda.OutOfMemoryError:
            if not fallback:
                raise
            self._restore_gradients(grads)
            del inputs
            gc.collect()
            torch.cuda.empty_cache()
            smaller = max(d for d in range(1, batch.num_pairs) if batch.num_pairs % d == 0)
            self._split = batch.num_pairs // smaller
            self.pairs_per_forward = smaller
            if self.is_local_process_zero():
                print(f"note: {batch.num_pairs} pairs per forward ran out of GPU memory in the first step; continuing "
                      f"with {smaller} (the effective batch is unchanged).")
            return self._training_step_in_parts(model, batch, num_items_in_batch)
        self.pairs_trained += batch.num_pairs
        return loss

    def _training_step_in_parts(self, model, batch: PackedBatch, num_items_in_batch):
        total = None
        for part in batch.split(batch.num_pairs // self._split):
            self._loss_scale = part.num_pairs / batch.num_pairs  # the parts' losses add up to the whole batch's
            try:
                loss = super().training_step(model, {"packed": part}, num_items_in_batch)
            finally:
                self._loss_scale = 1.0
            total = loss if total is None else total + loss
            self.pairs_trained += part.num_pairs
        return total

    def _gradients(self) -> list[torch.Tensor | None]:
        """A copy of the trainable parameters' gradients (adapters only: small), to undo a failed micro-batch."""
        return [None if p.grad is None else p.grad.clone() for p in self.model.parameters() if p.requires_grad]

    def _restore_gradients(self, grads: list[torch.Tensor | None]) -> None:
        for p, g in zip((p for p in self.model.parameters() if p.requires_grad), grads):
            p.grad = g

    def _log_metrics(self, mode: str, x: LossInputs, batch: PackedBatch) -> None:
        """TRL's metrics, kept on the device until `log` reads them all at once (a `.item()` per micro-batch
        would make the host wait for the GPU six times per forward; a gather per micro-batch would tie the
        processes of a data-parallel run together at every forward)."""
        chosen_rewards = self.beta * x.chosen_logratios.detach()
        rejected_rewards = self.beta * x.rejected_logratios.detach()
        m = self._metrics[mode]
        m["rewards/chosen"].append(chosen_rewards.mean())
        m["rewards/rejected"].append(rejected_rewards.mean())
        m["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean())
        m["rewards/margins"].append((chosen_rewards - rejected_rewards).mean())
        m["logps/chosen"].append(x.chosen_logps.detach().mean())
        m["logps/rejected"].append(x.rejected_logps.detach().mean())
        if mode == "train":
            self._total_train_tokens += batch.num_tokens
        m["num_tokens"] = [self._total_train_tokens]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        keys = [key for key, values in metrics.items() if values and torch.is_tensor(values[0])]
        if keys:  # one read-back (and, on several processes, one gather) for everything kept since the last log
            local = torch.stack([torch.stack(metrics[key]).float().mean() for key in keys])
            if "num_tokens" in metrics:  # a count, summed over the processes (the rest are averaged)
                local = torch.cat([local, local.new_tensor([float(metrics["num_tokens"][-1])])])
            everywhere = self.accelerator.gather(local[None].to(self.accelerator.device)).reshape(-1, len(local))
            values = everywhere.mean(0).tolist()
            for key, value in zip(keys, values):
                metrics[key] = [value]
            if "num_tokens" in metrics:
                metrics["num_tokens"] = [everywhere[:, -1].sum().item()]
        super().log(logs, start_time)

    # ---- data parallel: gradients averaged by hand (see training_step)

    def _average_gradients(self) -> None:
        """Average the trainable parameters' gradients over the processes, once per optimizer step, before
        clipping. The engine calls the model's parts, not the DistributedDataParallel wrapper's forward, so
        DDP's own reducer never runs; averaging here is what it would do (each process's accumulation is
        already divided by its micro-batch count), and a parameter without a gradient counts as zero."""
        if self.accelerator.num_processes == 1:
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for dtype in sorted({p.grad.dtype for p in params}, key=str):
            grads = [p.grad for p in params if p.grad.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= self.accelerator.num_processes
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def floating_point_ops(self, inputs) -> int:
        """Trainer's FLOP count (6 x parameters x tokens), from the batch's token count, without a model scan."""
        if self._parameter_count is None:
            self._parameter_count = sum(p.numel() for p in self.model.parameters())
        batch = inputs.get("packed")
        return 6 * self._parameter_count * (batch.num_tokens if batch is not None else 0)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def train(self, *args, **kwargs):
        self._first_step = None  # the out-of-memory fallback watches the first step this call runs (resumed too)
        try:
            return super().train(*args, **kwargs)
        finally:
            dora.invalidate(self._dora_layers)
