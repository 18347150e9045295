# An MMEngine-style Python config: what `--cfg-options key=value` overrides.
optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.05, momentum=0.9))
train_dataloader = dict(batch_size=32)
train_cfg = dict(max_epochs=3)
model = dict(hidden=16)
