"""Training throughput of the train stage's setup: tokens/s and, on a GPU, model FLOP utilisation.

Runs the same Trainer configuration as stages/model/train.py (training_arguments, the batch collator,
bf16 autocast on CUDA, float32 on CPU) on synthetic batches at fixed lengths: by default the
seed's lengths (512 source, 256 target tokens, no padding: the worst case) and the `t5-base`
shape on a GPU, the `tiny` shape on CPU. Prints tokens/s, pairs/s, the projected time of one
seed round (20,000 pairs x 3 epochs) and, on CUDA, MFU against the GPU's dense bf16 peak.

    python bench/train.py                       # GPU: t5-base, batch 32; CPU: tiny, batch 8
    python bench/train.py --preset t5-small --batch-size 64 --steps 40 --compile

Targets (issue 4): one H100 trains a 20,000-pair x 3-epoch round in <= 300 s at >= 35% MFU.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # as in stages/model/train.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense bf16 peaks (FLOP/s, no sparsity) by device-name fragment; first match wins.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L4", 121e12),
             ("A10G", 70e12)]
ROUND_PAIRS, ROUND_EPOCHS = 20_000, 3


def t5_train_flops_per_pair(cfg, src: int, tgt: int) -> float:
    """Matmul FLOPs of one training step on one pair (forward x 3 for forward + backward)."""
    d, inner, ff, v = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.vocab_size
    ff_mats = 3 if cfg.is_gated_act else 2
    enc_layer = src * (8 * d * inner + 2 * ff_mats * d * ff) + 4 * src * src * inner
    dec_layer = (tgt * (8 * d * inner + 2 * ff_mats * d * ff) + 4 * tgt * tgt * inner      # self-attn + ff
                 + tgt * 4 * d * inner + src * 4 * d * inner + 4 * tgt * src * inner)     # cross-attn
    forward = cfg.num_layers * enc_layer + cfg.num_decoder_layers * dec_layer + tgt * 2 * d * v
    return 3.0 * forward


def peak_flops(name: str) -> float | None:
    return next((peak for frag, peak in PEAK_BF16 if frag in name), None)


def main() -> int:
    import numpy as np
    import torch
    from transformers import Trainer, TrainerCallback

    from stages.model.modeling import detect_device, t5_config
    from stages.model.train import BatchCollator, Schedule, ScheduleDataset, TrainConfig, training_arguments

    device = detect_device()
    gpu = device.kind == "cuda"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="t5-base" if gpu else "tiny")
    ap.add_argument("--batch-size", type=int, default=32 if gpu else 8)
    ap.add_argument("--source-len", type=int, default=512)
    ap.add_argument("--target-len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=32128, help="vocabulary size (FLAN-T5: 32128)")
    ap.add_argument("--steps", type=int, default=30 if gpu else 4, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5 if gpu else 1, help="untimed steps first")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (TrainingArguments)")
    args = ap.parse_args()

    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)
    config = t5_config(args.preset, args.vocab)
    model = T5ForConditionalGeneration(config)
    params = sum(p.numel() for p in model.parameters())

    class Tok:   # what DataCollatorForSeq2Seq needs: padding (never needed here, lengths are fixed)
        pad_token_id, padding_side, model_input_names = 0, "right", ["input_ids", "attention_mask"]

        def pad(self, features, return_tensors="pt", **_):
            return {k: torch.tensor([f[k] for f in features]) for k in features[0]}

    rng = np.random.default_rng(0)
    b, s, t = args.batch_size, args.source_len, args.target_len
    total = args.warmup + args.steps
    pairs = [{"input_ids": rng.integers(3, args.vocab, s).tolist(), "attention_mask": [1] * s,
              "labels": rng.integers(3, args.vocab, t).tolist()} for _ in range(b)]
    # The stage's dataset class over one synthetic shard: every step trains on a full batch.
    data = ScheduleDataset(Schedule([(0, np.arange(b)) for _ in range(total)], [total]), lambda shard: pairs)

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    cfg = TrainConfig(batch_size=b, learning_rate=1e-4, logging_steps=10**9, checkpoint_steps=10**9)
    targs = training_arguments(cfg, device, Path(os.environ.get("TMPDIR", "/tmp")) / "soqa-bench-train", total,
                               quiet=True, save=False, torch_compile=args.compile)
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=BatchCollator(Tok(), None),
                      callbacks=[StepTimer()])
    trainer.train()
    if len(times) <= args.warmup:
        print("not enough steps timed")
        return 1
    seconds = times[-1] - times[args.warmup - 1] if args.warmup else times[-1] - times[0]
    steps = args.steps if args.warmup else args.steps - 1
    pairs_per_s = steps * b / seconds
    tokens_per_s = pairs_per_s * (s + t)
    flops = t5_train_flops_per_pair(config, s, t) * pairs_per_s
    round_s = ROUND_PAIRS * ROUND_EPOCHS / pairs_per_s
    print(f"device            {device.name} ({device.precision})")
    print(f"model             {args.preset}: {params / 1e6:.1f} M parameters, vocab {args.vocab}")
    print(f"batch             {b} pairs x ({s} source + {t} target) tokens, {steps} timed steps")
    print(f"step time         {seconds / steps * 1000:.1f} ms")
    print(f"throughput        {tokens_per_s:,.0f} tokens/s, {pairs_per_s:,.1f} pairs/s, {flops / 1e12:.2f} TFLOP/s")
    print(f"seed round        {ROUND_PAIRS:,} pairs x {ROUND_EPOCHS} epochs in {round_s:,.0f} s "
          f"(target on one H100: <= 300 s; the seed: 13,400 s on an L4)")
    if gpu:
        peak = peak_flops(device.name)
        if peak:
            print(f"MFU               {flops / peak:.1%} of {peak / 1e12:.0f} TFLOP/s dense bf16 (target >= 35%)")
        else:
            print(f"MFU               unknown peak for {device.name}: add it to PEAK_BF16")
        print(f"peak memory       {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    else:
        print("GPU figures       unmeasured: no CUDA device here (MFU and the H100 round time need a GPU run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
