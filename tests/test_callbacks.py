"""DeltawCallback in a real transformers Trainer run (tiny BERT, PEFT LoRA, 4 steps).

Oracle: the metrics logged at the last step equal the medians over modules of ``deltaw.analyze``
run on the adapter saved after that step.
"""

from __future__ import annotations

import statistics

import pytest
import torch

pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import deltaw  # noqa: E402
from builders import tiny_bert_config  # noqa: E402
from deltaw.callbacks import DeltawCallback  # noqa: E402


def test_logged_metrics_equal_analyze_of_the_saved_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    # the pooler too: outside the layers, where the callback's names once kept the task wrapper ("bert.")
    model = get_peft_model(BertForSequenceClassification(tiny_bert_config(num_labels=2)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "pooler.dense"],
                                      task_type="SEQ_CLS"))
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(5, 100, (12,), generator=g), "labels": i % 2} for i in range(32)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=8,
                             learning_rate=5e-2, logging_steps=2, save_strategy="no", report_to=[],
                             use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.callback_handler.callbacks.insert(0, DeltawCallback())
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [2, 4]
    model.save_pretrained(str(tmp_path / "adapter"))
    analysis = deltaw.analyze(tmp_path / "adapter")
    assert "pooler.dense" in analysis.by_type()
    assert {k.split("/")[1] for k in logs[-1] if k.startswith("deltaw/")} == set(analysis.by_type())
    for module_type, records in analysis.by_type().items():
        last = logs[-1]
        key = f"deltaw/{module_type}/"
        assert last[key + "fro_norm"] == pytest.approx(statistics.median(r.fro_norm for r in records), rel=1e-6)
        assert last[key + "energy_rank_0.9"] == statistics.median(r.energy_rank["0.9"] for r in records)
        assert last[key + "stable_rank"] == pytest.approx(statistics.median(r.stable_rank for r in records), rel=1e-5)
    # Step 2's ΔW differs from step 4's: the log is taken at its own step, not at the end.
    assert logs[0]["deltaw/attention.self.query/fro_norm"] != logs[1]["deltaw/attention.self.query/fro_norm"]


def test_dora_modules_are_left_out_not_logged_as_lora():
    """A DoRA module's ΔW is m/‖W + sBA‖·(W + sBA) − W, not s·B A: the callback logged s·B A's
    metrics for it (fro_norm 1.03 where the merged update has 0.69)."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertForSequenceClassification

    from deltaw.callbacks import lora_metrics

    torch.manual_seed(0)
    lora = get_peft_model(BertForSequenceClassification(tiny_bert_config(num_labels=2)),
                          LoraConfig(r=4, target_modules=["query"], task_type="SEQ_CLS", init_lora_weights=False))
    assert "deltaw/attention.self.query/fro_norm" in lora_metrics(lora)
    dora = get_peft_model(BertForSequenceClassification(tiny_bert_config(num_labels=2)),
                          LoraConfig(r=4, target_modules=["query"], task_type="SEQ_CLS", init_lora_weights=False,
                                     use_dora=True))
    assert lora_metrics(dora) == {}
