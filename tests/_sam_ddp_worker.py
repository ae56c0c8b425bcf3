"""One rank of the 2-process SAM test (tests/test_sam_ddp.py). Run as
`python _sam_ddp_worker.py OUT_DIR` with RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
set; trains with accelerate (MULTI_CPU, gloo) + sam_update and saves its final weights and losses.
The builders below are shared with the single-process simulation in the test."""

import sys

import torch

WORLD, STEPS, N_MICRO, MICRO, SEQ = 2, 4, 2, 2, 10
RHO, LR, WD, CLIP = 0.1, 1e-2, 0.01, 1.0
EPS = 1e-4  # AdamW eps. With the default 1e-8, an entry whose |grad| is ~1e-6 (e.g. the embedding
            # row of a token seen once) turns rounding-level gradient differences into ~1e-5 weight
            # differences in the first steps; 1e-4 keeps the weight comparison well-conditioned.
            # (The gradients themselves are compared directly as well.)
POISONED = (2, 1)  # (step, rank): that rank's pass-1 loss is NaN -> every rank must skip the update


def build_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


def rank_batches(step, rank):
    """Each rank sees different data: N_MICRO micro-batches of MICRO sequences."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    ids = torch.randint(0, 64, (N_MICRO * MICRO, SEQ), generator=g)
    return list(ids.chunk(N_MICRO))


def loss_fn(model, ids):
    return model(input_ids=ids, labels=ids).loss


def main(out_dir):
    torch.set_num_threads(1)
    from accelerate import Accelerator

    from kl_utils.training.sam import SAM, sam_update

    acc = Accelerator(cpu=True)
    assert acc.num_processes == WORLD, acc.num_processes
    model = build_model()
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=LR, weight_decay=WD, eps=EPS)
    seen, plist = [], list(model.parameters())  # the gradient each base step receives, per update
    opt.base_optimizer.register_step_pre_hook(
        lambda o, a, k: seen.append([p.grad.detach().clone() for p in plist]))
    model, opt = acc.prepare(model, opt)
    assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
    rank, losses = acc.process_index, []
    for step in range(STEPS):
        poisoned = (step, rank) == POISONED
        fn = (lambda m, b: loss_fn(m, b) * float("nan")) if poisoned else loss_fn
        losses.append(sam_update(opt, model, rank_batches(step, rank), fn, accelerator=acc,
                                 max_grad_norm=CLIP))
    params = {n: p.detach().clone() for n, p in acc.unwrap_model(model).named_parameters()}
    torch.save({"params": params, "losses": losses, "grads": seen}, f"{out_dir}/rank{rank}.pt")
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
