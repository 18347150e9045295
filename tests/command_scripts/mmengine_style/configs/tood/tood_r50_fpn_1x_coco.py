# The README recipe's config name, for the stand-in trainer: an MMEngine-style Python config of the
# same small model as configs/tiny.py (TOOD itself needs MMDetection); `--cfg-options` overrides it.
optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.05, momentum=0.9))
train_dataloader = dict(batch_size=32)
train_cfg = dict(max_epochs=3)
model = dict(hidden=16)
