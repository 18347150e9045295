# A config name from MMDetection 3.x, for the stand-in trainer (sweeps/experiments/command-mmdet.yaml's
# header runs it with --set command.run=...): the same small model as configs/tiny.py (the real
# detector needs MMDetection); `--cfg-options` overrides it.
optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.05, momentum=0.9))
train_dataloader = dict(batch_size=32)
train_cfg = dict(max_epochs=3)
model = dict(hidden=16)
