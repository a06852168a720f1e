"""Tasks: one LightningModule per module, all built on `descend.tasks.base.Task`.

Adding a task is one module here plus one YAML in conf/task/ naming it as `_target_`.
"""
