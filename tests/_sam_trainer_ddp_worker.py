"""One rank of the 2-process SAMTrainer test (tests/test_sam_ddp.py). Run as
`python _sam_trainer_ddp_worker.py OUT_DIR` with RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
set; trains the model of _sam_ddp_worker with SAMTrainer (Trainer's DDP on CPU, gloo) and saves its
final weights, the micro-batches it saw per update, its logged losses and the gradients AdamW received."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _sam_ddp_worker as W  # noqa: E402  (model, sizes, rho, lr, clip, the poisoned (step, rank))


def main(out_dir):
    torch.set_num_threads(1)
    from datasets import Dataset

    from kl_utils.training.sam_trainer import SAMTrainer, SAMTrainingArguments

    g = torch.Generator().manual_seed(7)
    n = W.WORLD * W.N_MICRO * W.MICRO * W.STEPS
    ds = Dataset.from_dict({"input_ids": torch.randint(0, 64, (n, W.SEQ), generator=g).tolist()})
    seen = []

    def collate(rows):
        ids = torch.tensor([r["input_ids"] for r in rows])
        seen.append(ids)
        return {"input_ids": ids, "labels": ids.clone()}

    class Poisoned(SAMTrainer):  # that rank's pass-1 loss is NaN at that update: every rank skips it
        def compute_loss(self, model, inputs, *args, **kwargs):
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            step, rank = W.POISONED
            if self.state.global_step == step and self.args.process_index == rank and self._sam()._perturbed == []:
                loss = loss * float("nan")
            return loss

    args = SAMTrainingArguments(
        out_dir, per_device_train_batch_size=W.MICRO, gradient_accumulation_steps=W.N_MICRO, max_steps=W.STEPS,
        learning_rate=W.LR, weight_decay=0.0, adam_epsilon=W.EPS, lr_scheduler_type="constant",
        max_grad_norm=W.CLIP, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=True, ddp_backend="gloo", seed=0, dataloader_num_workers=0, remove_unused_columns=False,
        sam_rho=W.RHO)
    model = W.build_model()
    trainer = Poisoned(model=model, args=args, train_dataset=ds, data_collator=collate)
    grads = []
    trainer.create_optimizer()
    plist = list(model.parameters())
    trainer._sam().base_optimizer.register_step_pre_hook(
        lambda o, a, k: grads.append([p.grad.detach().clone() for p in plist]))
    trainer.train()
    assert trainer.accelerator.num_processes == W.WORLD
    rank = trainer.args.process_index
    batches = [seen[i * W.N_MICRO:(i + 1) * W.N_MICRO] for i in range(W.STEPS)]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    torch.save({"params": params, "batches": batches, "losses": losses, "grads": grads}, f"{out_dir}/rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
