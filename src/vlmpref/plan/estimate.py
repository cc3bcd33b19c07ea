"""Will this run fit my GPU, and how long will it take? Memory and time of a DPO run, from the config alone.

    from vlmpref.plan.estimate import RunSettings, estimate
    est = estimate("smolvlm-2.2b", RunSettings(engine="fast", pairs_per_forward=4), gpu="rtx-4070")
    est.memory.reserved_gib, est.fits, est.seconds_per_pair

The memory model follows what is alive at the peak of a training step (weights, adapter with its gradients
and AdamW state, activations saved for backward, one layer's working set during backward, inputs) for
either engine:

- trl: per pair, two sequences (prompt + image + answer) for the policy with gradients and the same two again
  for the reference without; the vision tower runs on each sequence's image. PEFT's DoRA leaves its output in
  fp32 under autocast, so the language model's stream is fp32.
- fast: one packed sequence (prompt + image | chosen | rejected) per pair, `pairs_per_forward` pairs per
  forward (one padded row each), reference log-probs computed once before training, the vision tower once
  per pair with gradients (adapters on it) or not at all with the image-feature cache (adapters on the
  language model only), log-probs only at answer tokens in 1024-row chunks, bf16 activations.

Coefficients (bytes per token per layer, the allocator's share) were read off allocation traces of real
training steps and then fitted to peak reserved memory measured on an H200 for both engines
(benchmarks/ESTIMATE_VS_MEASURED.md, refit with benchmarks/memory_calibration.py --fit). Time is FLOPs at a
measured efficiency or the host's per-step overhead (kernel launches, the collator's CPU work per pair),
whichever is longer.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

from vlmpref.errors import VlmprefError
from vlmpref.plan.gpus import Gpu, find_gpu
from vlmpref.plan.options import RunOptions
from vlmpref.plan.shapes import ImageTokens, ModelShape, describe_model, image_tokens

GIB = 2**30

# ---- calibration: the only numbers fitted to measurements; everything else is counted
CALIBRATION = {
    # one layer's working set in backward (its recomputed activations and their gradients), bytes per token,
    # as (per hidden unit, per intermediate unit), for a bf16 language-model stream and an fp32 vision stream;
    # "lora" also serves layers without adapters. The language model's is fitted per engine: under trl it is
    # PEFT's DoRA in an fp32 stream (the base matmul runs twice); the fast engine's (bf16, base output reused)
    # comes out above a count of its saved tensors (~70 x hidden + 22 x intermediate), as its measured peaks
    # grow faster than linearly with pairs per forward (benchmarks/ESTIMATE_VS_MEASURED.md)
    "text_backward": {("trl", "dora"): (30.0, 16.0), ("trl", "lora"): (24.0, 12.0),  # fp32 stream: x 1.5
                      ("fast", "dora"): (100.0, 16.0), ("fast", "lora"): (94.0, 12.0)},
    "vision_backward": {"dora": (45.0, 9.5), "lora": (22.0, 12.0)},
    # one layer's forward without gradients (reference pass, frozen vision tower), bytes per token
    "text_forward": (6.0, 6.0),
    "vision_forward": (10.0, 8.0),
    # activations saved per layer without gradient checkpointing, bytes per token
    "text_saved": (30.0, 16.0),
    "vision_saved": (30.0, 8.0),
    # the fast engine's log-probs: bytes per row and vocabulary entry of one 1024-row chunk at its peak in
    # backward (bf16 logits, their fp32 copy, log-softmax output and the gradients of both)
    "logit_chunk_bytes": 14.0,
    # CUDA caching allocator, beyond live tensors: a share of the activations, blocks cached from the vision
    # tower's largest temporaries (this many fp32 intermediate-size tensors of one image), and a fixed part
    "fragmentation": 0.045,
    "image_blocks": 5.1,
    "allocator_fixed_gib": 0.46,
    # outside torch's reserved memory: CUDA context, cuBLAS/cuDNN handles, kernels (counted only for "fits")
    "cuda_context_gib": 0.55,
    # time: achieved share of the card's dense bf16 peak, fitted per engine
    "matmul_efficiency": {"trl": 0.45, "fast": 0.21},
    "bytes_per_activation_byte": 37.0,  # memory traffic per byte of activations written in one forward
    "bandwidth_efficiency": 0.8,
    # host time per micro-step: a base part plus a part per adapted module (kernel launches: both engines are
    # launch-bound on fast GPUs), for DoRA and for LoRA, plus the collator's CPU work per pair (image processing,
    # tokens; dataloader_num_workers=0). fast LoRA: not measured, scaled from trl's LoRA/DoRA ratio
    "step_overhead_s": {"trl": 0.215, "fast": 0.06},
    "data_seconds_per_pair": 0.085,
    "module_overhead_s": {("trl", True): 5.06e-3, ("trl", False): 2.89e-3,
                          ("fast", True): 4.9e-3, ("fast", False): 2.8e-3},
}
LOGIT_CHUNK_ROWS = 1024  # vlmpref.train.fast.forward.answer_token_logps
TRL_LOGIT_COLUMNS = 32768  # TRL's fused LM head scores the vocabulary in chunks of this many columns


@dataclass
class RunSettings(RunOptions):
    """A run's options (RunOptions: the same names and defaults as `vlmpref train`) and the data's sizes."""

    image_width: int = 640
    image_height: int = 480
    prompt_tokens: int = 20  # chat markup and question, without the image
    answer_tokens: int = 120  # the longer of chosen and rejected (~90 English words)

    @property
    def cached_images(self) -> bool:
        if self.engine != "fast":
            return False
        return self.lora_scope == "language" if self.image_cache == "auto" else self.image_cache == "on"

    @property
    def pairs_in_forward(self) -> int:
        """Pairs in one forward pass; the fast engine's `auto` means unplanned here (see `plan_packing`)."""
        if self.engine == "fast" and self.pairs_per_forward != "auto":
            return self.pairs_per_forward
        return self.per_device_train_batch_size


def run_settings(options: RunOptions, **data_sizes) -> RunSettings:
    """RunSettings of a TrainConfig or EstimateConfig (any RunOptions), with the data's sizes where given
    (image_width, image_height, prompt_tokens, answer_tokens)."""
    return RunSettings(**{f.name: getattr(options, f.name) for f in dataclasses.fields(RunOptions)}, **data_sizes)


@dataclass
class Memory:
    """Peak GPU memory of a training step, in bytes, by what holds it."""

    weights: int
    adapter: int  # adapter weights, their gradients and AdamW's two moments
    activations: int  # saved for backward plus the working set at the peak
    inputs: int  # pixel values and masks, image features, log-prob chunks
    allocator: int  # what the caching allocator holds beyond live tensors
    cuda_context: int  # outside torch's reserved memory
    peak_phase: str = ""

    @property
    def reserved(self) -> int:
        """What `torch.cuda.max_memory_reserved()` reports."""
        return self.weights + self.adapter + self.activations + self.inputs + self.allocator

    @property
    def total(self) -> int:
        return self.reserved + self.cuda_context

    @property
    def reserved_gib(self) -> float:
        return self.reserved / GIB

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def rows(self) -> list[tuple[str, float]]:
        return [("weights", self.weights / GIB), ("adapter + gradients + AdamW", self.adapter / GIB),
                ("activations", self.activations / GIB), ("inputs and log-prob chunks", self.inputs / GIB),
                ("allocator cache and fragmentation", self.allocator / GIB),
                ("CUDA context and libraries", self.cuda_context / GIB)]


@dataclass
class Estimate:
    shape: ModelShape
    settings: RunSettings
    gpu: Gpu
    image: ImageTokens
    sequence_tokens: int  # tokens of one sequence the language model runs (per TRL sequence, per packed pair)
    trainable_params: int
    memory: Memory
    flops_per_pair: float
    seconds_per_pair: float
    bound: str  # what limits the speed: "GPU compute", "GPU memory bandwidth" or "host overhead"
    notes: list[str] = field(default_factory=list)

    @property
    def free_gib(self) -> float:
        return self.gpu.memory_gib - self.memory.total_gib

    @property
    def fits(self) -> bool:
        return self.free_gib >= 0

    def epoch_seconds(self, pairs: int) -> float:
        return pairs * self.seconds_per_pair


# ---- counting


def _is_target(name: str, part: str, shape: ModelShape, settings: RunSettings) -> bool:
    """PEFT's matching: a module whose last name component is a target; `language` keeps the text model's."""
    if part == "lm_head" or name.rsplit(".", 1)[-1] not in settings.lora_target_modules:
        return False
    return settings.lora_scope == "all" or part == "text"


def adapted_linears(shape: ModelShape, settings: RunSettings):
    return [lin for lin in shape.linears if _is_target(lin.name, lin.part, shape, settings)]


def trainable_params(shape: ModelShape, settings: RunSettings) -> tuple[int, int]:
    """(LoRA A and B parameters, DoRA magnitude parameters), exactly as PEFT creates them."""
    lora = magnitude = 0
    for lin in adapted_linears(shape, settings):
        lora += settings.lora_r * (lin.in_features + lin.out_features)
        magnitude += lin.out_features if settings.use_dora else 0
    return lora, magnitude


def weight_bytes(shape: ModelShape, quantization: str) -> int:
    """Bytes of the base weights on the GPU: bf16, or bitsandbytes 8-bit / NF4 with double quantization."""
    total = 2 * shape.non_linear_params + shape.buffer_bytes
    for lin in shape.linears:
        total += 2 * lin.out_features if lin.bias else 0
        n = lin.numel
        if quantization == "none" or lin.part == "lm_head":  # bitsandbytes keeps the output layer in bf16
            total += 2 * n
        elif quantization == "8bit":
            total += n + 4 * lin.out_features  # int8 weights + one fp32 scale per row
        else:
            blocks = math.ceil(n / 64)
            # packed 4-bit pairs, one 8-bit absmax per 64 weights (double quantization), one fp32 absmax per 256
            # blocks, the NF4 code (16 fp32), the fp32 offset, the 8-bit code of the absmax (256 fp32)
            total += math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / 256) + 16 * 4 + 4 + 256 * 4
    return total


def adapter_bytes(shape: ModelShape, settings: RunSettings) -> int:
    """Adapter weights + gradients + AdamW moments. With a quantized base TRL keeps A and B in bf16 (QLoRA) and
    the DoRA magnitude in fp32; over a bf16 base PEFT keeps all of them in fp32."""
    lora, magnitude = trainable_params(shape, settings)
    ab = 2 if settings.quantization != "none" else 4
    return 4 * ab * lora + 16 * magnitude


def sequence_tokens(shape: ModelShape, settings: RunSettings, image: ImageTokens) -> int:
    prefix = settings.prompt_tokens + image.tokens
    if settings.engine == "fast":
        return prefix + 2 * settings.answer_tokens
    return prefix + settings.answer_tokens


def stream_bytes(shape: ModelShape, settings: RunSettings) -> tuple[int, int]:
    """Bytes per value of the (language model, vision tower) residual streams.

    Both engines run the model under CUDA autocast. There LayerNorm returns fp32 and bitsandbytes layers cast their
    output back to their input's dtype, so a quantized SigLIP tower carries an fp32 stream; plain bf16 layers keep
    bf16. The language model's RMSNorm casts back to its input's dtype, so its stream stays bf16, except under TRL
    with DoRA over a quantized base: PEFT leaves the DoRA output in the fp32 of the magnitude vector there, which
    promotes the stream after the first layer. The fast engine's DoRA keeps the activation dtype (train/fast/dora.py).
    """
    quantized = settings.quantization != "none"
    vision = 4 if quantized and shape.norm == "layernorm" else 2
    text = 4 if settings.engine == "trl" and settings.use_dora and quantized else 2
    return text, vision


def _per_token(coefficients: tuple[float, float], hidden: int, intermediate: int, scale: float = 1.0) -> float:
    per_hidden, per_intermediate = coefficients
    return scale * (per_hidden * hidden + per_intermediate * intermediate)


def estimate_memory(shape: ModelShape, settings: RunSettings, image: ImageTokens) -> Memory:
    cal = CALIBRATION
    b = settings.pairs_in_forward
    seq = sequence_tokens(shape, settings, image)
    trl = settings.engine == "trl"
    sequences = 2 * b if trl else b  # TRL: chosen and rejected rows; fast: one packed row per pair
    text_tokens = sequences * seq
    # the vision tower sees every sequence's image (TRL duplicates it for chosen and rejected), or none when cached
    images = 0 if settings.cached_images else sequences
    per_image = image.patches
    vision_tokens = images * per_image
    vision_adapted = any(lin.part == "vision" for lin in adapted_linears(shape, settings))
    # gradient checkpointing makes transformers hook every embedding layer to require grad, so the vision tower
    # sits in the backward graph even when it has no adapters
    vision_grad = vision_tokens > 0 and (vision_adapted or settings.gradient_checkpointing)
    t, v = shape.text, shape.vision
    text_stream, stream = stream_bytes(shape, settings)
    vision_scale = 1.0 if stream == 4 else 0.7  # a bf16 vision stream halves the fp32 tensors of the working set
    text_scale = 1.0 if text_stream == 2 else 1.5  # an fp32 stream doubles the tensors that follow it

    weights = weight_bytes(shape, settings.quantization)
    adapter = adapter_bytes(shape, settings)

    # ---- inputs: pixel values (fp32) + their bf16 copy + the int64 pixel mask; cached image features
    pixel_bytes = image.pixels * (3 * 4 + 3 * 2 + 8)  # of one image
    inputs = images * pixel_bytes
    if settings.cached_images:
        inputs += b * image.features * t.hidden * 2
    completions = 2 * b * settings.answer_tokens  # chosen and rejected answers are scored
    if trl:  # TRL's fused head: fp32 log-probs of every completion token against a slice of the vocabulary
        inputs += completions * min(shape.vocab, TRL_LOGIT_COLUMNS) * 4 * 2
        logits = 0.0
    else:  # the fast engine: one chunk of answer rows against the whole vocabulary, recomputed in backward
        logits = min(completions, LOGIT_CHUNK_ROWS) * shape.vocab * cal["logit_chunk_bytes"]

    # ---- activations
    if settings.gradient_checkpointing:
        saved_text = t.layers * text_tokens * t.hidden * text_stream
        saved_vision = v.layers * vision_tokens * v.hidden * stream if vision_grad else 0
    else:
        saved_text = t.layers * text_tokens * _per_token(cal["text_saved"], t.hidden, t.intermediate, text_scale)
        saved_vision = (v.layers * vision_tokens * _per_token(cal["vision_saved"], v.hidden, v.intermediate,
                                                               vision_scale) if vision_grad else 0)
    kind = "dora" if settings.use_dora else "lora"
    work_text = text_tokens * _per_token(cal["text_backward"][settings.engine, kind], t.hidden, t.intermediate,
                                         text_scale)
    vision_kind = kind if vision_adapted else "lora"
    work_vision = (vision_tokens * _per_token(cal["vision_backward"][vision_kind], v.hidden, v.intermediate,
                                              vision_scale) if vision_grad else 0)
    if not settings.gradient_checkpointing:  # the layer's own saved activations are part of its working set
        work_text *= 0.5
        work_vision *= 0.5
    # TRL's DoRA rebuilds each weight on every forward; the fast engine takes the norms once per optimizer step,
    # before activations pile up
    dora = _dora_transient(shape, settings) if trl else {"text": 0, "vision": 0}
    forward_text = text_tokens * _per_token(cal["text_forward"], t.hidden, t.intermediate, text_scale)
    forward_vision = vision_tokens * _per_token(cal["vision_forward"], v.hidden, v.intermediate, vision_scale)

    phases = {
        # backward runs the log-probs first, then the text layers (their saved inputs still alive), the vision
        # tower last
        "backward (log-probs)": saved_vision + saved_text + logits,
        "backward (language model)": saved_vision + saved_text + work_text + dora["text"],
        "backward (vision tower)": saved_vision + work_vision + dora["vision"],
        "vision forward": forward_vision,
    }
    if trl:  # TRL's reference pass runs after the policy forward, with everything the policy saved still alive
        phases["reference forward"] = saved_vision + saved_text + max(forward_text, forward_vision)
    else:  # reference log-probs once before training, without gradients; with the cache, images one at a time
        one_image = per_image * _per_token(cal["vision_forward"], v.hidden, v.intermediate, vision_scale)
        phases["reference pass (once)"] = max(forward_text, forward_vision or one_image) + (
            b * pixel_bytes if settings.cached_images else 0)
    phase = max(phases, key=phases.get)
    activations = int(phases[phase])
    image_blocks = cal["image_blocks"] * per_image * v.intermediate * 4 if vision_tokens else 0
    allocator = int(cal["fragmentation"] * activations + image_blocks + cal["allocator_fixed_gib"] * GIB)
    return Memory(weights=weights, adapter=adapter, activations=activations, inputs=int(inputs),
                  allocator=allocator, cuda_context=int(cal["cuda_context_gib"] * GIB), peak_phase=phase)


def _dora_transient(shape: ModelShape, settings: RunSettings) -> dict[str, int]:
    """DoRA rebuilds each adapted weight to take its norm: an identity of in x in, the dequantized weight and a few
    weight-sized temporaries, for one layer at a time."""
    out = {"text": 0, "vision": 0}
    if not settings.use_dora:
        return out
    # over a bf16 base PEFT keeps the adapter in fp32, so the identity is built in fp32 and cast to bf16 too
    eye_bytes, copies = (2, 5) if settings.quantization != "none" else (6, 3)
    for lin in adapted_linears(shape, settings):
        part = "vision" if lin.part == "vision" else "text"
        out[part] = max(out[part], eye_bytes * lin.in_features**2 + copies * 2 * lin.numel)
    return out


# ---- time


def flops_per_pair(shape: ModelShape, settings: RunSettings, image: ImageTokens) -> tuple[float, float, float]:
    """(matmul FLOPs of one training pair's step, reference included; FLOPs of the work the fast engine does once
    per pair for the whole run (reference log-probs, image features); activation bytes written by one forward)."""
    seq = sequence_tokens(shape, settings, image)
    trl = settings.engine == "trl"
    sequences = 2 if trl else 1
    text_tokens = sequences * seq
    t, v = shape.text, shape.vision
    per_image = image.patches  # vision-tower tokens of one image
    # PEFT's DoRA runs the base matmul a second time, on the dropped-out input (the fast engine reuses the first)
    dora_params = {"text": 0, "vision": 0}
    for lin in adapted_linears(shape, settings) if settings.use_dora and trl else []:
        dora_params["vision" if lin.part == "vision" else "text"] += lin.numel
    attn_text = 4 * t.layers * seq * t.hidden / 2  # QK^T and AV over a causal half of the sequence
    # attention within a tile, or over the whole image where there are no tiles (Qwen's dynamic resolution)
    attn_vision = 4 * v.layers * (shape.patches_per_tile or per_image) * v.hidden
    text = text_tokens * (2 * shape.part_params("text") + attn_text)
    vision_one = per_image * (2 * shape.part_params("vision") + attn_vision)
    vision_one += image.features * 2 * shape.part_params("connector")
    head = 2 * settings.answer_tokens * 2 * shape.vocab * t.hidden  # log-probs at chosen and rejected tokens
    dora_text = text_tokens * 2 * dora_params["text"]
    dora_vision = per_image * 2 * dora_params["vision"]
    passes = 3 if settings.gradient_checkpointing else 2  # forward (+ recompute) + backward to the inputs
    vision_in_backward = settings.lora_scope == "all" or settings.gradient_checkpointing
    policy = passes * (text + head + dora_text)
    if settings.cached_images:  # encoded once for the whole run
        vision, once = 0.0, vision_one
    else:
        vision = sequences * ((passes if vision_in_backward else 1) * vision_one + passes * dora_vision)
        once = 0.0
    if trl:  # the reference forward, every step
        reference = text + head + sequences * vision_one
    else:  # reference log-probs once for the whole run
        reference = 0.0
        once += text + head + (0 if settings.cached_images else vision_one)
    act_bytes = (t.layers * text_tokens * _per_token(CALIBRATION["text_saved"], t.hidden, t.intermediate)
                 + v.layers * (0 if settings.cached_images else sequences * per_image)
                 * _per_token(CALIBRATION["vision_saved"], v.hidden, v.intermediate))
    return policy + vision + reference, once, act_bytes


def seconds_per_pair(shape: ModelShape, settings: RunSettings, image: ImageTokens, gpu: Gpu) -> tuple[float, str, float]:
    cal = CALIBRATION
    flops, once_flops, act_bytes = flops_per_pair(shape, settings, image)
    rate = gpu.bf16_tflops * 1e12 * cal["matmul_efficiency"][settings.engine]
    compute = flops / rate
    traffic = act_bytes * cal["bytes_per_activation_byte"] / (gpu.bandwidth_gbs * 1e9 * cal["bandwidth_efficiency"])
    pairs = settings.pairs_in_forward
    gpu_seconds = (compute + traffic) * pairs
    modules = len(adapted_linears(shape, settings))
    launches = (cal["step_overhead_s"][settings.engine]
                + modules * cal["module_overhead_s"][(settings.engine, settings.use_dora)])
    # the collator prepares every pair's image and tokens on the CPU, in the training process
    host_seconds = launches + pairs * cal["data_seconds_per_pair"]
    step = max(gpu_seconds, host_seconds)
    # the fast engine's once-per-run passes (a forward per micro-batch, no backward), spread over the epochs
    once = max(once_flops * pairs / rate, launches / 3 + pairs * cal["data_seconds_per_pair"]) if once_flops else 0.0
    bound = "host overhead (kernel launches)" if host_seconds >= gpu_seconds else (
        "GPU compute" if compute >= traffic else "GPU memory bandwidth")
    return (step + once / settings.num_train_epochs) / pairs, bound, flops


# ---- the whole estimate


def estimate(model: str | ModelShape, settings: RunSettings, gpu: str | Gpu = "h200",
             trust_remote_code: bool = False) -> Estimate:
    shape = model if isinstance(model, ModelShape) else describe_model(model, trust_remote_code)
    gpu = gpu if isinstance(gpu, Gpu) else find_gpu(gpu)
    _check(settings)
    image = image_tokens(shape, settings.image_width, settings.image_height, settings.image_longest_edge)
    memory = estimate_memory(shape, settings, image)
    per_pair, bound, flops = seconds_per_pair(shape, settings, image, gpu)
    lora, magnitude = trainable_params(shape, settings)
    notes = []
    if gpu.note:
        notes.append(f"{gpu.name}: {gpu.note}.")
    if settings.engine == "fast" and settings.pairs_in_forward > 8:
        notes.append(f"{settings.pairs_in_forward} pairs per forward: measured peaks grow faster than linearly "
                     "beyond 8 pairs (at 16 the estimate was 14% below the measured peak); keep a margin "
                     "(benchmarks/ESTIMATE_VS_MEASURED.md).")
    return Estimate(shape=shape, settings=settings, gpu=gpu, image=image,
                    sequence_tokens=sequence_tokens(shape, settings, image), trainable_params=lora + magnitude,
                    memory=memory, flops_per_pair=flops, seconds_per_pair=per_pair, bound=bound, notes=notes)


def _check(settings: RunSettings) -> None:
    for name in ("lora_r", "per_device_train_batch_size", "gradient_accumulation_steps", "image_width", "image_height",
                 "answer_tokens"):
        if getattr(settings, name) <= 0:
            raise VlmprefError(f"--{name.replace('_', '-')} must be positive, not {getattr(settings, name)}.")
    if settings.pairs_per_forward != "auto" and settings.pairs_per_forward <= 0:
        raise VlmprefError(f"--pairs-per-forward must be positive, not {settings.pairs_per_forward}.")
    if settings.prompt_tokens < 0:
        raise VlmprefError(f"--prompt-tokens must be zero or more, not {settings.prompt_tokens}.")


def parse_image_size(text: str) -> tuple[int, int]:
    """"640x480" -> (640, 480)."""
    match = re.fullmatch(r"\s*(\d+)\s*[x×X*,]\s*(\d+)\s*", str(text))
    if not match:
        raise VlmprefError(f"Image size '{text}' is not WIDTHxHEIGHT; give it like 640x480.")
    return int(match.group(1)), int(match.group(2))

